package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/phalafleet/rollout/internal/control"
	"github.com/phalafleet/rollout/internal/store"
)

// age is a duration flag that also takes days ("30d", "1d12h").
type age struct{ d time.Duration }

func (a *age) String() string { return a.d.String() }

func (a *age) Set(s string) error {
	d, err := parseAge(s)
	a.d = d
	return err
}

// parseAge reads a Go duration with an optional leading whole-days part.
func parseAge(s string) (time.Duration, error) {
	var days time.Duration
	if i := strings.IndexByte(s, 'd'); i > 0 {
		n, err := strconv.Atoi(s[:i])
		if err != nil || n < 0 {
			return 0, fmt.Errorf("%q: expected a duration like 30d, 12h or 1d12h", s)
		}
		days, s = time.Duration(n)*24*time.Hour, s[i+1:]
		if s == "" {
			return days, nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("%q: expected a duration like 30d, 12h or 1d12h", s)
	}
	return days + d, nil
}

// runPrune is `rollout prune`: forget finished rollouts' per-CVM records.
func runPrune(ctx context.Context, e *Env, args []string) error {
	c := newRedisCmd("prune", "table", "json")
	var older, grace age
	grace.d = control.DefaultPruneGrace
	c.fs.Var(&older, "older-than", "prune rollouts that ended at least this long ago (e.g. 30d; required)")
	c.fs.Var(&grace, "grace", "never prune a rollout within this long of its end, whatever --older-than says (a rollback needs its records)")
	export := c.fs.String("export", "", "first write each rollout's report to DIR/ID.csv and DIR/ID.json")
	dry := c.fs.Bool("dry-run", false, "only list what would be pruned")
	all := c.fs.Bool("all", false, "also remove the summary and the audit trail (the rollout is forgotten)")
	_, st, closeRedis, err := c.open(ctx, e, args, 0)
	if err != nil {
		return err
	}
	defer closeRedis()
	if older.d <= 0 {
		return fmt.Errorf("prune: --older-than is required (e.g. --older-than 30d)")
	}
	o := control.PruneOptions{OlderThan: older.d, Grace: grace.d, All: *all, DryRun: *dry}
	if *export != "" {
		if err := os.MkdirAll(*export, 0o755); err != nil {
			return fmt.Errorf("prune: --export: %w", err)
		}
		o.Export = func(ctx context.Context, r *store.Rollout) error { return exportReport(ctx, st, *export, r) }
	}
	ctl := control.New(st.Redis())
	pruned, err := ctl.Prune(ctx, time.Now(), o)
	if c.format() == "json" {
		if werr := writeJSON(e.Stdout, pruned); werr != nil && err == nil {
			err = werr
		}
		return err
	}
	tw := tabwriter.NewWriter(e.Stdout, 0, 0, 2, ' ', 0)
	verb := "pruned"
	if *dry {
		verb = "would prune"
	}
	fmt.Fprintf(tw, "ROLLOUT\tSTATE\tENDED\tCVMS\tREMOVED\n")
	for _, p := range pruned {
		what := "per-CVM records and tasks"
		if p.Mode == store.PruneAll {
			what = "everything"
		}
		if p.Resumed {
			what += " (finished a prune that was cut short)"
		}
		ended := "-"
		if !p.EndedAt.IsZero() {
			ended = p.EndedAt.Local().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", p.ID, p.State, ended, p.CVMs, what)
	}
	tw.Flush()
	fmt.Fprintf(e.Stdout, "%s %d rollouts\n", verb, len(pruned))
	return err
}

// exportReport writes r's report as CSV and JSON into dir, each whole or
// not at all (a temp file renamed).
func exportReport(ctx context.Context, st *store.Store, dir string, r *store.Rollout) error {
	for _, format := range []string{"csv", "json"} {
		path := filepath.Join(dir, r.ID+"."+format)
		f, err := os.CreateTemp(dir, r.ID+".*.tmp")
		if err != nil {
			return err
		}
		err = writeReport(ctx, f, st, r.ID, format, "", true, true)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(f.Name(), path)
		}
		if err != nil {
			os.Remove(f.Name())
			return fmt.Errorf("export %s: %w", path, err)
		}
	}
	return nil
}
