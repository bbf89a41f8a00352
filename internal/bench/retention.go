package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/phalafleet/rollout/internal/control"
	"github.com/phalafleet/rollout/internal/store"
)

// retention measures what a finished rollout keeps in Redis and what a
// prune gives back (issue 10's capacity figures, docs/scaling.md): bytes
// per finished CVM record, per audit line and per outbox event (MEMORY
// USAGE, SAMPLES 0: exact), and used_memory around a prune of rollout id
// (finished, n CVMs).
func (b *runner) retention(ctx context.Context, id string, n int) ([]Row, error) {
	st := store.New(b.rdb)
	ids, err := st.CVMIDs(ctx, id)
	if err != nil {
		return nil, err
	}
	var recBytes int64
	sample := ids[:min(200, len(ids))]
	for _, c := range sample {
		m, err := b.rdb.MemoryUsage(ctx, store.CVMKey(id, c), 0).Result()
		if err != nil {
			return nil, err
		}
		recBytes += m
	}
	perRec := float64(recBytes) / float64(len(sample))
	orderBytes, _ := b.rdb.MemoryUsage(ctx, store.OrderKey(id), 0).Result()

	// Audit lines and notifications: a one-CVM rollout with a notify target
	// (the discard port of this machine: nothing leaves it) paused and
	// resumed k times (two audit lines, two outbox entries each).
	const k = 500
	nid := "bench-notify-00000001"
	now := time.Now()
	if _, err := st.Create(ctx, store.NewRollout{ID: nid, Name: "bench-notify", Spec: "{}", CreatedBy: "bench", State: store.RolloutRunning,
		Stages: []store.NewStage{{Name: "all"}}, CVMs: []store.NewCVM{{ID: "cvm_x", Name: "x", State: store.Pending}},
		Notify: []store.NotifyTarget{{URL: "http://127.0.0.1:9/rollouts", SecretEnv: "HOOK_SECRET"}}}, now); err != nil {
		return nil, err
	}
	b.rdb.Del(ctx, store.EventsKey(nid))
	for range k {
		if _, err := st.Pause(ctx, nid, "alice@ops-laptop", "", now); err != nil {
			return nil, err
		}
		if _, err := st.Resume(ctx, nid, "alice@ops-laptop", -1, now); err != nil {
			return nil, err
		}
	}
	lines, _ := b.rdb.LLen(ctx, store.EventsKey(nid)).Result()
	evBytes, _ := b.rdb.MemoryUsage(ctx, store.EventsKey(nid), 0).Result()
	entries, _ := b.rdb.HLen(ctx, store.OutboxKey(nid)).Result()
	obBytes, _ := b.rdb.MemoryUsage(ctx, store.OutboxKey(nid), 0).Result()
	dueBytes, _ := b.rdb.MemoryUsage(ctx, store.OutboxDueKey(nid), 0).Result()
	if lines == 0 || entries == 0 {
		return nil, fmt.Errorf("no audit lines (%d) or outbox entries (%d) written", lines, entries)
	}

	// The prune of the finished rollout.
	m0, err := usedMemory(ctx, b.rdb)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	pruned, err := control.New(b.rdb).Prune(ctx, time.Now().Add(365*24*time.Hour), control.PruneOptions{OlderThan: time.Hour})
	took := time.Since(start)
	if err != nil {
		return nil, err
	}
	m1, err := usedMemory(ctx, b.rdb)
	if err != nil {
		return nil, err
	}
	summary, _ := b.rdb.MemoryUsage(ctx, store.RolloutKey(id), 0).Result()
	events, _ := b.rdb.MemoryUsage(ctx, store.EventsKey(id), 0).Result()
	b.progress("retention: pruned %d rollouts in %s, used_memory %d -> %d", len(pruned), took.Round(time.Millisecond), m0, m1)
	return []Row{{
		Stage: "Redis bytes per finished CVM record", Ours: fmt.Sprintf("%.0f B", perRec+float64(orderBytes)/float64(n)), Result: "info",
		Note: fmt.Sprintf("MEMORY USAGE (SAMPLES 0) of %d finished CVM hashes of the %s-CVM rollout, average %.0f B, plus its CVM id list %s B / %d", len(sample), thousands(int64(n)), perRec, thousands(orderBytes), n),
	}, {
		Stage: "Redis bytes per audit line", Ours: fmt.Sprintf("%.0f B", float64(evBytes)/float64(lines)), Result: "info",
		Note: fmt.Sprintf("MEMORY USAGE of an audit trail of %d pause/resume lines (capped at 1,000 per rollout)", lines),
	}, {
		Stage: "Redis bytes per outbox event", Ours: fmt.Sprintf("%.0f B", float64(obBytes+dueBytes)/float64(entries)), Result: "info",
		Note: fmt.Sprintf("MEMORY USAGE of an outbox hash of %d undelivered notifications (%s B) and its due set (%s B); a delivered one leaves the due set", entries, thousands(obBytes), thousands(dueBytes)),
	}, {
		Stage: fmt.Sprintf("prune of a finished %s-CVM rollout", thousands(int64(n))), Ours: fmt.Sprintf("%.0f B/CVM freed", float64(m0-m1)/float64(n)),
		Baseline: fmt.Sprintf("%s B kept", thousands(summary+events)), Result: "info",
		Note: fmt.Sprintf("used_memory %s -> %s in %s; kept: the summary hash (%s B) and the audit trail (%s B)", thousands(m0), thousands(m1), secs(took), thousands(summary), thousands(events)),
	}}, nil
}
