package cli

import (
	"context"
	"flag"
	"fmt"
	"time"

	"github.com/phalafleet/rollout/internal/control"
	"github.com/phalafleet/rollout/internal/store"
)

// setState is pause, resume and cancel: a compare-and-set on the rollout's
// state, so two operators racing get one clear answer each.
func setState(ctx context.Context, e *Env, name string, args []string, to string, from ...string) error {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	redisURL := fs.String("redis", "", "Redis URL (default $REDIS_URL)")
	reason := fs.String("reason", "", "why (recorded and shown in status)")
	maxFailed := -1
	if name == "resume" {
		fs.IntVar(&maxFailed, "max-failed", -1, "raise the failure budget to this many failures before resuming")
	}
	id, err := oneID(fs, args)
	if err != nil {
		return err
	}
	rdb, err := openRedis(ctx, e, *redisURL)
	if err != nil {
		return err
	}
	defer rdb.Close()
	st := store.New(rdb)
	if maxFailed >= 0 {
		if err := st.SetFields(ctx, id, "budget_max_failed", maxFailed); err != nil {
			return err
		}
	}
	why := *reason
	if why == "" {
		why = name + "d by " + whoAmI()
		if name == "cancel" {
			why = "cancelled by " + whoAmI()
		}
	}
	if to == store.RolloutRunning {
		why = ""
	}
	cur, ok, err := st.SetState(ctx, id, to, why, time.Now(), from...)
	if err != nil {
		return err
	}
	if !ok {
		if cur == to {
			fmt.Fprintf(e.Stdout, "rollout %s is already %s\n", id, to)
			return nil
		}
		return fmt.Errorf("%s: rollout %s is %s; cannot %s it", name, id, cur, name)
	}
	_ = st.Event(ctx, id, time.Now(), whoAmI(), fmt.Sprintf("%s (%s -> %s)", name, cur, to))
	fmt.Fprintf(e.Stdout, "rollout %s: %s -> %s\n", id, cur, to)
	return nil
}

func runPause(ctx context.Context, e *Env, args []string) error {
	return setState(ctx, e, "pause", args, store.RolloutPaused, store.RolloutRunning, store.RolloutScheduled)
}

func runResume(ctx context.Context, e *Env, args []string) error {
	return setState(ctx, e, "resume", args, store.RolloutRunning, store.RolloutPaused)
}

func runCancel(ctx context.Context, e *Env, args []string) error {
	return setState(ctx, e, "cancel", args, store.RolloutCancelled, store.RolloutRunning, store.RolloutPaused, store.RolloutScheduled)
}

func runPromote(ctx context.Context, e *Env, args []string) error {
	fs := flag.NewFlagSet("promote", flag.ContinueOnError)
	redisURL := fs.String("redis", "", "Redis URL (default $REDIS_URL)")
	id, err := oneID(fs, args)
	if err != nil {
		return err
	}
	rdb, err := openRedis(ctx, e, *redisURL)
	if err != nil {
		return err
	}
	defer rdb.Close()
	c := &control.Control{Store: store.New(rdb)}
	r, err := c.Promote(ctx, id, time.Now())
	if err != nil {
		return err
	}
	fmt.Fprintf(e.Stdout, "rollout %s: stage %d (%s) promoted; the next stage starts when it is done\n", id, r.Stage+1, r.Stages[r.Stage].Name)
	return nil
}

func runRetry(ctx context.Context, e *Env, args []string) error {
	fs := flag.NewFlagSet("retry", flag.ContinueOnError)
	redisURL := fs.String("redis", "", "Redis URL (default $REDIS_URL)")
	failed := fs.Bool("failed", false, "re-queue the failed CVMs (required: the only kind retry takes)")
	id, err := oneID(fs, args)
	if err != nil {
		return err
	}
	if !*failed {
		return fmt.Errorf("retry: say which CVMs: --failed")
	}
	rdb, err := openRedis(ctx, e, *redisURL)
	if err != nil {
		return err
	}
	defer rdb.Close()
	n, err := retryFailed(ctx, rdb, id)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.Stdout, "rollout %s: %d failed CVMs queued again\n", id, n)
	return nil
}
