package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/testutil"
)

// TestRetryIDsHistoryAndNames: report --state failed -o ids feeds retry
// --ids, which retries exactly those (and refuses, changing nothing, an id
// that is not failed); a rollout's name stands for its latest run in
// status, report and events; history lists the family newest first; a
// name two rollouts have is refused with both ids.
func TestRetryIDsHistoryAndNames(t *testing.T) {
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 12, Seed: 21, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9})
	file := testutil.WriteFile(t, fmt.Sprintf("name: fam\nselector: {all: true}\ntarget: {kms_urls: [%q]}\n", newKMS))
	id := planID(t, b, file)
	ids := b.Sim.IDs()
	bad := []string{ids[1], ids[5], ids[9]}
	for _, c := range bad {
		b.Sim.FailPatch(c, 403)
	}
	mustRun(t, b, "apply", "-f", file, "--yes")
	stop := b.Workers(t, 1, 8)
	b.WaitState(t, id, 30*time.Second, store.RolloutCompleted)
	stop()

	// By name: the failed ones' bare ids.
	got := strings.Fields(mustRun(t, b, "report", "fam", "--state", "failed", "-o", "ids"))
	slices.Sort(got)
	want := slices.Clone(bad)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("report --state failed -o ids: %v, want %v", got, want)
	}
	dir := t.TempDir()
	write := func(name string, lines ...string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// Not failed, or not in the rollout: refused, naming it; nothing changes.
	for _, c := range []struct{ file, want string }{
		{write("ok.txt", bad[0], ids[0]), "CVM " + ids[0] + " is succeeded in rollout " + id + ", not failed; nothing was retried"},
		{write("stranger.txt", "# from yesterday", bad[0], "cvm-nope"), `CVM "cvm-nope" is not in rollout ` + id},
		{write("empty.txt", "# nothing"), "holds no CVM id"},
	} {
		if _, _, err := run(t, b, "retry", id, "--ids", c.file); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("retry --ids %s: %v, want %q", c.file, err, c.want)
		}
	}
	if r, _ := b.Store.Get(t.Context(), id); r.Counts[store.Failed] != 3 || r.State != store.RolloutCompleted {
		t.Fatalf("a refused retry --ids changed the rollout: %s %v", r.State, r.Counts)
	}
	if _, _, err := run(t, b, "retry", id, "--ids", "x", "--failed"); ExitCode(t.Context(), err) != ExitUsage {
		t.Fatalf("--ids with --failed: %v", err)
	}
	// Two of the three, from stdin: exactly those are retried.
	b.Sim.FailPatch(bad[0], 0)
	b.Sim.FailPatch(bad[1], 0)
	out, _, err := runCtx(t.Context(), b, strings.NewReader(bad[0]+"\n\n"+bad[1]+"\n"+bad[0]+"\n"), "retry", id, "--ids", "-")
	if err != nil || !strings.Contains(out, "2 failed CVMs queued again") {
		t.Fatalf("retry --ids -: %q %v", out, err)
	}
	stop = b.Workers(t, 1, 8)
	b.WaitState(t, id, 30*time.Second, store.RolloutCompleted)
	waitCount(t, b, id, store.Failed, 1)
	stop()
	recs := b.Records(t, id)
	if recs[bad[0]].State != store.Succeeded || recs[bad[1]].State != store.Succeeded || recs[bad[2]].State != store.Failed {
		t.Fatalf("after retry --ids: %s %s %s", recs[bad[0]].State, recs[bad[1]].State, recs[bad[2]].State)
	}
	if out := mustRun(t, b, "events", "fam"); !strings.Contains(out, "retry --ids: 2 failed CVMs to queue again") {
		t.Fatalf("events fam:\n%s", out)
	}

	// A second run: the name now means it.
	b.Sim.SetConfig(ids[0], []string{"https://kms-drift.example:8000"}, nil)
	mustRun(t, b, "apply", "-f", file, "--yes")
	stop = b.Workers(t, 1, 8)
	b.WaitState(t, id+"-run2", 30*time.Second, store.RolloutCompleted)
	stop()
	var st Status
	if err := json.Unmarshal([]byte(mustRun(t, b, "status", "fam", "-o", "json")), &st); err != nil || st.ID != id+"-run2" {
		t.Fatalf("status fam: %s %v", st.ID, err)
	}
	if out := mustRun(t, b, "report", "fam", "-o", "ids"); strings.Count(out, "\n") != len(ids) {
		t.Fatalf("report fam -o ids (run 2 holds every CVM):\n%s", out)
	}
	out = mustRun(t, b, "rollback", id+"-run2", "--yes")
	var h History
	if err := json.Unmarshal([]byte(mustRun(t, b, "history", "fam", "-o", "json")), &h); err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, r := range h.Rollouts {
		order = append(order, r.ID)
	}
	if h.Root != id || h.Name != "fam" || !slices.Equal(order, []string{id + "-run2-rollback", id + "-run2", id}) {
		t.Fatalf("history fam: root %s name %s, %v", h.Root, h.Name, order)
	}
	// A run's id shows the same family; the table says what each is.
	table := mustRun(t, b, "history", id+"-run2")
	for _, w := range []string{"rollback of " + id + "-run2", "run of " + id, "PATCHED", "completed", "1/1"} {
		if !strings.Contains(table, w) {
			t.Fatalf("history table lacks %q:\n%s", w, table)
		}
	}
	// The rollback is not "the latest run".
	if err := json.Unmarshal([]byte(mustRun(t, b, "status", "fam", "-o", "json")), &st); err != nil || st.ID != id+"-run2" {
		t.Fatalf("status fam after a rollback: %s %v", st.ID, err)
	}

	// The file edited: a second rollout named fam. The name is ambiguous.
	other := testutil.WriteFile(t, fmt.Sprintf("name: fam\nselector: {ids: [%s]}\ntarget: {gateway_urls: [%q]}\nschedule: {start_at: 2099-01-01T00:00:00Z}\n", bad[2], newGW))
	otherID := planID(t, b, other)
	mustRun(t, b, "apply", "-f", other, "--yes", "--allow-overlap")
	for _, cmd := range []string{"status", "report", "events", "history"} {
		_, _, err := run(t, b, cmd, "fam")
		if err == nil || !strings.Contains(err.Error(), `2 rollouts are named "fam"`) || !strings.Contains(err.Error(), id) || !strings.Contains(err.Error(), otherID) {
			t.Fatalf("%s of an ambiguous name: %v", cmd, err)
		}
	}
	if _, _, err := run(t, b, "history", "nobody"); err == nil || !strings.Contains(err.Error(), "rollout not found: nobody") {
		t.Fatalf("history of an unknown name: %v", err)
	}
}
