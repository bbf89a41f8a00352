package cli

import (
	"context"
	"flag"
	"fmt"
	"time"

	"github.com/phalafleet/rollout/internal/control"
)

// opFlags parses an operator command's flags and its rollout id, and opens
// Redis. extra registers the command's own flags. The commands below hold
// no rules of their own: each is one control operation.
func opFlags(ctx context.Context, e *Env, name string, args []string, extra func(*flag.FlagSet)) (string, *control.Control, func(), error) {
	c := newRedisCmd(name)
	if extra != nil {
		extra(c.fs)
	}
	pos, st, done, err := c.open(ctx, e, args, 1)
	if err != nil {
		return "", nil, nil, err
	}
	return pos[0], control.New(st.Redis()), done, nil
}

// reportChange prints what a state command did.
func reportChange(e *Env, ch control.Changed) {
	if ch.From == ch.To {
		fmt.Fprintf(e.Stdout, "rollout %s is already %s\n", ch.ID, ch.To)
		return
	}
	fmt.Fprintf(e.Stdout, "rollout %s: %s -> %s\n", ch.ID, ch.From, ch.To)
}

func runPause(ctx context.Context, e *Env, args []string) error {
	var reason string
	id, c, done, err := opFlags(ctx, e, "pause", args, func(fs *flag.FlagSet) { fs.StringVar(&reason, "reason", "", "why (shown in status)") })
	if err != nil {
		return err
	}
	defer done()
	ch, err := c.Pause(ctx, id, whoAmI(), reason, time.Now())
	if err == nil {
		reportChange(e, ch)
	}
	return err
}

func runResume(ctx context.Context, e *Env, args []string) error {
	maxFailed := -1
	id, c, done, err := opFlags(ctx, e, "resume", args, func(fs *flag.FlagSet) {
		fs.IntVar(&maxFailed, "max-failed", -1, "raise the failure budget to this many failures (with the resume, only if it goes ahead)")
	})
	if err != nil {
		return err
	}
	defer done()
	ch, err := c.Resume(ctx, id, whoAmI(), maxFailed, time.Now())
	if err == nil {
		reportChange(e, ch)
	}
	return err
}

// runCancel ends a rollout. For a repeating rollout it also stops the
// repeats, even once its last run has completed.
func runCancel(ctx context.Context, e *Env, args []string) error {
	var reason string
	id, c, done, err := opFlags(ctx, e, "cancel", args, func(fs *flag.FlagSet) { fs.StringVar(&reason, "reason", "", "why (shown in status)") })
	if err != nil {
		return err
	}
	defer done()
	ch, err := c.Cancel(ctx, id, whoAmI(), reason, time.Now())
	if err != nil {
		return err
	}
	if ch.From != ch.To || !ch.RepeatsStopped {
		reportChange(e, ch)
	}
	if ch.RepeatsStopped {
		fmt.Fprintf(e.Stdout, "rollout %s: repeats stopped\n", id)
	}
	return nil
}

func runPromote(ctx context.Context, e *Env, args []string) error {
	id, c, done, err := opFlags(ctx, e, "promote", args, nil)
	if err != nil {
		return err
	}
	defer done()
	r, err := c.Promote(ctx, id, whoAmI(), time.Now())
	if err != nil {
		return err
	}
	fmt.Fprintf(e.Stdout, "rollout %s: stage %d (%s) promoted; the next stage starts when it is done\n", id, r.Stage+1, r.Stages[r.Stage].Name)
	return nil
}

func runRetry(ctx context.Context, e *Env, args []string) error {
	var failed bool
	id, c, done, err := opFlags(ctx, e, "retry", args, func(fs *flag.FlagSet) {
		fs.BoolVar(&failed, "failed", false, "re-queue the failed CVMs (required: the only kind retry takes)")
	})
	if err != nil {
		return err
	}
	defer done()
	if !failed {
		return fmt.Errorf("retry: say which CVMs: --failed")
	}
	n, err := c.RetryFailed(ctx, id, whoAmI(), time.Now())
	if err != nil {
		return err
	}
	fmt.Fprintf(e.Stdout, "rollout %s: %d failed CVMs queued again\n", id, n)
	return nil
}
