package cli

import (
	"context"
	"flag"
	"fmt"
	"time"

	"github.com/phalafleet/rollout/internal/control"
	"github.com/phalafleet/rollout/internal/store"
)

// opFlags parses an operator command's flags and its rollout id, and opens
// Redis. extra registers the command's own flags.
func opFlags(ctx context.Context, e *Env, name string, args []string, extra func(*flag.FlagSet)) (string, *store.Store, func(), error) {
	c := newRedisCmd(name)
	if extra != nil {
		extra(c.fs)
	}
	pos, st, done, err := c.open(ctx, e, args, 1)
	if err != nil {
		return "", nil, nil, err
	}
	return pos[0], st, done, nil
}

// setState is pause, resume and cancel: a compare-and-set on the rollout's
// state, so two operators racing get one clear answer each.
func setState(ctx context.Context, e *Env, st *store.Store, name, id, reason, to string, from ...string) (changed bool, cur string, err error) {
	why := reason
	if why == "" {
		why = map[string]string{"pause": "paused", "cancel": "cancelled"}[name] + " by " + whoAmI()
	}
	if to == store.RolloutRunning {
		why = ""
	}
	cur, ok, err := st.SetState(ctx, id, to, why, time.Now(), from...)
	if err != nil {
		return false, cur, err
	}
	if ok {
		what := fmt.Sprintf("%s (%s -> %s)", name, cur, to)
		if reason != "" {
			what += ": " + reason
		}
		_ = st.Event(ctx, id, time.Now(), whoAmI(), what)
		fmt.Fprintf(e.Stdout, "rollout %s: %s -> %s\n", id, cur, to)
	} else if cur == to {
		fmt.Fprintf(e.Stdout, "rollout %s is already %s\n", id, to)
	}
	return ok, cur, nil
}

func runPause(ctx context.Context, e *Env, args []string) error {
	var reason string
	id, st, done, err := opFlags(ctx, e, "pause", args, func(fs *flag.FlagSet) { fs.StringVar(&reason, "reason", "", "why (shown in status)") })
	if err != nil {
		return err
	}
	defer done()
	ok, cur, err := setState(ctx, e, st, "pause", id, reason, store.RolloutPaused, store.RolloutRunning, store.RolloutScheduled)
	if err == nil && !ok && cur != store.RolloutPaused {
		err = fmt.Errorf("pause: rollout %s is %s", id, cur)
	}
	return err
}

func runResume(ctx context.Context, e *Env, args []string) error {
	maxFailed := -1
	id, st, done, err := opFlags(ctx, e, "resume", args, func(fs *flag.FlagSet) {
		fs.IntVar(&maxFailed, "max-failed", -1, "raise the failure budget to this many failures before resuming")
	})
	if err != nil {
		return err
	}
	defer done()
	if maxFailed >= 0 {
		if err := st.SetFields(ctx, id, "budget_max_failed", maxFailed); err != nil {
			return err
		}
	}
	ok, cur, err := setState(ctx, e, st, "resume", id, "", store.RolloutRunning, store.RolloutPaused)
	if err == nil && !ok && cur != store.RolloutRunning {
		err = fmt.Errorf("resume: rollout %s is %s", id, cur)
	}
	return err
}

// runCancel ends a rollout. For a repeating rollout it also stops the
// repeats, even once its last run has completed.
func runCancel(ctx context.Context, e *Env, args []string) error {
	var reason string
	id, st, done, err := opFlags(ctx, e, "cancel", args, func(fs *flag.FlagSet) { fs.StringVar(&reason, "reason", "", "why (shown in status)") })
	if err != nil {
		return err
	}
	defer done()
	ok, cur, err := setState(ctx, e, st, "cancel", id, reason, store.RolloutCancelled, store.RolloutRunning, store.RolloutPaused, store.RolloutScheduled)
	if err != nil {
		return err
	}
	stopped, err := st.StopRepeating(ctx, id)
	if err != nil {
		return err
	}
	if stopped {
		fmt.Fprintf(e.Stdout, "rollout %s: repeats stopped\n", id)
	}
	if !ok && !stopped && cur != store.RolloutCancelled {
		return fmt.Errorf("cancel: rollout %s is %s", id, cur)
	}
	return nil
}

func runPromote(ctx context.Context, e *Env, args []string) error {
	id, st, done, err := opFlags(ctx, e, "promote", args, nil)
	if err != nil {
		return err
	}
	defer done()
	r, err := (&control.Control{Store: st}).Promote(ctx, id, whoAmI(), time.Now())
	if err != nil {
		return err
	}
	fmt.Fprintf(e.Stdout, "rollout %s: stage %d (%s) promoted; the next stage starts when it is done\n", id, r.Stage+1, r.Stages[r.Stage].Name)
	return nil
}

func runRetry(ctx context.Context, e *Env, args []string) error {
	var failed bool
	id, st, done, err := opFlags(ctx, e, "retry", args, func(fs *flag.FlagSet) {
		fs.BoolVar(&failed, "failed", false, "re-queue the failed CVMs (required: the only kind retry takes)")
	})
	if err != nil {
		return err
	}
	defer done()
	if !failed {
		return fmt.Errorf("retry: say which CVMs: --failed")
	}
	n, err := retryFailed(ctx, st.Redis(), id)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.Stdout, "rollout %s: %d failed CVMs queued again\n", id, n)
	return nil
}
