package cli

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/hibiken/asynq"
	"github.com/phalafleet/rollout/internal/tasks"
)

// runWorkers lists the live worker processes (asynq's server heartbeats)
// and the rollout queue's depth: the ops view of who is doing what.
func runWorkers(ctx context.Context, e *Env, args []string) error {
	c := newRedisCmd("workers", "table", "json")
	_, st, closeRedis, err := c.open(ctx, e, args, 0)
	if err != nil {
		return err
	}
	defer closeRedis()
	out := c.out
	insp := asynq.NewInspectorFromRedisClient(st.Redis())
	servers, err := insp.Servers()
	if err != nil {
		return fmt.Errorf("listing workers: %w", err)
	}
	sort.Slice(servers, func(i, j int) bool { return servers[i].Host+servers[i].ID < servers[j].Host+servers[j].ID })
	type row struct {
		Host        string    `json:"host"`
		PID         int       `json:"pid"`
		Concurrency int       `json:"concurrency"`
		Active      int       `json:"active"`
		Started     time.Time `json:"started"`
		Status      string    `json:"status"`
	}
	// A worker process runs several asynq servers (worker.fetchers): one
	// row per process, their concurrency and active tasks summed.
	rows := []row{}
	at := map[string]int{}
	for _, s := range servers {
		k := s.Host + "/" + strconv.Itoa(s.PID)
		i, ok := at[k]
		if !ok {
			i, at[k] = len(rows), len(rows)
			rows = append(rows, row{Host: s.Host, PID: s.PID, Started: s.Started, Status: s.Status})
		}
		r := &rows[i]
		r.Concurrency += s.Concurrency
		r.Active += len(s.ActiveWorkers)
		if s.Started.Before(r.Started) {
			r.Started = s.Started
		}
		if s.Status != "active" {
			r.Status = s.Status
		}
	}
	var q *asynq.QueueInfo
	if qi, err := insp.GetQueueInfo(tasks.Queue); err == nil {
		q = qi
	}
	if *out == "json" {
		v := map[string]any{"workers": rows}
		if q != nil {
			v["queue"] = map[string]any{"pending": q.Pending, "active": q.Active, "scheduled": q.Scheduled, "retry": q.Retry,
				"archived": q.Archived, "processed_today": q.Processed, "latency_seconds": q.Latency.Seconds()}
		}
		return writeJSON(e.Stdout, v)
	}
	tw := tabwriter.NewWriter(e.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tPID\tCONCURRENCY\tACTIVE*\tSTATUS\tSTARTED")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%s\n", r.Host, r.PID, r.Concurrency, r.Active, r.Status, r.Started.Local().Format(time.RFC3339))
	}
	tw.Flush()
	fmt.Fprintln(e.Stdout, "* from the workers' heartbeats, up to 5s old")
	if len(rows) == 0 {
		fmt.Fprintln(e.Stdout, "\nNo worker is running: no rollout moves until one starts (`worker`).")
	}
	if q != nil {
		fmt.Fprintf(e.Stdout, "\nQueue %s: %d pending, %d active, %d scheduled (waiting or snoozed), %d retry, %d archived; oldest pending waited %s.\n",
			tasks.Queue, q.Pending, q.Active, q.Scheduled, q.Retry, q.Archived, q.Latency.Round(time.Millisecond))
	}
	return nil
}
