package cli

import (
	"context"
	"flag"
	"fmt"
	"github.com/phalafleet/rollout/internal/ratelimit"
	"io"
	"maps"
	"os"
	"os/user"
	"slices"
	"time"

	"github.com/phalafleet/rollout/internal/control"
	"github.com/phalafleet/rollout/internal/plan"
	"github.com/phalafleet/rollout/internal/store"
)

func runApply(ctx context.Context, e *Env, args []string) error {
	fs := flag.NewFlagSet("apply", flag.ContinueOnError)
	file := fs.String("f", "", "rollout file")
	yes := fs.Bool("yes", false, "do not ask for confirmation")
	wait := fs.Bool("wait", false, "follow the rollout until it ends or pauses (exit status: README \"Exit status\")")
	timeout := fs.Duration("timeout", 0, "with --wait: stop waiting after this long, exit status 6 (0: no limit)")
	out := fs.String("o", "table", "output: table or json")
	redisURL := fs.String("redis", "", "Redis URL (default $REDIS_URL)")
	version := fs.String("api-version", "", "X-Phala-Version to send")
	readTimeout := readTimeoutFlag(fs)
	planHash := fs.String("plan-hash", "", "apply only if a fresh plan has this plan_hash (from `plan`): refuse if the fleet changed since")
	overlap := fs.Bool("allow-overlap", false, "skip the selected CVMs that another active rollout holds, instead of refusing")
	keyFile := keyFileFlag(fs)
	if err := noArgs(fs, args); err != nil {
		return err
	}
	if err := checkFormat(*out, "table", "json"); err != nil {
		return err
	}
	if *timeout < 0 {
		return usageErr("apply: --timeout %s: must not be negative", *timeout)
	}
	e, err := e.withKeyFile(*keyFile)
	if err != nil {
		return err
	}
	rdb, err := openRedis(ctx, e, *redisURL)
	if err != nil {
		return err
	}
	defer rdb.Close()
	p, err := buildPlan(ctx, e, *file, *version, *readTimeout, ratelimit.New(rdb))
	if err != nil {
		return err
	}
	if *planHash != "" && *planHash != p.Hash {
		return fmt.Errorf("the plan changed since the one with hash %s (now %s): the fleet or the file differs; run `rollout plan` again", *planHash, p.Hash)
	}
	if *out == "table" {
		printPlan(e.Stdout, p, 50)
	}
	if !*yes {
		if err := confirm(ctx, e, fmt.Sprintf("Apply rollout %s to %d CVMs?", p.ID, p.Counts[plan.Patch])); err != nil {
			return err
		}
	}
	a, err := control.New(rdb).Apply(ctx, p, whoAmI(), time.Now(), control.ApplyOptions{AllowOverlap: *overlap})
	if err != nil {
		return err
	}
	if *planHash != "" && !a.Created && a.RunOf != "" {
		// The plan the operator pinned was not recorded: a run is going.
		return fmt.Errorf("the plan with hash %s was not applied: run %s of %s is still %s; apply again when it has ended", *planHash, a.ID, a.RunOf, a.State)
	}
	st := store.New(rdb)
	if *out == "table" {
		printApplied(e.Stdout, a, p.Counts[plan.Patch])
		printOverlap(e.Stdout, a.Overlap)
	}
	if a.State != store.RolloutCompleted {
		warnNoWorkers(e, st, a.ID)
	}
	if *out == "json" && !*wait {
		return writeJSON(e.Stdout, a)
	}
	if !*wait {
		return nil
	}
	r, err := watch(ctx, e, st, a.ID, watchOpts{format: *out, untilPaused: true, timeout: *timeout, every: time.Second})
	if err != nil {
		return err
	}
	if *out == "json" {
		if err := writeJSON(e.Stdout, statusJSON(r)); err != nil {
			return err
		}
	}
	return outcome(r)
}

// printApplied says what apply did, in the words an operator needs.
func printApplied(w io.Writer, a control.Applied, toPatch int) {
	switch {
	case a.RunOf != "" && a.Created:
		fmt.Fprintf(w, "\nRollout %s had completed; %d CVMs need patching again, so this is a new run: %s (%s), %d tasks queued now.\n",
			a.RunOf, toPatch, a.ID, a.State, a.Queued)
	case a.RunOf != "":
		fmt.Fprintf(w, "\nRollout %s had completed; its latest run %s is %s.\n", a.RunOf, a.ID, a.State)
	case !a.Created && a.State == store.RolloutCompleted:
		fmt.Fprintf(w, "\nRollout %s already completed, and the plan finds nothing to patch.\n", a.ID)
		return
	case a.Created && a.State == store.RolloutCompleted:
		fmt.Fprintf(w, "\nRecorded rollout %s (completed): the plan finds nothing to patch.\n", a.ID)
		return
	case a.Created:
		fmt.Fprintf(w, "\nRecorded rollout %s (%s): %d tasks queued now.\n", a.ID, a.State, a.Queued)
	default:
		fmt.Fprintf(w, "\nContinued existing rollout %s (%s): %d tasks queued now.\n", a.ID, a.State, a.Queued)
	}
	fmt.Fprintf(w, "Workers (`worker`) carry it out; `rollout status %s --watch` follows it.\n", a.ID)
}

func whoAmI() string {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	host, _ := os.Hostname()
	return name + "@" + host
}

// printOverlap says which CVMs --allow-overlap left to other rollouts.
func printOverlap(w io.Writer, overlap map[string]int) {
	for _, o := range slices.Sorted(maps.Keys(overlap)) {
		fmt.Fprintf(w, "Skipped %d CVMs held by active rollout %s (--allow-overlap).\n", overlap[o], o)
	}
}
