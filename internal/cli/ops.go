package cli

import (
	"context"
	"flag"
	"fmt"
	"time"

	"github.com/phalafleet/rollout/internal/store"
)

// setState is pause, resume and cancel: a compare-and-set on the rollout's
// state, so two operators racing get one clear answer each.
func setState(ctx context.Context, e *Env, name string, args []string, to string, from ...string) error {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	redisURL := fs.String("redis", "", "Redis URL (default $REDIS_URL)")
	reason := fs.String("reason", "", "why (recorded and shown in status)")
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
