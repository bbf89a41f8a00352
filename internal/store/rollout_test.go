package store_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/testutil"
	"github.com/redis/go-redis/v9"
)

func TestFamily(t *testing.T) {
	for id, want := range map[string]string{
		"web-1a2b3c4d":                 "web-1a2b3c4d",
		"web-1a2b3c4d-run2":            "web-1a2b3c4d",
		"web-1a2b3c4d-rollback":        "web-1a2b3c4d",
		"web-1a2b3c4d-rollback3":       "web-1a2b3c4d",
		"web-1a2b3c4d-run12-rollback":  "web-1a2b3c4d",
		"web-1a2b3c4d-run12-rollback2": "web-1a2b3c4d",
		"canary-run-1a2b3c4d":          "canary-run-1a2b3c4d", // a name with "-run" in it
		"rollback-1a2b3c4d-rollback":   "rollback-1a2b3c4d",
	} {
		if got := store.Family(id); got != want {
			t.Errorf("Family(%s) = %s, want %s", id, got, want)
		}
	}
	// A family shares one hash tag: one Redis Cluster slot.
	if k := store.RolloutKey("web-1a2b3c4d-run2-rollback"); k != "rollout:{web-1a2b3c4d}@run2-rollback" {
		t.Errorf("key %s", k)
	}
}

// TestMovesAreCompareAndSet: each operation moves only from the states it
// allows and says why not otherwise, with the audit line written only by
// a move that happened.
func TestMovesAreCompareAndSet(t *testing.T) {
	st, id := setup(t, store.RolloutRunning)
	ctx := context.Background()
	now := time.Now()
	if _, err := st.Resume(ctx, id, "op", 5, now); !errors.Is(err, store.ErrNotAllowed) {
		t.Fatalf("resume of a running rollout: %v", err)
	}
	if r, _ := st.Get(ctx, id); r.Budget != nil {
		t.Fatalf("a refused resume set a budget: %+v", r.Budget)
	}
	if from, err := st.Pause(ctx, id, "op", "", now); err != nil || from != store.RolloutRunning {
		t.Fatal(from, err)
	}
	var ne *store.NotAllowedError
	if _, err := st.Pause(ctx, id, "op", "", now); !errors.As(err, &ne) || ne.State != store.RolloutPaused {
		t.Fatalf("pause of a paused rollout: %v", err)
	}
	// end_at is applied once, with its flag in the same step: a resume
	// after it stands.
	if err := st.End(ctx, id, store.RolloutPaused, "end_at passed", now); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Resume(ctx, id, "op", -1, now); err != nil {
		t.Fatal(err)
	}
	if err := st.End(ctx, id, store.RolloutPaused, "end_at passed", now); !errors.Is(err, store.ErrNotAllowed) {
		t.Fatalf("end_at applied twice: %v", err)
	}
	if err := st.Complete(ctx, id, now); !errors.Is(err, store.ErrNotAllowed) {
		t.Fatalf("complete with CVMs pending: %v", err)
	}
	evs, _ := st.Events(ctx, id, 0)
	var whats []string
	for _, e := range evs {
		whats = append(whats, e.What)
	}
	if want := "[pause (running -> paused) end_at passed resume (paused -> running)]"; fmt.Sprint(whats) != want {
		t.Fatalf("audit trail %v, want %s", whats, want)
	}
	if _, err := st.Pause(ctx, "no-such", "op", "", now); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("pause of an unknown rollout: %v", err)
	}
}

// TestUnleadKeepsAnotherProcessLock: a controller whose lock ran out and
// was taken by another process does not delete the new holder's lock when
// it lets go.
func TestUnleadKeepsAnotherProcessLock(t *testing.T) {
	rdb, _ := testutil.Redis(t)
	st := store.New(rdb)
	ctx := context.Background()
	if ok, err := st.Lead(ctx, "a", time.Minute); !ok || err != nil {
		t.Fatal(ok, err)
	}
	rdb.Del(ctx, store.ControllerLockKey) // a's lock ran out
	if ok, err := st.Lead(ctx, "b", time.Minute); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if err := st.Unlead(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if owner, _ := rdb.Get(ctx, store.ControllerLockKey).Result(); owner != "b" {
		t.Fatalf("lock held by %q after a let go, want b", owner)
	}
}

// TestClaimsRace: rollouts of different files racing over the same CVMs:
// exactly one wins each CVM, whether the others are refused (strict) or
// skip what they lost (allow overlap).
func TestClaimsRace(t *testing.T) {
	for _, overlap := range []bool{false, true} {
		t.Run(fmt.Sprintf("allow_overlap=%v", overlap), func(t *testing.T) {
			rdb, _ := testutil.Redis(t)
			st := store.New(rdb)
			ctx := context.Background()
			const racers, n = 6, 300
			var wg sync.WaitGroup
			errs := make([]error, racers)
			for i := range racers {
				nr := store.NewRollout{ID: fmt.Sprintf("r%d-0000000%d", i, i), Name: "r", Spec: `{}`, State: store.RolloutRunning,
					Stages: []store.NewStage{{Name: "all"}}, AllowOverlap: overlap}
				for c := range n {
					nr.CVMs = append(nr.CVMs, store.NewCVM{ID: fmt.Sprintf("cvm_%04d", (c*7+i*13)%n), State: store.Pending})
				}
				wg.Go(func() { _, errs[i] = st.Create(ctx, nr, time.Now()) })
			}
			wg.Wait()
			pending := map[string]int{}
			won := 0
			for i := range racers {
				var oe *store.OverlapError
				if errs[i] != nil && (overlap || !errors.As(errs[i], &oe)) {
					t.Fatalf("racer %d: %v", i, errs[i])
				}
				if errs[i] != nil {
					continue
				}
				won++
				id := fmt.Sprintf("r%d-0000000%d", i, i)
				st.Records(ctx, id, func(r store.CVMRecord) error {
					if r.State == store.Pending {
						pending[r.CVMID]++
					}
					return nil
				})
			}
			if !overlap && won != 1 {
				t.Fatalf("%d rollouts recorded, want exactly 1", won)
			}
			if len(pending) != n {
				t.Fatalf("%d of %d CVMs pending somewhere", len(pending), n)
			}
			for cvm, k := range pending {
				if k != 1 {
					t.Fatalf("%s is pending in %d rollouts", cvm, k)
				}
			}
		})
	}
}

var update = flag.Bool("update", false, "rewrite docs/state_machine.md's table of moves")

// TestStateMachineDoc: docs/state_machine.md shows the transitions as the
// code makes them (store.Moves).
func TestStateMachineDoc(t *testing.T) {
	const path = "../../docs/state_machine.md"
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	start := strings.Index(doc, "<!-- moves:")
	end := strings.Index(doc, "<!-- /moves -->")
	if start < 0 || end < start {
		t.Fatal("docs/state_machine.md lacks the <!-- moves: --> ... <!-- /moves --> markers")
	}
	start += strings.Index(doc[start:], "\n") + 1
	want := store.MoveTable()
	if doc[start:end] == want {
		return
	}
	if *update {
		if err := os.WriteFile(path, []byte(doc[:start]+want+doc[end:]), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Fatalf("docs/state_machine.md's table differs from store.Moves; run go test ./internal/store -run TestStateMachineDoc -update\nwant:\n%s", want)
}

// TestSettleRacesReapply: the controller settling what a dead apply left
// (in the active set, no record, no lease) while the operator re-runs the
// apply leaves the re-run's rollout driven and its CVMs claimed.
func TestSettleRacesReapply(t *testing.T) {
	rdb, url := testutil.Redis(t)
	st := store.New(rdb)
	ctx := context.Background()
	nr := store.NewRollout{ID: "a-0000aaaa", Name: "a", Spec: `{}`, State: store.RolloutRunning, Stages: []store.NewStage{{Name: "all"}},
		CVMs: []store.NewCVM{{ID: "cvm_1", State: store.Pending}}}
	rdb.HSet(ctx, store.ActiveKey, nr.ID, "dead")
	rdb.HSet(ctx, store.OwnersKey, "cvm_1", nr.ID)
	opt, _ := redis.ParseURL(url)
	hooked := redis.NewClient(opt)
	defer hooked.Close()
	hooked.AddHook(&testutil.Before{
		Match: func(c redis.Cmder) bool { return c.Name() == "evalsha" || c.Name() == "eval" },
		Fn: func() {
			if _, err := st.Create(ctx, nr, time.Now()); err != nil {
				t.Error(err)
			}
		},
	})
	if _, err := store.New(hooked).Settle(ctx, nr.ID); err != nil {
		t.Fatal(err)
	}
	if ok, _ := rdb.HExists(ctx, store.ActiveKey, nr.ID).Result(); !ok {
		t.Fatal("the re-applied rollout is out of the active set: nothing drives it")
	}
	other := store.NewRollout{ID: "b-0000bbbb", Name: "b", Spec: `{}`, State: store.RolloutRunning, Stages: []store.NewStage{{Name: "all"}},
		CVMs: []store.NewCVM{{ID: "cvm_1", State: store.Pending}}}
	var oe *store.OverlapError
	if _, err := st.Create(ctx, other, time.Now()); !errors.As(err, &oe) {
		t.Fatalf("another rollout over the re-applied one's CVM: %v, want an OverlapError", err)
	}
}

// TestCancelAfterADiedPatch: a CVM whose try died after sending its PATCH,
// in a rollout cancelled since, is not recorded as never started: its
// record says the PATCH may have landed (and keeps patch_sent, so a
// rollback plans it).
func TestCancelAfterADiedPatch(t *testing.T) {
	st, id := setup(t, store.RolloutRunning)
	ctx := context.Background()
	if _, err := st.Move(ctx, id, "cvm_a", store.Running, store.ModeBegin, time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.MarkPatching(ctx, id, "cvm_a", []string{"https://old"}, nil); err != nil {
		t.Fatal(err)
	}
	// The worker dies; the operator cancels; the task comes back.
	if _, _, err := st.Cancel(ctx, id, "op", "", time.Now()); err != nil {
		t.Fatal(err)
	}
	tr, err := st.Move(ctx, id, "cvm_a", store.Running, store.ModeBegin, time.Now())
	if err != nil || tr.To != store.Cancelled {
		t.Fatal(tr, err)
	}
	rec, _ := st.Record(ctx, id, "cvm_a")
	if !strings.Contains(rec.Reason, "may have landed") || !rec.PatchSent {
		t.Fatalf("record %+v", rec)
	}
}

// TestMarkPatchingKeepsTheFirstBeforeImage: the before-image is the one
// the first PATCH saw (a retry after a PATCH that landed reads the new
// URLs), and a PATCH held back and unmarked is marked anew by the next try.
func TestMarkPatchingKeepsTheFirstBeforeImage(t *testing.T) {
	st, id := setup(t, store.RolloutRunning)
	ctx := context.Background()
	if _, err := st.Move(ctx, id, "cvm_a", store.Running, store.ModeBegin, time.Now()); err != nil {
		t.Fatal(err)
	}
	for i, want := range []bool{true, false, true} {
		if i == 2 {
			if err := st.UnmarkPatching(ctx, id, "cvm_a"); err != nil {
				t.Fatal(err)
			}
		}
		rs, newly, err := st.MarkPatching(ctx, id, "cvm_a", []string{fmt.Sprintf("https://kms%d", i)}, []string{fmt.Sprintf("https://gw%d", i)})
		if err != nil || rs != store.RolloutRunning || newly != want {
			t.Fatalf("mark %d: %v %v %v, want newly sent %v", i, rs, newly, err, want)
		}
	}
	rec, _ := st.Record(ctx, id, "cvm_a")
	if !rec.PatchSent || len(rec.PrevKMS) != 1 || rec.PrevKMS[0] != "https://kms0" || len(rec.PrevGW) != 1 || rec.PrevGW[0] != "https://gw0" {
		t.Fatalf("record %+v, want the first before-image and patch_sent", rec)
	}
	// Paused: no mark, whatever the record holds.
	if _, err := st.Pause(ctx, id, "op", "", time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := st.UnmarkPatching(ctx, id, "cvm_a"); err != nil {
		t.Fatal(err)
	}
	if rs, newly, err := st.MarkPatching(ctx, id, "cvm_a", nil, nil); err != nil || rs != store.RolloutPaused || newly {
		t.Fatalf("mark while paused: %v %v %v", rs, newly, err)
	}
	if rec, _ := st.Record(ctx, id, "cvm_a"); rec.PatchSent {
		t.Fatalf("paused, but marked: %+v", rec)
	}
}

// TestStartIsBeginAndMark: Start makes the begin move and the pre-PATCH
// mark in one step, under both their rules: the first before-image only,
// patch_sent once, nothing but the state rules while the rollout is not
// running, a cancelled rollout's CVM cancelled, and no mark once the
// attempts are used up (a try that died counting).
func TestStartIsBeginAndMark(t *testing.T) {
	st, id := setup(t, store.RolloutRunning)
	ctx := context.Background()
	tr, err := st.Start(ctx, id, "cvm_a", time.Now(), 3, []string{"https://kms0"}, []string{"https://gw0"}, "worker", "w1")
	if err != nil || tr.From != store.Pending || tr.To != store.Running || !tr.NewlySent || tr.OutOfAttempts || tr.Attempts != 0 {
		t.Fatalf("first start: %+v %v", tr, err)
	}
	r, _ := st.Get(ctx, id)
	if r.Counts[store.Running] != 1 || r.Stages[0].Counts[store.Running] != 1 {
		t.Fatalf("counts after start: %v", r.Counts)
	}
	// The try dies after its PATCH; the next one reads the new URLs.
	tr, err = st.Start(ctx, id, "cvm_a", time.Now(), 3, []string{"https://kms1"}, nil, "worker", "w2")
	if err != nil || tr.From != store.Running || tr.NewlySent || tr.Attempts != 1 {
		t.Fatalf("start after a died try: %+v %v", tr, err)
	}
	rec, _ := st.Record(ctx, id, "cvm_a")
	if !rec.PatchSent || len(rec.PrevKMS) != 1 || rec.PrevKMS[0] != "https://kms0" || len(rec.PrevGW) != 1 || rec.Worker != "w2" {
		t.Fatalf("record %+v, want the first before-image, patch_sent and the latest worker", rec)
	}
	// Attempts used up (two died tries, then this one): running, no mark.
	if err := st.UnmarkPatching(ctx, id, "cvm_a"); err != nil {
		t.Fatal(err)
	}
	tr, err = st.Start(ctx, id, "cvm_a", time.Now(), 2, nil, nil)
	if err != nil || tr.To != store.Running || !tr.OutOfAttempts || tr.NewlySent || tr.Attempts != 2 {
		t.Fatalf("start out of attempts: %+v %v", tr, err)
	}
	if rec, _ := st.Record(ctx, id, "cvm_a"); rec.PatchSent {
		t.Fatalf("out of attempts, but marked: %+v", rec)
	}
	// Paused: a pending CVM stays pending, unmarked, with no worker.
	if _, err := st.Pause(ctx, id, "op", "", time.Now()); err != nil {
		t.Fatal(err)
	}
	tr, err = st.Start(ctx, id, "cvm_b", time.Now(), 3, []string{"https://kms0"}, nil, "worker", "w1")
	if err != nil || tr.RolloutState != store.RolloutPaused || tr.To != store.Pending || tr.NewlySent {
		t.Fatalf("start while paused: %+v %v", tr, err)
	}
	if rec, _ := st.Record(ctx, id, "cvm_b"); rec.PatchSent || rec.PrevKMS != nil || rec.Worker != "" {
		t.Fatalf("paused, but recorded: %+v", rec)
	}
	// Cancelled: the CVM is cancelled, saying it never started.
	if _, _, err := st.Cancel(ctx, id, "op", "", time.Now()); err != nil {
		t.Fatal(err)
	}
	tr, err = st.Start(ctx, id, "cvm_b", time.Now(), 3, nil, nil)
	if err != nil || tr.To != store.Cancelled {
		t.Fatalf("start after cancel: %+v %v", tr, err)
	}
}

// TestTriedCountsTheTry: a worker's try that ends before Start (its GET
// failed, or showed the target) still uses an attempt, whether it goes
// back to pending for a retry or ends the CVM; a finished CVM is kept.
func TestTriedCountsTheTry(t *testing.T) {
	st, id := setup(t, store.RolloutRunning)
	ctx := context.Background()
	tr, err := st.Move(ctx, id, "cvm_a", store.Pending, store.ModeTried, time.Now(), "reason", "HTTP 503")
	if err != nil || tr.From != store.Pending || tr.To != store.Pending || tr.Attempts != 1 {
		t.Fatalf("tried, back to pending: %+v %v", tr, err)
	}
	tr, err = st.Move(ctx, id, "cvm_a", store.Unchanged, store.ModeTried, time.Now(), "reason", "already at target")
	if err != nil || tr.To != store.Unchanged || tr.Attempts != 2 {
		t.Fatalf("tried, at target: %+v %v", tr, err)
	}
	r, _ := st.Get(ctx, id)
	if r.Counts[store.Pending] != 1 || r.Counts[store.Unchanged] != 1 {
		t.Fatalf("counts: %v", r.Counts)
	}
	if tr, err := st.Move(ctx, id, "cvm_a", store.Pending, store.ModeTried, time.Now()); err != nil || tr.Changed() || tr.To != store.Unchanged {
		t.Fatalf("tried on a finished CVM: %+v %v", tr, err)
	}
	if rec, _ := st.Record(ctx, id, "cvm_a"); rec.Reason != "already at target" || rec.Attempts != 2 {
		t.Fatalf("record %+v", rec)
	}
}

// TestDeadTryCountedByTriedAndPark: a try that never made Start and finds
// the CVM running (the try before it died there) counts that try too:
// park (throttled) one attempt, tried two; from pending, park none.
func TestDeadTryCountedByTriedAndPark(t *testing.T) {
	st, id := setup(t, store.RolloutRunning)
	ctx := context.Background()
	for _, c := range []struct {
		mode store.Mode
		to   store.CVMState
		from store.CVMState
		want int // attempts after
	}{
		{store.ModePark, store.Pending, store.Pending, 0},
		{store.ModePark, store.Pending, store.Running, 1},
		{store.ModeTried, store.Pending, store.Running, 3},
		{store.ModeTried, store.Pending, store.Pending, 4},
	} {
		if c.from == store.Running {
			if _, err := st.Start(ctx, id, "cvm_a", time.Now(), 10, nil, nil); err != nil {
				t.Fatal(err)
			}
		}
		tr, err := st.Move(ctx, id, "cvm_a", c.to, c.mode, time.Now())
		if err != nil || tr.From != c.from || tr.To != c.to || tr.Attempts != c.want {
			t.Fatalf("%s from %s: %+v %v, want %s with %d attempts", c.mode, c.from, tr, err, c.to, c.want)
		}
	}
	if r, _ := st.Get(ctx, id); r.Counts[store.Running] != 0 || r.Counts[store.Pending] != 2 {
		t.Fatalf("counts %v", r.Counts)
	}
}

// TestRetryGenerationMarksItsPatch: after retry --failed (which leaves
// patch_sent empty: not sent in this generation), the next try's Start
// marks its PATCH sent again, so a crash after it is recorded as applied.
func TestRetryGenerationMarksItsPatch(t *testing.T) {
	st, id := setup(t, store.RolloutRunning)
	ctx := context.Background()
	if _, err := st.Start(ctx, id, "cvm_a", time.Now(), 3, []string{"https://old"}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Move(ctx, id, "cvm_a", store.Failed, store.ModeFinish, time.Now(), "reason", "HTTP 500"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.Retry(ctx, id, "op", "--failed", []string{"cvm_a"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	if sent, _ := st.PatchSent(ctx, id, "cvm_a"); sent {
		t.Fatal("patch_sent survived retry --failed")
	}
	tr, err := st.Start(ctx, id, "cvm_a", time.Now(), 3, []string{"https://new"}, nil)
	if err != nil || !tr.NewlySent {
		t.Fatalf("start after retry: %+v %v, want newly sent", tr, err)
	}
	rec, _ := st.Record(ctx, id, "cvm_a")
	if !rec.PatchSent || len(rec.PrevKMS) != 1 || rec.PrevKMS[0] != "https://old" {
		t.Fatalf("record %+v: want patch_sent and the first before-image", rec)
	}
}
