package cli

import (
	"context"
	"flag"
	"fmt"
	"time"

	"github.com/phalafleet/rollout/internal/control"
	"github.com/phalafleet/rollout/internal/plan"
)

// runRollback undoes a rollout: every CVM it changed gets its own
// before-image back, as a new rollout "<id>-rollback".
func runRollback(ctx context.Context, e *Env, args []string) error {
	fs := flag.NewFlagSet("rollback", flag.ContinueOnError)
	yes := fs.Bool("yes", false, "do not ask for confirmation")
	dry := fs.Bool("dry-run", false, "show the rollback plan only")
	out := fs.String("o", "table", "output: table or json")
	redisURL := fs.String("redis", "", "Redis URL (default $REDIS_URL)")
	version := fs.String("api-version", "", "X-Phala-Version to send")
	id, err := oneID(fs, args)
	if err != nil {
		return err
	}
	if err := checkFormat(*out, "table", "json"); err != nil {
		return err
	}
	client, err := apiClient(e, *version)
	if err != nil {
		return err
	}
	rdb, err := openRedis(ctx, e, *redisURL)
	if err != nil {
		return err
	}
	defer rdb.Close()
	c := control.New(rdb)
	p, err := c.PlanRollback(ctx, client, id)
	if err != nil {
		return keyHint(err)
	}
	if *out == "table" {
		printPlan(e.Stdout, p, 50)
	}
	if p.Counts[plan.Patch] == 0 && !*dry {
		// Everything is back already (an earlier rollback, cancelled part-way,
		// got that far) or left alone: nothing to record.
		fmt.Fprintf(e.Stdout, "\nNothing to restore: every CVM %s changed is at its before-image, or left alone (see DETAIL).\n", id)
		return nil
	}
	if *dry {
		if *out == "json" {
			return writeJSON(e.Stdout, p)
		}
		return nil
	}
	if !*yes {
		if err := confirm(ctx, e, fmt.Sprintf("Roll back %d CVMs of %s to their before-images?", p.Counts[plan.Patch], id)); err != nil {
			return err
		}
	}
	a, err := c.ApplyRollback(ctx, p, id, whoAmI(), time.Now())
	if err != nil {
		return err
	}
	if *out == "json" {
		return writeJSON(e.Stdout, a)
	}
	printApplied(e.Stdout, a, p.Counts[plan.Patch])
	return nil
}
