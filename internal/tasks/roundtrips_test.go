package tasks_test

import (
	"encoding/json"
	"testing"
	"testing/synctest"
	"time"

	"github.com/hibiken/asynq"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/tasks"
	"github.com/phalafleet/rollout/internal/testutil"
	"github.com/redis/go-redis/v9"
)

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
		count := &testutil.Counter{}
		b.RDB.(*redis.Client).AddHook(count) // after the apply: the handler's commands only
		h := &tasks.Handler{Store: store.New(b.RDB), API: b.API, Worker: "w"}
		for _, it := range p.Items {
			pl, _ := json.Marshal(tasks.Payload{Rollout: p.ID, CVM: it.CVMID})
			if err := h.ProcessTask(t.Context(), asynq.NewTask(tasks.TypeCVM, pl)); err != nil {
				t.Fatalf("%s: %v", it.CVMID, err)
			}
		}
		n, c := len(p.Items), count.ByName()
		// Each script call is one EVALSHA; an EVAL follows only the first
		// call of a script this Redis did not have yet (NOSCRIPT).
		if c["evalsha"] != 2*n || c["eval"] > 1 || c["hget"] != 1 || c["hmget"] != 1 || len(c) > 4 {
			t.Fatalf("Redis commands for %d CVMs: %v; want %d script calls, one HGET (the state) and one HMGET (the spec)", n, c, 2*n)
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

// TestDeadTriesCountWhateverTheNextGET: a CVM whose tries keep dying
// after their PATCH uses up its attempts even when each next try's GET is
// throttled (429: a snooze, no attempt of its own) or fails (5xx: one
// attempt of its own), so it ends failed instead of being PATCHed without
// bound. Each round: a try makes Start (the PATCH goes out) and dies, then
// the re-delivered task runs once with its GET refused.
func TestDeadTriesCountWhateverTheNextGET(t *testing.T) {
	for _, c := range []struct {
		name   string
		status int
		rounds int // rounds until out of attempts (max_attempts 3)
	}{
		{"GET throttled", 429, 3}, // the dead try alone counts: 1, 2, 3, then out of attempts
		{"GET failed", 500, 2},    // the dead try and this one: 2, then 4: failed
	} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := testutil.InBubble(t, cleanFleet)
				p := b.Apply(t, "name: d\nselector: {all: true}\ntarget: {kms_urls: [\"https://kms-new.example:8000\"]}\nretry: {max_attempts: 3}\n")
				victim := p.Items[0].CVMID
				h := &tasks.Handler{Store: b.Store, API: b.API, Worker: "w"}
				pl, _ := json.Marshal(tasks.Payload{Rollout: p.ID, CVM: victim})
				for round := 1; round <= c.rounds; round++ {
					// A try sends its PATCH and dies.
					tr, err := b.Store.Start(t.Context(), p.ID, victim, time.Now(), 3, nil, nil)
					if err != nil || tr.OutOfAttempts {
						t.Fatalf("round %d: start %+v %v: out of attempts too early", round, tr, err)
					}
					b.Sim.FailRead(victim, c.status)
					_ = h.ProcessTask(t.Context(), asynq.NewTask(tasks.TypeCVM, pl))
					b.Sim.FailRead(victim, 0)
				}
				// Ended failed, or the next try may send no PATCH.
				tr, err := b.Store.Start(t.Context(), p.ID, victim, time.Now(), 3, nil, nil)
				if err != nil || !(tr.To == store.Failed || tr.OutOfAttempts) {
					rec, _ := b.Store.Record(t.Context(), p.ID, victim)
					t.Fatalf("after %d rounds: start %+v %v, record %+v: want failed or out of attempts", c.rounds, tr, err, rec)
				}
			})
		})
	}
}
