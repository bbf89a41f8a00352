package cli

import (
	"context"
	"flag"
	"fmt"
	"github.com/phalafleet/rollout/internal/ratelimit"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/phalafleet/rollout/internal/plan"
	"github.com/phalafleet/rollout/internal/textsafe"
)

func runPlan(ctx context.Context, e *Env, args []string) error {
	fs := flag.NewFlagSet("plan", flag.ContinueOnError)
	file := fs.String("f", "", "rollout file")
	out := fs.String("o", "table", "output: table or json")
	version := fs.String("api-version", "", "X-Phala-Version to send (default 2026-01-21)")
	all := fs.Bool("all", false, "table: list every CVM, not only the first 50 of each action")
	readTimeout := readTimeoutFlag(fs)
	keyFile := keyFileFlag(fs)
	if err := noArgs(fs, args); err != nil {
		return err
	}
	if err := checkFormat(*out, "table", "json"); err != nil {
		return err
	}
	e, err := e.withKeyFile(*keyFile)
	if err != nil {
		return err
	}
	p, err := buildPlan(ctx, e, *file, *version, *readTimeout, nil)
	if err != nil {
		return err
	}
	if *out == "json" {
		return writeJSON(e.Stdout, p)
	}
	rows := 50
	if *all {
		rows = 0
	}
	printPlan(e.Stdout, p, rows)
	return nil
}

// readTimeoutFlag is plan's and apply's --read-timeout.
func readTimeoutFlag(fs *flag.FlagSet) *time.Duration {
	return fs.Duration("read-timeout", plan.DefaultReadTimeout,
		"give up on the API after this long without a usable answer (it is retried through 429s and 5xx meanwhile)")
}

// buildPlan plans file against the API; an empty selection is warned
// about on stderr. Its reads are paced by the file's rate section: through
// the rollout's shared limiter when lim is not nil (apply), else on their
// own (ratelimit.PlanPacer).
func buildPlan(ctx context.Context, e *Env, file, version string, readTimeout time.Duration, lim *ratelimit.Limiter) (*plan.Plan, error) {
	if readTimeout <= 0 {
		return nil, fmt.Errorf("--read-timeout must be positive")
	}
	if file == "" {
		return nil, fmt.Errorf("-f FILE is required")
	}
	f, err := plan.Load(file)
	if err != nil {
		return nil, err
	}
	c, err := apiClient(e, version)
	if err != nil {
		return nil, err
	}
	p, err := plan.BuildWith(ctx, c, f, plan.Options{ReadTimeout: readTimeout, Pace: lim.PlanPacer(f.ID(), f)})
	if err != nil {
		return nil, keyHint(err)
	}
	if len(p.Items) == 0 {
		fmt.Fprintln(e.Stderr, "warning: the selector matches no CVM")
	}
	return p, nil
}

// printPlan prints the plan, at most rows rows per action (0: all).
func printPlan(w io.Writer, p *plan.Plan, rows int) {
	fmt.Fprintf(w, "Rollout %s (id %s)\n", p.Name, p.ID)
	t := p.File.Target
	if slices.ContainsFunc(p.Items, func(it plan.Item) bool { return it.Target != nil }) {
		fmt.Fprintln(w, "  target: each CVM's own before-image (see DETAIL)")
	} else {
		if k := t.KMS(); k != nil {
			fmt.Fprintf(w, "  kms_urls     -> [%s]\n", strings.Join(k, ", "))
		}
		if g := t.Gateway(); g != nil {
			fmt.Fprintf(w, "  gateway_urls -> [%s]\n", strings.Join(g, ", "))
		}
	}
	fmt.Fprintf(w, "  restart: %v\n\n", t.Restart)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CVM\tNAME\tNODE\tVMM\tACTION\tDETAIL")
	shown := map[plan.Action]int{}
	for _, it := range p.Items {
		shown[it.Action]++
		if rows > 0 && shown[it.Action] > rows {
			continue
		}
		detail := it.Reason
		if it.Action == plan.Patch && detail == "" {
			target := p.File.Target
			if it.Target != nil {
				target = *it.Target
			}
			detail = diffText(target, it)
		}
		// Everything but the action comes from the API: escaped and cut.
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", textsafe.Cell(it.CVMID), textsafe.Cell(it.Name), textsafe.Cell(it.Node),
			textsafe.Cell(dash(it.VMM)), it.Action, textsafe.Cell(detail))
	}
	tw.Flush()
	for _, a := range []plan.Action{plan.Patch, plan.Unchanged, plan.Skip, plan.Unknown} {
		if n := shown[a]; rows > 0 && n > rows {
			fmt.Fprintf(w, "  ... %d more %s rows (--all or -o json lists them)\n", n-rows, a)
		}
	}
	fmt.Fprintf(w, "\nPlan: %d to patch, %d unchanged, %d skipped, %d unknown (%d selected). Plan hash %s.\n",
		p.Counts[plan.Patch], p.Counts[plan.Unchanged], p.Counts[plan.Skip], p.Counts[plan.Unknown], len(p.Items), p.Hash)
	if n := p.Counts[plan.Unknown]; n > 0 {
		fmt.Fprintf(w, "%d CVMs are unknown: their config could not be read, so apply would not patch them; plan again when the API answers.\n", n)
	}
	if len(p.Stages) > 1 {
		fmt.Fprintf(w, "Stages:")
		for i, st := range p.Stages {
			fmt.Fprintf(w, " %d %s=%d", i+1, st.Name, st.Size)
			if st.Promote == "manual" {
				fmt.Fprint(w, " (then waits for promote)")
			} else if st.Bake > 0 && i+1 < len(p.Stages) {
				fmt.Fprintf(w, " (bake %s)", st.Bake)
			}
			if i+1 < len(p.Stages) {
				fmt.Fprint(w, ",")
			}
		}
		fmt.Fprintln(w)
	}
	if b := p.File.FailureBudget; b != nil {
		fmt.Fprintf(w, "Failure budget: %s after %d failures", tripVerb(b.TripState()), p.PausesAfter)
		if b.MinExecuted > 0 {
			fmt.Fprintf(w, " (judged once %d CVMs have been executed)", b.MinExecuted)
		}
		fmt.Fprintln(w, "; skipped and unchanged CVMs never count.")
	}
	if s := p.File.Schedule; s != nil {
		if !s.StartAt.IsZero() {
			fmt.Fprintf(w, "Starts at %s", s.StartAt.UTC().Format(time.RFC3339))
			if !s.EndAt.IsZero() {
				fmt.Fprintf(w, "; ends at %s", s.EndAt.UTC().Format(time.RFC3339))
			}
			fmt.Fprintln(w, ".")
		}
		for _, win := range s.Windows {
			fmt.Fprintf(w, "Window: %q for %s (%s), no new CVM in its last %s.\n", win.Cron, win.Duration, dash(win.Timezone), s.Cutoff)
		}
	}
}

func diffText(t plan.Target, it plan.Item) string {
	var parts []string
	if k := t.KMS(); k != nil && strings.Join(k, ",") != strings.Join(it.KMS, ",") {
		parts = append(parts, fmt.Sprintf("kms [%s] -> [%s]", strings.Join(it.KMS, ", "), strings.Join(k, ", ")))
	}
	if g := t.Gateway(); g != nil && strings.Join(g, ",") != strings.Join(it.Gateway, ",") {
		parts = append(parts, fmt.Sprintf("gateway [%s] -> [%s]", strings.Join(it.Gateway, ", "), strings.Join(g, ", ")))
	}
	return strings.Join(parts, "; ")
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// tripVerb is what a tripped budget does: "pauses" or "cancels".
func tripVerb(state string) string {
	if state == "cancelled" {
		return "cancels"
	}
	return "pauses"
}
