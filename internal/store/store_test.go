package store_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/testutil"
	"github.com/redis/go-redis/v9"
)

func setup(t *testing.T, state store.RolloutState) (*store.Store, string) {
	t.Helper()
	rdb, _ := testutil.Redis(t)
	st := store.New(rdb)
	nr := store.NewRollout{ID: "r1", Name: "r1", Spec: `{"name":"r1"}`, State: state, Stages: []store.NewStage{{Name: "a"}, {Name: "b"}},
		CVMs: []store.NewCVM{
			{ID: "cvm_a", State: store.Pending, Stage: 0}, {ID: "cvm_b", State: store.Pending, Stage: 1},
			{ID: "cvm_c", State: store.Skipped, Stage: -1, Reason: "VMM 0.5.6 is below 0.5.7"},
		}}
	created, err := st.Create(context.Background(), nr, time.Now())
	if err != nil || !created.New {
		t.Fatalf("create: %v %v", created, err)
	}
	// Create is idempotent once the rollout is ready.
	if again, err := st.Create(context.Background(), nr, time.Now()); err != nil || again.New {
		t.Fatalf("second create: %v %v", again, err)
	}
	return st, "r1"
}

// TestTransitionRules walks one CVM through the moves each mode allows and
// refuses, checking the counters and the attempt count after each.
func TestTransitionRules(t *testing.T) {
	st, id := setup(t, store.RolloutRunning)
	ctx := context.Background()
	steps := []struct {
		to           store.CVMState
		mode         store.Mode
		wantTo       store.CVMState
		wantAttempts int
	}{
		{store.Running, store.ModeBegin, store.Running, 0},
		{store.Pending, store.ModeSnooze, store.Pending, 0},  // not an attempt
		{store.Pending, store.ModeRequeue, store.Pending, 0}, // requeue needs running: refused
		{store.Running, store.ModeBegin, store.Running, 0},
		{store.Pending, store.ModeRequeue, store.Pending, 1},
		{store.Running, store.ModeBegin, store.Running, 1},
		{store.Running, store.ModeBegin, store.Running, 2}, // begin again: the last try died
		{store.Failed, store.ModeFinish, store.Failed, 3},
		{store.Succeeded, store.ModeFinish, store.Failed, 3}, // terminal stays terminal
		{store.Running, store.ModeBegin, store.Failed, 3},
		{store.Cancelled, store.ModeCancel, store.Failed, 3}, // cancel takes pending only
		{store.Pending, store.ModeReset, store.Pending, 3},   // retry --failed
	}
	for i, s := range steps {
		tr, err := st.Move(ctx, id, "cvm_a", s.to, s.mode, time.Now(), "reason", "step")
		if err != nil {
			t.Fatal(err)
		}
		if tr.To != s.wantTo {
			t.Fatalf("step %d (%s %s): now %s, want %s", i+1, s.mode, s.to, tr.To, s.wantTo)
		}
		rec, err := st.Record(ctx, id, "cvm_a")
		if err != nil {
			t.Fatal(err)
		}
		if rec.State != s.wantTo || rec.Attempts != s.wantAttempts {
			t.Fatalf("step %d: record %s with %d attempts, want %s with %d", i+1, rec.State, rec.Attempts, s.wantTo, s.wantAttempts)
		}
		r, err := st.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if r.Counts[s.wantTo] < 1 || r.Counts[store.Skipped] != 1 || r.Stages[0].Counts[s.wantTo] != 1 {
			t.Fatalf("step %d: counters %v, stage 1 %v", i+1, r.Counts, r.Stages[0].Counts)
		}
	}
	// Order and content of the report.
	var got []string
	if err := st.Records(ctx, id, func(r store.CVMRecord) error { got = append(got, r.CVMID+"="+string(r.State)); return nil }); err != nil {
		t.Fatal(err)
	}
	if want := "cvm_a=pending cvm_b=pending cvm_c=skipped"; strings.Join(got, " ") != want {
		t.Fatalf("records %q, want %q", strings.Join(got, " "), want)
	}
}

// TestBeginFollowsTheRollout: begin takes a CVM only while the rollout is
// running, turns it cancelled when the rollout is cancelled, and a CVM
// cancelled before it started keeps no worker or start time.
func TestBeginFollowsTheRollout(t *testing.T) {
	st, id := setup(t, store.RolloutPaused)
	ctx := context.Background()
	tr, err := st.Move(ctx, id, "cvm_a", store.Running, store.ModeBegin, time.Now(), "worker", "w1", "started_at", "x")
	if err != nil || tr.To != store.Pending || tr.RolloutState != store.RolloutPaused {
		t.Fatalf("begin while paused: %+v %v", tr, err)
	}
	if cur, err := st.Pause(ctx, id, "test", "", time.Now()); !errors.Is(err, store.ErrNotAllowed) || cur != store.RolloutPaused {
		t.Fatalf("pause while paused: %v %v", cur, err)
	}
	if _, _, err := st.Cancel(ctx, id, "test", "", time.Now()); err != nil {
		t.Fatal(err)
	}
	tr, err = st.Move(ctx, id, "cvm_a", store.Running, store.ModeBegin, time.Now(), "worker", "w1", "started_at", "x")
	if err != nil || tr.To != store.Cancelled {
		t.Fatalf("begin after cancel: %+v %v", tr, err)
	}
	rec, _ := st.Record(ctx, id, "cvm_a")
	if rec.Worker != "" || !rec.StartedAt.IsZero() || rec.Reason == "" {
		t.Fatalf("a cancelled CVM that never started: %+v", rec)
	}
	if tr, _ := st.Move(ctx, id, "cvm_missing", store.Running, store.ModeBegin, time.Now()); tr.From != "" {
		t.Fatalf("a CVM with no record: %+v", tr)
	}
}

// TestDiedTryCountedWhilePaused: a CVM left running by a try that died is
// put back to pending, and that try counted, when its task comes back to a
// paused rollout.
func TestDiedTryCountedWhilePaused(t *testing.T) {
	st, id := setup(t, store.RolloutRunning)
	ctx := context.Background()
	if tr, err := st.Move(ctx, id, "cvm_a", store.Running, store.ModeBegin, time.Now()); err != nil || tr.To != store.Running {
		t.Fatal(tr, err)
	}
	// The worker dies; the operator pauses.
	if _, err := st.Pause(ctx, id, "t", "", time.Now()); err != nil {
		t.Fatal(err)
	}
	tr, err := st.Move(ctx, id, "cvm_a", store.Running, store.ModeBegin, time.Now(), "worker", "w2")
	if err != nil || tr.To != store.Pending || tr.Attempts != 1 {
		t.Fatalf("begin of a died try while paused: %+v %v", tr, err)
	}
	if r, _ := st.Get(ctx, id); r.Counts[store.Running] != 0 || r.Counts[store.Pending] != 2 {
		t.Fatalf("counts %v", r.Counts)
	}
}

// TestConcurrentCreateWritesOnce: of several processes recording the same
// rollout at once (operators re-applying, the repeat controller), one
// writes it and the others report it as existing; its lists hold each CVM
// once.
func TestConcurrentCreateWritesOnce(t *testing.T) {
	rdb, _ := testutil.Redis(t)
	st := store.New(rdb)
	nr := store.NewRollout{ID: "race", Name: "race", Spec: `{"name":"race"}`, State: store.RolloutRunning, Stages: []store.NewStage{{Name: "all"}}}
	for i := range 2000 {
		nr.CVMs = append(nr.CVMs, store.NewCVM{ID: fmt.Sprintf("cvm_%04d", i), State: store.Pending, Stage: 0})
	}
	var created atomic.Int32
	var wg sync.WaitGroup
	for range 6 {
		wg.Go(func() {
			c, err := st.Create(context.Background(), nr, time.Now())
			if err != nil {
				t.Error(err)
			}
			if c.New {
				created.Add(1)
			}
		})
	}
	wg.Wait()
	if created.Load() != 1 {
		t.Fatalf("%d callers wrote the rollout, want 1", created.Load())
	}
	for _, key := range []string{store.OrderKey("race"), store.StageKey("race", 0)} {
		if n, err := rdb.LLen(context.Background(), key).Result(); err != nil || n != 2000 {
			t.Fatalf("%s holds %d ids, want 2000 (%v)", key, n, err)
		}
	}
	if r, err := st.Get(context.Background(), "race"); err != nil || r.Counts[store.Pending] != 2000 {
		t.Fatalf("counts %v, %v", r.Counts, err)
	}
}

// stallHook holds the first MULTI of Create that writes CVM ids, until
// resumed: a writer frozen mid-write (a stopped laptop, a long GC pause).
type stallHook struct {
	key             string
	stalled, resume chan struct{}
	once            sync.Once
}

func (h *stallHook) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *stallHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *stallHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, c := range cmds {
			if a := c.Args(); len(a) > 1 && c.Name() == "rpush" && a[1] == h.key {
				h.once.Do(func() { close(h.stalled); <-h.resume })
			}
		}
		return next(ctx, cmds)
	}
}

// TestStalledWriterWritesNothingMore: a writer whose creation lease ran out
// mid-write, while another process recorded the rollout, writes nothing
// more and says so; the rollout holds each CVM once.
func TestStalledWriterWritesNothingMore(t *testing.T) {
	rdb, url := testutil.Redis(t)
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	slow := redis.NewClient(opt)
	defer slow.Close()
	h := &stallHook{key: store.OrderKey("stall"), stalled: make(chan struct{}), resume: make(chan struct{})}
	slow.AddHook(h)
	nr := store.NewRollout{ID: "stall", Name: "stall", Spec: `{"name":"stall"}`, State: store.RolloutRunning, Stages: []store.NewStage{{Name: "all"}}}
	for i := range 1200 {
		nr.CVMs = append(nr.CVMs, store.NewCVM{ID: fmt.Sprintf("cvm_%04d", i), State: store.Pending, Stage: 0})
	}
	ctx := context.Background()
	first := make(chan error, 1)
	go func() {
		_, err := store.New(slow).Create(ctx, nr, time.Now())
		first <- err
	}()
	<-h.stalled
	// Its lease runs out (as after 30 s) and another process records it.
	rdb.Del(ctx, store.CreatingKey("stall"))
	if created, err := store.New(rdb).Create(ctx, nr, time.Now()); err != nil || !created.New {
		t.Fatalf("second writer: %v %v", created, err)
	}
	close(h.resume)
	if err := <-first; err == nil || !strings.Contains(err.Error(), "took over") {
		t.Fatalf("the stalled writer: %v, want the lease-lost error", err)
	}
	if n, _ := rdb.LLen(ctx, store.OrderKey("stall")).Result(); n != 1200 {
		t.Fatalf("order list holds %d ids, want 1200", n)
	}
	if held, _ := store.New(rdb).Creating(ctx, "stall"); held {
		t.Fatal("a creation lease is left behind")
	}
}

// TestViewCarriesThePace: the dashboard's one-pipeline View reads the
// adaptive rate and why it last changed, the same fields PaceState reads.
func TestViewCarriesThePace(t *testing.T) {
	st, id := setup(t, store.RolloutRunning)
	ctx := context.Background()
	if v, err := st.View(ctx, id, 5); err != nil || v.HasPace || v.PaceReason != "" {
		t.Fatalf("no pace yet: %+v %v", v, err)
	}
	lim := store.NewLimits(st.Redis())
	if err := st.Redis().HSet(ctx, store.PaceKey(id), "rate", "12.5", "reason", "cut: 429 Too Many Requests", "changed_at", time.Now().UnixMilli()).Err(); err != nil {
		t.Fatal(err)
	}
	_, why, _, err := lim.PaceState(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	v, err := st.View(ctx, id, 5)
	if err != nil || !v.HasPace || v.PaceRate != 12.5 || v.PaceReason != why || why == "" {
		t.Fatalf("view %+v (PaceState says %q), %v", v, why, err)
	}
}
