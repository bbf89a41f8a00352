package cli

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"os"
	"os/user"
	"strings"
	"time"

	"github.com/phalafleet/rollout/internal/control"
	"github.com/phalafleet/rollout/internal/plan"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/redis/go-redis/v9"
)

func runApply(ctx context.Context, e *Env, args []string) error {
	fs := flag.NewFlagSet("apply", flag.ContinueOnError)
	file := fs.String("f", "", "rollout file")
	yes := fs.Bool("yes", false, "do not ask for confirmation")
	wait := fs.Bool("wait", false, "follow the rollout until it ends")
	out := fs.String("o", "table", "output: table or json")
	redisURL := fs.String("redis", "", "Redis URL (default $REDIS_URL)")
	version := fs.String("api-version", "", "X-Phala-Version to send")
	planHash := fs.String("plan-hash", "", "apply only if a fresh plan has this plan_hash (from `plan`): refuse if the fleet changed since")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if err := checkFormat(*out, "table", "json"); err != nil {
		return err
	}
	rdb, err := openRedis(ctx, e, *redisURL)
	if err != nil {
		return err
	}
	defer rdb.Close()
	p, err := buildPlan(ctx, e, *file, *version)
	if err != nil {
		return err
	}
	if *planHash != "" && *planHash != p.Hash {
		return fmt.Errorf("the plan changed since the one with hash %s (now %s): the fleet or the file differs; run `rollout plan` again", *planHash, p.Hash)
	}
	if *out == "table" {
		printPlan(e.Stdout, p, 50)
	}
	if !*yes && e.IsTerminal {
		fmt.Fprintf(e.Stdout, "\nApply rollout %s to %d CVMs? [y/N] ", p.ID, p.Counts[plan.Patch])
		line, _ := bufio.NewReader(e.Stdin).ReadString('\n')
		if a := strings.ToLower(strings.TrimSpace(line)); a != "y" && a != "yes" {
			return fmt.Errorf("not applied")
		}
	}
	a, err := applyPlan(ctx, rdb, p, whoAmI())
	if err != nil {
		return err
	}
	if *out == "json" && !*wait {
		return writeJSON(e.Stdout, a)
	}
	if *out == "table" {
		verb := "Recorded"
		if !a.Created {
			verb = "Continued existing"
		}
		fmt.Fprintf(e.Stdout, "\n%s rollout %s (%s): %d tasks queued now.\n", verb, a.ID, a.State, a.Queued)
		fmt.Fprintf(e.Stdout, "Workers (`worker`) carry it out; `rollout status %s --watch` follows it.\n", a.ID)
	}
	if !*wait {
		return nil
	}
	r, err := watch(ctx, e, store.New(rdb), a.ID, *out == "table", true, time.Second)
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

func applyPlan(ctx context.Context, rdb redis.UniversalClient, p *plan.Plan, who string) (control.Applied, error) {
	c := control.New(rdb)
	return c.Apply(ctx, p, who, time.Now())
}

func whoAmI() string {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	host, _ := os.Hostname()
	return name + "@" + host
}

func retryFailed(ctx context.Context, rdb redis.UniversalClient, id string) (int, error) {
	c := control.New(rdb)
	return c.RetryFailed(ctx, id, whoAmI(), time.Now())
}
