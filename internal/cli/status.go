package cli

import (
	"bufio"
	"context"
	"encoding/csv"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hibiken/asynq"
	"github.com/phalafleet/rollout/internal/control"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/textsafe"
)

func runStatus(ctx context.Context, e *Env, args []string) error {
	c := newRedisCmd("status", "table", "json")
	w := c.fs.Bool("watch", false, "follow live until the rollout ends (a view redrawn in place on a terminal; NDJSON with -o json)")
	timeout := c.fs.Duration("timeout", 0, "with --watch: stop watching after this long, exit status 6 (e.g. 30m; 0: no limit)")
	id, st, closeRedis, err := c.openOne(ctx, e, args)
	if err != nil {
		return err
	}
	defer closeRedis()
	out := c.out
	if *timeout < 0 {
		return usageErr("status: --timeout %s: must not be negative", *timeout)
	}
	if *w {
		r, err := watch(ctx, e, st, id, watchOpts{format: *out, stream: true, timeout: *timeout, every: time.Second})
		if err != nil {
			return err
		}
		return outcome(r)
	}
	r, err := st.Get(ctx, id)
	if err != nil {
		return err
	}
	failures, err := st.RecentFailures(ctx, id)
	if err != nil {
		return err
	}
	events, err := st.Events(ctx, id, recentEvents)
	if err != nil {
		return err
	}
	workers := liveWorkers(asynq.NewInspectorFromRedisClient(st.Redis()))
	if *out == "json" {
		s := statusJSON(r)
		s.RecentFailures, s.RecentEvents, s.WorkersAlive = failures, events, &workers
		return writeStatusJSON(ctx, e.Stdout, st, s)
	}
	printStatus(e.Stdout, r)
	printRate(ctx, e.Stdout, st, r)
	if workers == 0 && !r.State.Finished() {
		fmt.Fprintln(e.Stdout, "\nWarning: no worker is alive: nothing moves until one starts (`worker`).")
	}
	printDeadWorkers(ctx, e.Stdout, st, id)
	printFailures(e.Stdout, failures)
	if len(events) > 0 {
		fmt.Fprintf(e.Stdout, "\nLatest events (rollout events %s lists all):\n", id)
		printEvents(e.Stdout, "  ", events)
	}
	return nil
}

// recentEvents is how many audit-trail lines status shows.
const recentEvents = 5

// Status is `status -o json`: stable snake_case fields. done counts every
// CVM in a final state (cancelled and skipped ones too); patched of
// to_patch is the progress of the PATCHes.
type Status struct {
	*store.Rollout
	Done           int           `json:"done"`
	Patched        int           `json:"patched"`
	ToPatch        int           `json:"to_patch"`
	WorkersAlive   *int          `json:"workers_alive,omitempty"` // status only: live worker processes (-1: could not tell)
	RecentFailures []string      `json:"recent_failures,omitempty"`
	RecentEvents   []store.Event `json:"recent_events,omitempty"`
}

func statusJSON(r *store.Rollout) Status {
	return Status{Rollout: r, Done: done(r.Counts), Patched: r.Counts[store.Succeeded], ToPatch: toPatch(r)}
}

func done(c map[store.CVMState]int) int { return store.DoneOf(c) }

// outcome is the exit status of a watched rollout: an error line (with its
// own exit status) unless it completed with no failed CVM, so scripts can
// rely on `apply --wait` and `status --watch`.
func outcome(r *store.Rollout) error {
	switch {
	case r.State == store.RolloutCancelled:
		return withCode(ExitCancelled, fmt.Errorf("rollout %s was cancelled: %s", r.ID, r.Reason))
	case r.State == store.RolloutPaused:
		return withCode(ExitPaused, fmt.Errorf("rollout %s is paused: %s", r.ID, r.Reason))
	case r.Counts[store.Failed] > 0:
		return withCode(ExitFailed, fmt.Errorf("rollout %s completed with %d failed CVMs (rollout report %s --state failed)", r.ID, r.Counts[store.Failed], r.ID))
	}
	return nil
}

func printStatus(w io.Writer, r *store.Rollout) {
	fmt.Fprintf(w, "Rollout:  %s\nName:     %s\nState:    %s\n", r.ID, r.Name, r.State)
	if r.Reason != "" {
		fmt.Fprintf(w, "Reason:   %s\n", textsafe.Cell(r.Reason))
	}
	fmt.Fprintf(w, "Created:  %s by %s\n", r.CreatedAt.Local().Format(time.RFC3339), r.CreatedBy)
	if b := r.Budget; b != nil {
		fmt.Fprintf(w, "Budget:   %s after %d failures (once %d CVMs executed)\n", tripVerb(string(b.Action)), b.MaxFailed+1, b.MinExecuted)
	}
	fmt.Fprintf(w, "Progress: %s\n\n", countsLine(r))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "STAGE\tSIZE\t")
	for _, s := range store.CVMStates {
		fmt.Fprintf(tw, "%s\t", strings.ToUpper(string(s)))
	}
	fmt.Fprintln(tw)
	if len(r.Stages) > 1 {
		for _, s := range r.Stages {
			mark := ""
			if s.Index == r.Stage && !r.State.Finished() {
				mark = "> "
			}
			fmt.Fprintf(tw, "%s%d %s\t%d\t", mark, s.Index+1, s.Name, s.Size)
			for _, st := range store.CVMStates {
				fmt.Fprintf(tw, "%d\t", s.Counts[st])
			}
			fmt.Fprintln(tw)
		}
	}
	fmt.Fprintf(tw, "total\t%d\t", r.Total)
	for _, s := range store.CVMStates {
		fmt.Fprintf(tw, "%d\t", r.Counts[s])
	}
	fmt.Fprintln(tw)
	tw.Flush()
}

func printFailures(w io.Writer, failures []string) {
	if len(failures) == 0 {
		return
	}
	fmt.Fprintf(w, "\nLatest failures:\n")
	for _, f := range failures {
		fmt.Fprintf(w, "  %s\n", textsafe.Line(f))
	}
}

func runList(ctx context.Context, e *Env, args []string) error {
	c := newRedisCmd("list", "table", "json")
	_, st, closeRedis, err := c.open(ctx, e, args, 0)
	if err != nil {
		return err
	}
	defer closeRedis()
	out := c.out
	rs, err := st.List(ctx)
	if err != nil {
		return err
	}
	if *out == "json" {
		l := make([]Status, len(rs))
		for i, r := range rs {
			l[i] = statusJSON(r)
		}
		return writeJSON(e.Stdout, map[string]any{"rollouts": l})
	}
	tw := tabwriter.NewWriter(e.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tPATCHED\tFAILED\tCREATED\tBY")
	for _, r := range rs {
		fmt.Fprintf(tw, "%s\t%s\t%d/%d\t%d\t%s\t%s\n", r.ID, r.State, r.Counts[store.Succeeded], toPatch(r), r.Counts[store.Failed],
			r.CreatedAt.Local().Format(time.RFC3339), r.CreatedBy)
	}
	return tw.Flush()
}

func runReport(ctx context.Context, e *Env, args []string) error {
	c := newRedisCmd("report", "table", "csv", "json", "ids")
	state := c.fs.String("state", "", "only rows in this state (e.g. failed)")
	if err := checkState(c.fs, args, state); err != nil {
		return err
	}
	id, st, closeRedis, err := c.openOne(ctx, e, args)
	if err != nil {
		return err
	}
	defer closeRedis()
	r, err := st.Get(ctx, id)
	if err != nil {
		return err
	}
	if !r.PrunedAt.IsZero() || r.Pruning != "" {
		return fmt.Errorf("report: %s was pruned (rollout prune): its per-CVM records are gone; status shows its summary, and prune --export wrote its report before", r.ID)
	}
	kms, gw := urlColumns(r)
	return writeReport(ctx, e.Stdout, st, id, c.format(), *state, kms, gw)
}

// urlColumns is which URL lists the report table shows: those the
// rollout's target sets (both for a rollback, whose CVMs each have their
// own). CSV and JSON always have both.
func urlColumns(r *store.Rollout) (kms, gw bool) {
	spec, err := control.Spec(r)
	if err != nil || r.OwnTargets {
		return true, true
	}
	kms, gw = spec.Target.KMS() != nil, spec.Target.Gateway() != nil
	if !kms && !gw {
		return true, true
	}
	return kms, gw
}

// checkState checks report's --state before anything else (a usage error
// is not worth a Redis connection).
func checkState(fs *flag.FlagSet, args []string, state *string) error {
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *state != "" && !slices.Contains(store.CVMStates, store.CVMState(*state)) {
		names := make([]string, len(store.CVMStates))
		for i, s := range store.CVMStates {
			names[i] = string(s)
		}
		return usageErr("report: --state %s: expected one of %s", *state, strings.Join(names, ", "))
	}
	return nil
}

var reportHeader = []string{"cvm_id", "name", "stage", "state", "reason", "attempts", "previous_kms_urls", "previous_gateway_urls",
	"applied_kms_urls", "applied_gateway_urls", "http_status", "started_at", "finished_at", "worker"}

func writeReport(ctx context.Context, w io.Writer, st *store.Store, id, format, only string, kms, gw bool) error {
	keep := func(r store.CVMRecord) bool { return only == "" || string(r.State) == only }
	switch format {
	case "ids": // one bare id a line: what retry --ids reads
		bw := bufio.NewWriter(w)
		err := st.Records(ctx, id, func(r store.CVMRecord) error {
			if keep(r) {
				_, err := fmt.Fprintln(bw, r.CVMID)
				return err
			}
			return nil
		})
		if ferr := bw.Flush(); err == nil {
			err = ferr
		}
		return err
	case "json":
		var rows []store.CVMRecord
		if err := st.Records(ctx, id, func(r store.CVMRecord) error {
			if keep(r) {
				rows = append(rows, r)
			}
			return nil
		}); err != nil {
			return err
		}
		return writeJSON(w, map[string]any{"rollout": id, "cvms": rows})
	case "csv":
		cw := csv.NewWriter(w)
		cw.Write(reportHeader)
		err := st.Records(ctx, id, func(r store.CVMRecord) error {
			if keep(r) {
				return cw.Write(reportRow(r))
			}
			return nil
		})
		cw.Flush()
		if err != nil {
			return err
		}
		return cw.Error()
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	head := "CVM\tNAME\tSTATE\tATTEMPTS"
	if kms {
		head += "\tPREVIOUS KMS\tAPPLIED KMS"
	}
	if gw {
		head += "\tPREVIOUS GATEWAY\tAPPLIED GATEWAY"
	}
	fmt.Fprintln(tw, head+"\tREASON")
	err := st.Records(ctx, id, func(r store.CVMRecord) error {
		if !keep(r) {
			return nil
		}
		cell := textsafe.Cell // names, URLs and reasons come from the API
		row := fmt.Sprintf("%s\t%s\t%s\t%d", cell(r.CVMID), cell(r.Name), r.State, r.Attempts)
		if kms {
			row += "\t" + cell(strings.Join(r.PrevKMS, ",")) + "\t" + cell(strings.Join(r.AppliedKMS, ","))
		}
		if gw {
			row += "\t" + cell(strings.Join(r.PrevGW, ",")) + "\t" + cell(strings.Join(r.AppliedGW, ","))
		}
		fmt.Fprintln(tw, row+"\t"+cell(r.Reason))
		return nil
	})
	tw.Flush()
	return err
}

func reportRow(r store.CVMRecord) []string {
	ts := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format(time.RFC3339)
	}
	stage := ""
	if r.Stage >= 0 {
		stage = strconv.Itoa(r.Stage + 1)
	}
	status := ""
	if r.HTTPStatus != 0 {
		status = strconv.Itoa(r.HTTPStatus)
	}
	return []string{r.CVMID, r.Name, stage, string(r.State), r.Reason, strconv.Itoa(r.Attempts),
		strings.Join(r.PrevKMS, " "), strings.Join(r.PrevGW, " "), strings.Join(r.AppliedKMS, " "), strings.Join(r.AppliedGW, " "),
		status, ts(r.StartedAt), ts(r.FinishedAt), r.Worker}
}
