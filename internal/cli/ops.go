package cli

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
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
	var full bool
	id, c, done, err := opFlags(ctx, e, "promote", args, func(fs *flag.FlagSet) {
		fs.BoolVar(&full, "full", false, "also pass every later manual gate (later bakes still run); recorded in the audit trail")
	})
	if err != nil {
		return err
	}
	defer done()
	if full {
		r, err := c.PromoteFull(ctx, id, whoAmI(), time.Now())
		if err != nil {
			return err
		}
		fmt.Fprintf(e.Stdout, "rollout %s: stage %d (%s) and every later manual gate promoted; each stage starts when the one before is done\n",
			id, r.Stage+1, r.Stages[r.Stage].Name)
		return nil
	}
	r, err := c.Promote(ctx, id, whoAmI(), time.Now())
	if err != nil {
		return err
	}
	fmt.Fprintf(e.Stdout, "rollout %s: stage %d (%s) promoted; the next stage starts when it is done\n", id, r.Stage+1, r.Stages[r.Stage].Name)
	return nil
}

func runRetry(ctx context.Context, e *Env, args []string) error {
	var failed bool
	var idsFrom string
	id, c, done, err := opFlags(ctx, e, "retry", args, func(fs *flag.FlagSet) {
		fs.BoolVar(&failed, "failed", false, "re-queue every failed CVM")
		fs.StringVar(&idsFrom, "ids", "", "re-queue exactly the failed CVMs listed in this file, one id a line (- reads stdin; e.g. from report --state failed -o ids)")
	})
	if err != nil {
		return err
	}
	defer done()
	switch {
	case failed && idsFrom != "":
		return usageErr("retry: give --failed or --ids, not both")
	case failed:
		n, err := c.RetryFailed(ctx, id, whoAmI(), time.Now())
		if err != nil {
			return err
		}
		fmt.Fprintf(e.Stdout, "rollout %s: %d failed CVMs queued again\n", id, n)
		return nil
	case idsFrom != "":
		cvms, err := readIDs(e, idsFrom)
		if err != nil {
			return err
		}
		n, err := c.RetryIDs(ctx, id, whoAmI(), cvms, time.Now())
		if err != nil {
			return err
		}
		fmt.Fprintf(e.Stdout, "rollout %s: %d failed CVMs queued again\n", id, n)
		return nil
	}
	return usageErr("retry: say which CVMs: --failed, or --ids FILE (- for stdin)")
}

// readIDs reads CVM ids, one a line (blank lines and # comments skipped),
// from a file or, for "-", stdin.
func readIDs(e *Env, from string) ([]string, error) {
	var r io.Reader = e.Stdin
	if from != "-" {
		f, err := os.Open(from)
		if err != nil {
			return nil, fmt.Errorf("retry --ids: %w", err)
		}
		defer f.Close()
		r = f
	} else if r == nil {
		return nil, fmt.Errorf("retry --ids -: no stdin")
	}
	var ids []string
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.ContainsAny(line, " \t,") {
			return nil, fmt.Errorf("retry --ids: %s line %d: %q: one CVM id a line", from, n, line)
		}
		ids = append(ids, line)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("retry --ids: %s: %w", from, err)
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("retry --ids: %s holds no CVM id", from)
	}
	return ids, nil
}
