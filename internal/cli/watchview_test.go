package cli

import (
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/phalafleet/rollout/internal/store"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// golden compares got with testdata/name.golden (-update rewrites it).
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test ./internal/cli -run %s -update writes it)", err, t.Name())
	}
	if got != string(want) {
		t.Fatalf("%s differs (go test ./internal/cli -run '%s' -update rewrites it after a deliberate change)\ngot:\n%s\nwant:\n%s", path, t.Name(), got, want)
	}
}

// clock is the fixed time of the golden views.
var clock = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func counts(kv ...any) map[store.CVMState]int {
	m := map[store.CVMState]int{}
	for _, s := range store.CVMStates {
		m[s] = 0
	}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i].(store.CVMState)] = kv[i+1].(int)
	}
	return m
}

// fleetRollout is a three-stage rollout of 1,760 selected CVMs, 1,718 to
// patch, in its second stage.
func fleetRollout() *store.Rollout {
	return &store.Rollout{ID: "web-1a2b3c4d", Name: "web", State: store.RolloutRunning, Total: 1760, Stage: 1, Promoted: 0,
		Spec:   `{"name":"web","rate":{"per_second":5}}`,
		Counts: counts(store.Succeeded, 282, store.Failed, 3, store.Running, 20, store.Pending, 1413, store.Unchanged, 40, store.Skipped, 2),
		Stages: []store.Stage{
			{Index: 0, Name: "canary", Size: 18, Counts: counts(store.Succeeded, 18), Manual: true},
			{Index: 1, Name: "25%", Size: 430, Counts: counts(store.Succeeded, 264, store.Failed, 3, store.Running, 20, store.Pending, 143)},
			{Index: 2, Name: "rest", Size: 1270, Counts: counts(store.Pending, 1270)},
		}}
}

// at is s observed after a minute in which workers finished n CVMs.
func at(s snapshot, n int) (snapshot, *progress) {
	p := &progress{}
	before := *s.R
	before.Counts = maps.Clone(s.R.Counts)
	before.Counts[store.Succeeded] -= n
	p.observe(snapshot{At: s.At.Add(-time.Minute), R: &before})
	p.observe(s)
	return s, p
}

// TestWatchViewGolden renders status --watch's view (the terminal frame,
// the line of a non-terminal and the NDJSON document) at a fixed clock and
// terminal width, for the states an operator meets.
func TestWatchViewGolden(t *testing.T) {
	type tc struct {
		name  string
		width int
		make  func() (snapshot, *progress)
	}
	cases := []tc{
		{"running", 80, func() (snapshot, *progress) {
			return at(snapshot{At: clock, R: fleetRollout(), Workers: 3, Rate: 4.2, RateSet: true}, 270)
		}},
		{"warnings", 100, func() (snapshot, *progress) {
			s := snapshot{At: clock, R: fleetRollout(), Workers: 0,
				Dead: []store.DeadWorkerSlots{{Worker: "host-b/4242", Slots: 7, Freed: 7}}}
			p := &progress{}
			p.observe(snapshot{At: clock.Add(-7 * time.Minute), R: s.R})
			p.observe(s)
			return s, p
		}},
		{"baking", 80, func() (snapshot, *progress) {
			r := fleetRollout()
			r.Stage, r.Promoted = 0, -1
			r.Stages[0].Manual, r.Stages[0].Bake, r.Stages[0].DoneAt = false, 10*time.Minute, clock.Add(-150*time.Second)
			r.Counts = counts(store.Succeeded, 18, store.Pending, 1700, store.Unchanged, 40, store.Skipped, 2)
			r.Stages[1].Counts, r.Reason = counts(store.Pending, 430), "stage 1 (canary) done; baking until 2026-12-01T12:07:30Z"
			return at(snapshot{At: clock, R: r, Workers: 2}, 0)
		}},
		{"narrow", 40, func() (snapshot, *progress) {
			return at(snapshot{At: clock, R: fleetRollout(), Workers: 3, Rate: 4.2, RateSet: true}, 270)
		}},
		{"redis-blip", 80, func() (snapshot, *progress) {
			s, p := at(snapshot{At: clock, R: fleetRollout(), Workers: 3}, 270)
			s.RedisErr, s.RetryIn = "dial tcp 10.0.0.5:6379: connect: connection refused", 2*time.Second
			return s, p
		}},
		{"completed", 80, func() (snapshot, *progress) {
			r := fleetRollout()
			r.State, r.Stage = store.RolloutCompleted, 2
			r.Counts = counts(store.Succeeded, 1715, store.Failed, 3, store.Unchanged, 40, store.Skipped, 2)
			r.Stages[1].Counts = counts(store.Succeeded, 427, store.Failed, 3)
			r.Stages[2].Counts = counts(store.Succeeded, 1270)
			return at(snapshot{At: clock, R: r, Workers: 0}, 300)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, p := c.make()
			v := derive(s, p)
			var b strings.Builder
			fmt.Fprintf(&b, "-- frame (width %d) --\n", c.width)
			for _, l := range renderFrame(s, v, c.width) {
				if n := len([]rune(l)); n > c.width {
					t.Errorf("line of %d runes at width %d: %q", n, c.width, l)
				}
				b.WriteString(l + "\n")
			}
			b.WriteString("-- line (not a terminal) --\n" + watchLine(s, v) + "\n")
			doc, err := json.Marshal(watchDoc(s, v))
			if err != nil {
				t.Fatal(err)
			}
			var short map[string]any // the document less the rollout record
			json.Unmarshal(doc, &short)
			delete(short, "rollout")
			j, _ := json.Marshal(short)
			b.WriteString("-- json (less \"rollout\") --\n" + string(j) + "\n")
			golden(t, "watch-"+c.name, b.String())
		})
	}
}

// TestWatchDerive checks the figures behind the view: CVMs/s over the
// last minute, the ETA from it, the bake countdown, and which warnings
// stand when.
func TestWatchDerive(t *testing.T) {
	s, p := at(snapshot{At: clock, R: fleetRollout(), Workers: 3}, 270)
	v := derive(s, p)
	if v.PerSecond != 4.5 || v.ETA != 5*time.Minute+18*time.Second || len(v.Warnings) != 0 {
		t.Fatalf("4.5 CVMs/s and 1433 left: %+v", v) // 1433/4.5 = 318.4s
	}
	s.Workers = 0
	if v := derive(s, p); len(v.Warnings) != 1 || v.Warnings[0].Kind != "no_workers" {
		t.Fatalf("no worker: %+v", v.Warnings)
	}
	// A finished rollout needs no worker, and has no ETA.
	s.R.State = store.RolloutCompleted
	if v := derive(s, p); len(v.Warnings) != 0 || v.ETA != 0 {
		t.Fatalf("completed: %+v", v)
	}
	// No progress: warned after stallAfter, not before, and not while a
	// stage waits at its gate.
	r := fleetRollout()
	q := &progress{}
	q.observe(snapshot{At: clock, R: r})
	s = snapshot{At: clock.Add(stallAfter - time.Second), R: r, Workers: 1}
	q.observe(s)
	if v := derive(s, q); len(v.Warnings) != 0 {
		t.Fatalf("warned early: %+v", v.Warnings)
	}
	s.At = clock.Add(stallAfter)
	q.observe(s)
	if v := derive(s, q); len(v.Warnings) != 1 || v.Warnings[0].Kind != "no_progress" {
		t.Fatalf("no stall warning: %+v", v.Warnings)
	}
	gated := fleetRollout()
	gated.Stages[1].Counts = counts(store.Succeeded, 430)
	if v := derive(snapshot{At: s.At, R: gated, Workers: 1}, q); len(v.Warnings) != 0 {
		t.Fatalf("a stage at its gate is not stalled: %+v", v.Warnings)
	}
	// The window moves: old samples go, so the pace is the last minute's.
	for i := range 10 {
		q.observe(snapshot{At: s.At.Add(time.Duration(i) * 10 * time.Second), R: r})
	}
	if len(q.samples) > 8 {
		t.Fatalf("%d samples kept for a one-minute window at 10s", len(q.samples))
	}
}

// TestCountsSayWhatTheyCount: the progress is patched of to-patch, with
// cancelled and failed apart, not "done" counting cancelled ones.
func TestCountsSayWhatTheyCount(t *testing.T) {
	r := fleetRollout()
	r.State = store.RolloutCancelled
	r.Counts = counts(store.Succeeded, 282, store.Failed, 3, store.Cancelled, 1433, store.Unchanged, 40, store.Skipped, 2)
	got := countsLine(r)
	want := "patched 282/1718  failed 3  cancelled 1433  (of 1760 selected: 40 unchanged, 2 skipped)"
	if got != want {
		t.Fatalf("got  %q\nwant %q", got, want)
	}
	if s := statusJSON(r); s.Patched != 282 || s.ToPatch != 1718 || s.Done != 1760 {
		t.Fatalf("status json: patched %d to_patch %d done %d", s.Patched, s.ToPatch, s.Done)
	}
}
