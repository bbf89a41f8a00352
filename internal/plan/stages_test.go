package plan

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

func TestStagePlanSizes(t *testing.T) {
	q := func(n int) StageSpec { return StageSpec{Count: n} }
	pct := func(p float64) StageSpec { return StageSpec{Percent: p} }
	cases := []struct {
		name  string
		specs []StageSpec
		total int
		want  []int
	}{
		{"none", nil, 7, []int{7}},
		{"counts, last repeats", []StageSpec{q(1), q(3)}, 10, []int{1, 3, 3, 3}},
		{"percent rounds down", []StageSpec{pct(30)}, 20, []int{6, 6, 6, 2}},
		{"percent at least one", []StageSpec{pct(10)}, 5, []int{1, 1, 1, 1, 1}},
		{"ansible list", []StageSpec{q(1), q(10), pct(10), pct(50), pct(100)}, 1000, []int{1, 10, 100, 500, 389}},
		{"more stages than CVMs", []StageSpec{q(1), q(10), pct(100)}, 4, []int{1, 3}},
		{"nothing to patch", []StageSpec{q(1)}, 0, []int{0}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := StagePlan(c.specs, c.total, time.Minute)
			sum := 0
			if len(got) != len(c.want) {
				t.Fatalf("got %d stages %+v, want sizes %v", len(got), got, c.want)
			}
			for i, st := range got {
				if st.Size != c.want[i] {
					t.Errorf("stage %d size %d, want %d", i, st.Size, c.want[i])
				}
				if (len(c.specs) > 0 && c.total > 0 && st.Bake != time.Minute) || st.Promote != "auto" || st.Name == "" {
					t.Errorf("stage %d: %+v", i, st)
				}
				sum += st.Size
			}
			if sum != c.total {
				t.Errorf("stages hold %d CVMs, want %d", sum, c.total)
			}
		})
	}
}

func TestPlanAssignsEveryCVMOneStage(t *testing.T) {
	f, err := Parse("s.yaml", []byte("name: s\nselector: {all: true}\ntarget: {kms_urls: [\"https://k:1\"]}\n"+
		"stages: [1, {name: canary, count: 2, promote: manual, bake: 1h}, \"40%\"]\nbake: 10m\n"+
		"failure_budget: {max_failed: \"10%\", min_executed: 3}\n"))
	if err != nil {
		t.Fatal(err)
	}
	p := &Plan{File: f, Counts: map[Action]int{}}
	for i := range 23 {
		a := Patch
		if i%5 == 0 {
			a = Skip
		}
		p.Items = append(p.Items, Item{CVMID: string(rune('a' + i)), Action: a})
		p.Counts[a]++
	}
	p.AssignStages()
	// 18 to patch: 1, 2, then 40% of 18 = 7 repeating: 1+2+7+7+1.
	want := []int{1, 2, 7, 7, 1}
	if len(p.Stages) != len(want) {
		t.Fatalf("stages %+v", p.Stages)
	}
	per := make([]int, len(p.Stages))
	for _, it := range p.Items {
		if it.Action != Patch {
			if it.Stage != -1 {
				t.Errorf("%s (skip) in stage %d", it.CVMID, it.Stage)
			}
			continue
		}
		per[it.Stage]++
	}
	for i, n := range per {
		if n != want[i] || p.Stages[i].Size != want[i] {
			t.Errorf("stage %d holds %d (size %d), want %d", i, n, p.Stages[i].Size, want[i])
		}
	}
	if p.Stages[1].Name != "canary" || p.Stages[1].Promote != "manual" || p.Stages[1].Bake != time.Hour || p.Stages[2].Bake != 10*time.Minute {
		t.Errorf("stage settings %+v", p.Stages)
	}
	if p.PausesAfter != 2 { // 10% of 18 = 1 tolerated, the 2nd failure trips
		t.Errorf("pauses after %d failures, want 2", p.PausesAfter)
	}
}

func TestScheduleWindowsAcrossDST(t *testing.T) {
	// 01:00 Berlin time for 3h, no new CVM in the last 30m. Berlin moves
	// from CET (UTC+1) to CEST (UTC+2) on 2026-03-29.
	s := &Schedule{Windows: []Window{{Cron: "0 1 * * *", Duration: 3 * time.Hour, Timezone: "Europe/Berlin"}}, Cutoff: 30 * time.Minute}
	at := func(v string) time.Time {
		tm, err := time.Parse(time.RFC3339, v)
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}
	cases := []struct {
		now      string
		open     bool
		nextOpen string
	}{
		{"2026-03-28T00:30:00Z", true, ""},                      // 01:30 CET
		{"2026-03-28T02:40:00Z", false, "2026-03-29T00:00:00Z"}, // 03:40 CET: in the cutoff
		{"2026-03-28T23:59:00Z", false, "2026-03-29T00:00:00Z"}, // 00:59 CET
		{"2026-03-29T00:10:00Z", true, ""},                      // 01:10 CET, the night of the change
		{"2026-03-29T23:00:00Z", true, ""},                      // 01:00 CEST: opens an hour earlier in UTC
		{"2026-03-29T22:59:00Z", false, "2026-03-29T23:00:00Z"},
		{"2026-03-30T01:29:00Z", true, ""},                      // 2h29m into the window
		{"2026-03-30T01:31:00Z", false, "2026-03-30T23:00:00Z"}, // cutoff
	}
	for _, c := range cases {
		wait, why, ended := s.Gate(at(c.now))
		if ended || (wait == 0) != c.open {
			t.Errorf("%s: wait %s (%s), want open=%v", c.now, wait, why, c.open)
			continue
		}
		if !c.open {
			if got := at(c.now).Add(wait); !got.Equal(at(c.nextOpen)) {
				t.Errorf("%s: next open %s, want %s", c.now, got.UTC().Format(time.RFC3339), c.nextOpen)
			}
		}
	}
	end := &Schedule{StartAt: at("2026-12-01T02:00:00Z"), EndAt: at("2026-12-05T06:00:00Z")}
	if w, _, _ := end.Gate(at("2026-12-01T01:00:00Z")); w != time.Hour {
		t.Errorf("before start_at: wait %s", w)
	}
	if _, _, ended := end.Gate(at("2026-12-05T06:00:00Z")); !ended {
		t.Error("end_at did not end it")
	}
}

// TestStageJSON: -o json shows a stage's bake as the file writes it, and
// reads it back.
func TestStageJSON(t *testing.T) {
	in := []Stage{{Name: "canary", Size: 3, Bake: 15 * time.Minute, Promote: "manual"}, {Name: "rest", Size: 97}}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if want := `[{"name":"canary","size":3,"bake":"15m0s","promote":"manual"},{"name":"rest","size":97,"bake":"0s","promote":""}]`; string(b) != want {
		t.Fatalf("got %s\nwant %s", b, want)
	}
	var out []Stage
	if err := json.Unmarshal(b, &out); err != nil || !reflect.DeepEqual(out, in) {
		t.Fatalf("round trip: %+v %v", out, err)
	}
}
