package worker

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"github.com/phalafleet/rollout/internal/control"
	"github.com/phalafleet/rollout/internal/store"
)

// MemoryWarn is the share of maxmemory above which the worker warns.
const MemoryWarn = 0.8

// housekeeping is what the controller-lock holder does beside driving
// rollouts: the Redis memory check once a minute and, with --retention,
// a prune once an hour.
type housekeeping struct {
	ctl       *control.Control
	log       *slog.Logger
	retention time.Duration // 0: no automatic prune
	lastMem   time.Time
	lastPrune time.Time
}

const (
	memoryEvery = time.Minute
	pruneEvery  = time.Hour
)

func (h *housekeeping) onLead(ctx context.Context, now time.Time) {
	if now.Sub(h.lastMem) >= memoryEvery {
		h.lastMem = now
		h.memory(ctx)
	}
	if h.retention > 0 && now.Sub(h.lastPrune) >= pruneEvery {
		h.lastPrune = now
		// The pruned rollouts' metric series are gone already: a worker
		// drops a rollout's series a while after it leaves the active set.
		pruned, err := h.ctl.Prune(ctx, now, control.PruneOptions{OlderThan: h.retention})
		if err != nil {
			h.log.Warn("retention prune", "err", store.Full(err))
		}
		if len(pruned) > 0 {
			h.log.Info("retention prune", "rollouts", len(pruned), "older_than", h.retention.String())
		}
	}
}

// memory reads Redis's use of its maxmemory and warns above MemoryWarn:
// past maxmemory (noeviction) every write is refused. (The lock holder's
// /metrics exports the same ratio at scrape time.)
func (h *housekeeping) memory(ctx context.Context) {
	used, limit, err := h.ctl.Store.Memory(ctx)
	if err != nil {
		if !strings.Contains(err.Error(), "not supported") { // miniredis has no INFO memory
			h.log.Warn("redis memory check", "err", err)
		}
		return
	}
	ratio := 0.0
	if limit > 0 {
		ratio = float64(used) / float64(limit)
	}
	if ratio > MemoryWarn {
		h.log.Warn("Redis is above 80% of its maxmemory: writes are refused once it is full; raise maxmemory or prune finished rollouts (rollout prune, worker --retention)",
			"used_bytes", used, "maxmemory_bytes", limit, "ratio", ratio)
	}
}
