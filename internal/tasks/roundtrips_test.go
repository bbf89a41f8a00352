package tasks_test

import (
	"context"
	"encoding/json"
	"net"
	"strings"
	"sync"
	"testing"
	"testing/synctest"

	"github.com/hibiken/asynq"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/tasks"
	"github.com/phalafleet/rollout/internal/testutil"
	"github.com/redis/go-redis/v9"
)

// counter counts the Redis commands a client sends, by name.
type counter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *counter) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) { return next(ctx, network, addr) }
}

func (c *counter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.mu.Lock()
		c.n[strings.ToLower(cmd.Name())]++
		c.mu.Unlock()
		return next(ctx, cmd)
	}
}

func (c *counter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.mu.Lock()
		for _, cmd := range cmds {
			c.n[strings.ToLower(cmd.Name())]++
		}
		c.mu.Unlock()
		return next(ctx, cmds)
	}
}

// TestTwoScriptCallsPerCVM pins what a patched CVM costs the Redis every
// worker shares, outside asynq's own calls: two script calls (Start just
// before the PATCH, then the move that records the result), plus one read
// of the rollout's state per process and StateTTL and one of its spec,
// whatever the number of CVMs; and the CVMs end succeeded with their
// before-image recorded.
func TestTwoScriptCallsPerCVM(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := testutil.InBubble(t, cleanFleet)
		p := b.Apply(t, "name: r\nselector: {all: true}\ntarget: {kms_urls: [\"https://kms-new.example:8000\"]}\n")
		c := &counter{n: map[string]int{}}
		b.RDB.(*redis.Client).AddHook(c) // after the apply: the handler's commands only
		h := &tasks.Handler{Store: store.New(b.RDB), API: b.API, Worker: "w"}
		for _, it := range p.Items {
			pl, _ := json.Marshal(tasks.Payload{Rollout: p.ID, CVM: it.CVMID})
			if err := h.ProcessTask(t.Context(), asynq.NewTask(tasks.TypeCVM, pl)); err != nil {
				t.Fatalf("%s: %v", it.CVMID, err)
			}
		}
		n := len(p.Items)
		// Each script call is one EVALSHA; an EVAL follows only the first
		// call of a script this Redis did not have yet (NOSCRIPT).
		if c.n["evalsha"] != 2*n || c.n["eval"] > 1 || c.n["hget"] != 1 || c.n["hmget"] != 1 || len(c.n) > 4 {
			t.Fatalf("Redis commands for %d CVMs: %v; want %d script calls, one HGET (the state) and one HMGET (the spec)", n, c.n, 2*n)
		}
		r, err := b.Store.Get(t.Context(), p.ID)
		if err != nil || r.Counts[store.Succeeded] != n {
			t.Fatalf("counts %v (%v), want %d succeeded", r.Counts, err, n)
		}
		rec, _ := b.Store.Record(t.Context(), p.ID, p.Items[0].CVMID)
		if !rec.PatchSent || !rec.Patched || rec.PrevKMS == nil || rec.Worker != "w" || rec.StartedAt.IsZero() || rec.Attempts != 1 {
			t.Fatalf("record %+v", rec)
		}
	})
}
