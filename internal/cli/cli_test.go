package cli

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/phalafleet/rollout/internal/plan"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/testutil"
)

const (
	newKMS = "https://kms-new.phala.example:8000"
	newGW  = "https://gateway-new.phala.example:8000"
)

// run runs one rollout command in-process against b's simulator and Redis.
func run(t *testing.T, b *testutil.Bundle, args ...string) (string, string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	env := map[string]string{"PHALA_CLOUD_API_KEY": b.Key, "PHALA_CLOUD_API_PREFIX": b.SimURL, "REDIS_URL": b.RedisURL}
	e := &Env{Stdout: &out, Stderr: &errb, Stdin: strings.NewReader(""), Getenv: func(k string) string { return env[k] }}
	err := Run(context.Background(), e, args)
	return out.String(), errb.String(), err
}

func mustRun(t *testing.T, b *testutil.Bundle, args ...string) string {
	t.Helper()
	out, errOut, err := run(t, b, args...)
	if err != nil {
		t.Fatalf("rollout %s: %v\nstderr: %s", strings.Join(args, " "), err, errOut)
	}
	return out
}

// TestRolloutEndToEnd runs plan, apply, workers, status and report through
// the real commands, on miniredis or on $REDIS_URL.
func TestRolloutEndToEnd(t *testing.T) {
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 400, Seed: 7, AtTargetShare: 0.1,
		AtTargetKMS: []string{newKMS}, AtTargetGateway: []string{newGW}})
	ids := b.Sim.IDs()
	// Make sure the selection holds an unknown VMM and a pre-release of 0.5.7.
	var prod []string
	all := map[string]bool{}
	listed, err := b.API.ListCVMs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]string{}
	for _, c := range listed {
		names[c.ID] = c.Name
		all[c.ID] = true
		if strings.HasPrefix(c.Name, "prod-") {
			prod = append(prod, c.ID)
		}
	}
	if len(prod) < 20 || len(all) != len(ids) {
		t.Fatalf("fleet: %d prod CVMs of %d", len(prod), len(all))
	}
	b.Sim.SetVMMVersionOf(prod[0], nil)
	rc := "0.5.7-rc1"
	b.Sim.SetVMMVersionOf(prod[1], &rc)
	excluded := prod[2]
	file := testutil.WriteFile(t, fmt.Sprintf(`name: e2e
selector:
  names: ["prod-*"]
  exclude_ids: [%s]
target:
  kms_urls: [%q]
  gateway_urls: [%q]
`, excluded, newKMS, newGW))

	var p plan.Plan
	if err := json.Unmarshal([]byte(mustRun(t, b, "plan", "-f", file, "-o", "json")), &p); err != nil {
		t.Fatal(err)
	}
	action := map[string]plan.Item{}
	for _, it := range p.Items {
		if !strings.HasPrefix(names[it.CVMID], "prod-") || it.CVMID == excluded {
			t.Errorf("plan selected %s (%s)", it.CVMID, names[it.CVMID])
		}
		action[it.CVMID] = it
	}
	if len(action) != len(prod)-1 {
		t.Fatalf("plan has %d CVMs, want %d", len(action), len(prod)-1)
	}
	if it := action[prod[0]]; it.Action != plan.Skip || !strings.Contains(it.Reason, "unknown") {
		t.Errorf("unknown VMM: %+v", it)
	}
	if it := action[prod[1]]; it.Action != plan.Skip || !strings.Contains(it.Reason, "below 0.5.7") {
		t.Errorf("0.5.7-rc1: %+v", it)
	}
	if p.Counts[plan.Unchanged] == 0 || p.Counts[plan.Patch] == 0 || p.Counts[plan.Skip] < 2 {
		t.Fatalf("plan counts %v: want some of each action", p.Counts)
	}

	var a struct{ ID string }
	if err := json.Unmarshal([]byte(mustRun(t, b, "apply", "-f", file, "--yes", "-o", "json")), &a); err != nil {
		t.Fatal(err)
	}
	if a.ID != p.ID {
		t.Fatalf("apply id %q, plan id %q", a.ID, p.ID)
	}
	b.Workers(t, 2, 16)
	b.WaitState(t, a.ID, 30*time.Second, store.RolloutCompleted)

	stats := b.Sim.Stats()
	for _, id := range ids {
		kms, gw, _ := b.Sim.Config(id)
		it, selected := action[id]
		atTarget := len(kms) == 1 && kms[0] == newKMS && len(gw) == 1 && gw[0] == newGW
		switch {
		case selected && it.Action == plan.Patch:
			if !atTarget || stats.PatchesPerCVM[id] != 1 {
				t.Errorf("%s: patched %d times, at target %v", id, stats.PatchesPerCVM[id], atTarget)
			}
		case stats.PatchesPerCVM[id] != 0:
			t.Errorf("%s (selected %v, action %s) got %d PATCHes", id, selected, it.Action, stats.PatchesPerCVM[id])
		}
	}
	if int(stats.Patches) != p.Counts[plan.Patch] {
		t.Errorf("simulator saw %d PATCHes, plan had %d to patch", stats.Patches, p.Counts[plan.Patch])
	}

	var st Status
	if err := json.Unmarshal([]byte(mustRun(t, b, "status", a.ID, "-o", "json")), &st); err != nil {
		t.Fatal(err)
	}
	if st.Counts[store.Succeeded] != p.Counts[plan.Patch] || st.Counts[store.Unchanged] != p.Counts[plan.Unchanged] ||
		st.Counts[store.Skipped] != p.Counts[plan.Skip] || st.Done != len(p.Items) {
		t.Errorf("status counts %v (done %d), plan %v", st.Counts, st.Done, p.Counts)
	}

	// A re-run of apply continues the same rollout and queues nothing.
	var again struct {
		ID      string
		Created bool
		Queued  int
	}
	if err := json.Unmarshal([]byte(mustRun(t, b, "apply", "-f", file, "--yes", "-o", "json")), &again); err != nil {
		t.Fatal(err)
	}
	if again.ID != a.ID || again.Created || again.Queued != 0 {
		t.Errorf("second apply: %+v", again)
	}

	rows, err := csv.NewReader(strings.NewReader(mustRun(t, b, "report", a.ID, "-o", "csv"))).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != len(p.Items)+1 || rows[0][0] != "cvm_id" {
		t.Fatalf("report has %d rows, want %d plus a header", len(rows), len(p.Items))
	}
	for _, r := range rows[1:] {
		if it := action[r[0]]; it.Action == plan.Patch && (r[3] != "succeeded" || r[8] != newKMS || r[6] == "" || r[5] != "1") {
			t.Errorf("report row %v", r)
		}
	}
	if out := mustRun(t, b, "list"); !strings.Contains(out, a.ID) || !strings.Contains(out, "completed") {
		t.Errorf("list: %s", out)
	}
	assertKeyNowhere(t, b)
}

// assertKeyNowhere checks that the API key is in no Redis key or value.
func assertKeyNowhere(t *testing.T, b *testutil.Bundle) {
	t.Helper()
	ctx := context.Background()
	keys, err := b.RDB.Keys(ctx, "*").Result()
	if err != nil || len(keys) == 0 {
		t.Fatalf("keys: %v %v", len(keys), err)
	}
	for _, k := range keys {
		if strings.Contains(k, b.Key) {
			t.Fatalf("key %q holds the API key", k)
		}
		var val string
		switch b.RDB.Type(ctx, k).Val() {
		case "string":
			val = b.RDB.Get(ctx, k).Val()
		case "hash":
			val = fmt.Sprint(b.RDB.HGetAll(ctx, k).Val())
		case "list":
			val = fmt.Sprint(b.RDB.LRange(ctx, k, 0, -1).Val())
		case "set":
			val = fmt.Sprint(b.RDB.SMembers(ctx, k).Val())
		case "zset":
			val = fmt.Sprint(b.RDB.ZRange(ctx, k, 0, -1).Val())
		}
		if strings.Contains(val, b.Key) || strings.Contains(val, b.Key[5:]) {
			t.Fatalf("value of %q holds the API key", k)
		}
	}
}

// TestBadInputOneLine checks the user-facing error of common mistakes.
func TestBadInputOneLine(t *testing.T) {
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 5, Seed: 1})
	good := testutil.WriteFile(t, "name: x\nselector: {all: true}\ntarget: {kms_urls: [\"https://k:1\"]}\n")
	cases := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"no file", []string{"plan", "-f", "/nonexistent.yaml"}, nil, "/nonexistent.yaml: no such file or directory"},
		{"wrong key", []string{"plan", "-f", good}, map[string]string{"PHALA_CLOUD_API_KEY": "phak_wrong"}, "HTTP 401: Not authenticated"},
		{"no key", []string{"plan", "-f", good}, map[string]string{"PHALA_CLOUD_API_KEY": ""}, "PHALA_CLOUD_API_KEY is not set"},
		{"redis down", []string{"status", "x"}, map[string]string{"REDIS_URL": "redis://127.0.0.1:1/0"}, "is not answering"},
		{"unknown rollout", []string{"status", "nope"}, nil, "rollout not found: nope"},
		{"bad format", []string{"status", "x", "-o", "yaml"}, nil, "-o yaml: expected one of table, json"},
		{"unparseable redis url", []string{"list"}, map[string]string{"REDIS_URL": "redis://u:Pw99secret@[::1"}, "missing ']' in host"},
		{"no rollout id", []string{"status"}, nil, "which rollout? give its id"},
		{"extra argument", []string{"plan", "-f", good, "extra"}, nil, `unexpected argument "extra"`},
		{"unknown flag", []string{"report", "x", "--bogus"}, nil, "rollout report --help lists its flags"},
		{"bad state", []string{"report", "x", "--state", "bogus"}, nil, "--state bogus: expected one of pending"},
		{"negative last", []string{"events", "x", "--last", "-1"}, nil, "--last -1: must be 0"},
		{"worker concurrency", []string{"worker", "--concurrency", "0"}, nil, "--concurrency 0: must be at least 1"},
		{"worker wrong key", []string{"worker"}, map[string]string{"PHALA_CLOUD_API_KEY": "phak_wrong"}, "the API refused PHALA_CLOUD_API_KEY"},
		{"plan wrong key hint", []string{"plan", "-f", good}, map[string]string{"PHALA_CLOUD_API_KEY": "phak_wrong"}, "the API refused PHALA_CLOUD_API_KEY"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			env := map[string]string{"PHALA_CLOUD_API_KEY": b.Key, "PHALA_CLOUD_API_PREFIX": b.SimURL, "REDIS_URL": b.RedisURL}
			for k, v := range c.env {
				env[k] = v
			}
			e := &Env{Stdout: &out, Stderr: &errb, Getenv: func(k string) string { return env[k] }}
			err := Run(context.Background(), e, c.args)
			if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("got %v, want one line containing %q", err, c.want)
			}
			if strings.Contains(err.Error(), b.Key) || strings.Contains(out.String()+errb.String(), b.Key) {
				t.Fatal("the API key leaked into the output")
			}
			if strings.Contains(err.Error(), "Pw99secret") {
				t.Fatal("the Redis password leaked into the error")
			}
		})
	}
}

// TestOperatorCommands drives pause, resume, cancel, retry, promote,
// rollback and apply --plan-hash through the real commands.
func TestOperatorCommands(t *testing.T) {
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 30, Seed: 12, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9})
	file := testutil.WriteFile(t, fmt.Sprintf("name: ops\nselector: {all: true}\ntarget: {kms_urls: [%q]}\n"+
		"stages: [{name: canary, count: 3, promote: manual}, \"100%%\"]\nretry: {max_attempts: 2, backoff: {base: 1s, max: 1s}}\n", newKMS))
	var p plan.Plan
	if err := json.Unmarshal([]byte(mustRun(t, b, "plan", "-f", file, "-o", "json")), &p); err != nil {
		t.Fatal(err)
	}
	// The fleet changes after the plan was shown: apply --plan-hash refuses.
	b.Sim.SetConfig(p.Items[4].CVMID, []string{newKMS}, nil)
	if _, _, err := run(t, b, "apply", "-f", file, "--yes", "--plan-hash", p.Hash); err == nil || !strings.Contains(err.Error(), "the plan changed") {
		t.Fatalf("apply with a stale plan hash: %v", err)
	}
	if err := json.Unmarshal([]byte(mustRun(t, b, "plan", "-f", file, "-o", "json")), &p); err != nil {
		t.Fatal(err)
	}
	bad := p.Items[10].CVMID
	b.Sim.FailPatch(bad, 404)
	mustRun(t, b, "apply", "-f", file, "--yes", "--plan-hash", p.Hash)
	if out := mustRun(t, b, "pause", p.ID); !strings.Contains(out, "running -> paused") {
		t.Fatalf("pause: %s", out)
	}
	if out := mustRun(t, b, "pause", p.ID); !strings.Contains(out, "already paused") {
		t.Fatalf("second pause: %s", out)
	}
	b.Workers(t, 1, 4)
	time.Sleep(300 * time.Millisecond)
	if n := b.Sim.Stats().Patches; n != 0 {
		t.Fatalf("%d PATCHes while paused", n)
	}
	mustRun(t, b, "resume", p.ID)
	waitReason(t, b, p.ID, "waiting for `rollout promote")
	if r := b.Records(t, p.ID); len(r) != len(p.Items) {
		t.Fatal("records")
	}
	mustRun(t, b, "promote", p.ID)
	r := b.WaitState(t, p.ID, 30*time.Second, store.RolloutCompleted)
	if r.Counts[store.Failed] != 1 {
		t.Fatalf("counts %v", r.Counts)
	}
	if out := mustRun(t, b, "status", p.ID); !strings.Contains(out, bad+": ") {
		t.Fatalf("status does not show the failure of %s:\n%s", bad, out)
	}
	if out := mustRun(t, b, "report", p.ID, "--state", "failed", "-o", "csv"); strings.Count(out, "\n") != 2 {
		t.Fatalf("report --state failed:\n%s", out)
	}
	b.Sim.FailPatch(bad, 0)
	if out := mustRun(t, b, "retry", p.ID, "--failed"); !strings.Contains(out, "1 failed CVMs queued again") {
		t.Fatalf("retry: %s", out)
	}
	b.WaitState(t, p.ID, 30*time.Second, store.RolloutCompleted)
	waitCount(t, b, p.ID, store.Succeeded, len(p.Items)-1) // one was already at target

	// Rollback: someone changes one CVM by hand; rollback leaves it alone
	// and restores every other CVM's own before-image.
	manual := p.Items[20].CVMID
	b.Sim.SetConfig(manual, []string{"https://kms-manual.example:8000"}, nil)
	before := map[string][]string{}
	for id, rec := range b.Records(t, p.ID) {
		before[id] = rec.PrevKMS
	}
	out := mustRun(t, b, "rollback", p.ID, "--yes")
	if !strings.Contains(out, "changed since the rollout") || !strings.Contains(out, "each CVM's own before-image") ||
		!strings.Contains(out, "kms ["+newKMS+"] -> [https://kms-old.") {
		t.Fatalf("rollback plan does not show the skip and each CVM's own target:\n%s", out)
	}
	// It goes through the same stages: the canary waits for promote again.
	waitReason(t, b, p.ID+"-rollback", "waiting for `rollout promote")
	mustRun(t, b, "promote", p.ID+"-rollback")
	b.WaitState(t, p.ID+"-rollback", 30*time.Second, store.RolloutCompleted)
	for _, it := range p.Items {
		kms, _, _ := b.Sim.Config(it.CVMID)
		switch {
		case it.CVMID == manual:
			if kms[0] != "https://kms-manual.example:8000" {
				t.Errorf("rollback overwrote a manual change on %s", manual)
			}
		case it.Action == plan.Patch:
			if strings.Join(kms, ",") != strings.Join(before[it.CVMID], ",") {
				t.Errorf("%s: %v after rollback, before-image %v", it.CVMID, kms, before[it.CVMID])
			}
		}
	}
	// Cancel of a finished rollout is refused with one line.
	if _, _, err := run(t, b, "cancel", p.ID); err == nil || !strings.Contains(err.Error(), "is completed") {
		t.Fatalf("cancel of a completed rollout: %v", err)
	}
	// The audit trail has every step above, in order, each with who did it.
	var evs []store.Event
	if err := json.Unmarshal([]byte(mustRun(t, b, "events", p.ID, "-o", "json")), &evs); err != nil {
		t.Fatal(err)
	}
	want := []string{"applied (running): 29 to patch", "pause (running -> paused)", "resume (paused -> running)",
		"stage 1 promoted", "stage 2 (", "completed", "retry --failed: 1 failed CVMs to queue again", "completed", "rollback recorded as " + p.ID + "-rollback"}
	i := 0
	for _, ev := range evs {
		if i < len(want) && strings.HasPrefix(ev.What, want[i]) {
			if ev.By == "" || ev.At.IsZero() {
				t.Errorf("event without who or when: %+v", ev)
			}
			i++
		}
	}
	if i < len(want) {
		t.Fatalf("events lack %q (in order); got %+v", want[i], evs)
	}
	if out := mustRun(t, b, "events", p.ID, "--last", "1"); strings.Count(out, "\n") != 1 || !strings.Contains(out, "rollback recorded") {
		t.Fatalf("events --last 1:\n%s", out)
	}
	if out := mustRun(t, b, "status", p.ID); !strings.Contains(out, "Latest events") || !strings.Contains(out, "rollback recorded") {
		t.Fatalf("status does not show the latest events:\n%s", out)
	}
	if _, _, err := run(t, b, "events", "no-such-rollout"); err == nil {
		t.Fatal("events of an unknown rollout succeeded")
	}
}

func waitCount(t *testing.T, b *testutil.Bundle, id string, state store.CVMState, want int) {
	t.Helper()
	for end := time.Now().Add(20 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if r, err := b.Store.Get(context.Background(), id); err == nil && r.Counts[state] == want {
			return
		}
	}
	r, _ := b.Store.Get(context.Background(), id)
	t.Fatalf("%s: want %s=%d, counts %v", id, state, want, r.Counts)
}

func waitReason(t *testing.T, b *testutil.Bundle, id, reason string) {
	t.Helper()
	for end := time.Now().Add(20 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if r, err := b.Store.Get(context.Background(), id); err == nil && strings.Contains(r.Reason, reason) {
			return
		}
	}
	r, _ := b.Store.Get(context.Background(), id)
	t.Fatalf("%s: reason never had %q: %+v", id, reason, r)
}

// TestApplyWaitExitStatus: apply --wait fails (one line) when CVMs failed,
// and `workers` shows the running worker.
func TestApplyWaitExitStatus(t *testing.T) {
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 8, Seed: 5, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9})
	file := testutil.WriteFile(t, fmt.Sprintf("name: wait\nselector: {all: true}\ntarget: {kms_urls: [%q]}\n", newKMS))
	b.Sim.FailPatch(b.Sim.IDs()[3], 422)
	b.Workers(t, 1, 50) // two asynq servers (worker.fetchers), listed as one worker
	_, _, err := run(t, b, "apply", "-f", file, "--yes", "--wait")
	if err == nil || !strings.Contains(err.Error(), "completed with 1 failed CVMs") || ExitCode(context.Background(), err) != ExitFailed {
		t.Fatalf("apply --wait: %v (exit status %d, want %d)", err, ExitCode(context.Background(), err), ExitFailed)
	}
	out := mustRun(t, b, "workers")
	if !strings.Contains(out, "CONCURRENCY") {
		t.Fatalf("workers:\n%s", out)
	}
	var w struct {
		Workers []struct {
			Concurrency int `json:"concurrency"`
		} `json:"workers"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, b, "workers", "-o", "json")), &w); err != nil || len(w.Workers) != 1 || w.Workers[0].Concurrency != 50 {
		t.Fatalf("workers -o json: %+v %v", w, err)
	}
}

// TestHelp: every command answers -h and --help with its usage and flags,
// on stdout, exit status 0.
func TestHelp(t *testing.T) {
	for _, c := range commands() {
		for _, flag := range []string{"-h", "--help"} {
			var out, errb bytes.Buffer
			e := &Env{Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }}
			if err := Run(context.Background(), e, []string{c.name, flag}); err != nil {
				t.Fatalf("%s %s: %v", c.name, flag, err)
			}
			if !strings.HasPrefix(out.String(), "Usage: rollout "+c.name) || !strings.Contains(out.String(), "Flags:") {
				t.Fatalf("%s %s printed:\n%s", c.name, flag, out.String())
			}
		}
	}
}

// TestReapplyEndedRollout: applying the file of a cancelled rollout is
// refused with one line; of a completed one whose CVMs drifted, it starts
// a new run with only the drifted CVMs; with nothing to patch it says so.
func TestReapplyEndedRollout(t *testing.T) {
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 12, Seed: 8, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9})
	file := testutil.WriteFile(t, fmt.Sprintf("name: again\nselector: {all: true}\ntarget: {kms_urls: [%q]}\n", newKMS))
	b.Workers(t, 1, 4)
	mustRun(t, b, "apply", "-f", file, "--yes", "--wait")
	var p plan.Plan
	if err := json.Unmarshal([]byte(mustRun(t, b, "plan", "-f", file, "-o", "json")), &p); err != nil {
		t.Fatal(err)
	}
	if out := mustRun(t, b, "apply", "-f", file, "--yes"); !strings.Contains(out, "already completed, and the plan finds nothing to patch") {
		t.Fatalf("re-apply with nothing to do:\n%s", out)
	}
	drifted := []string{p.Items[2].CVMID, p.Items[7].CVMID}
	for _, id := range drifted {
		b.Sim.SetConfig(id, []string{"https://kms-drift.example:8000"}, nil)
	}
	out := mustRun(t, b, "apply", "-f", file, "--yes", "--wait")
	if !strings.Contains(out, "this is a new run: "+p.ID+"-run2") {
		t.Fatalf("re-apply after drift:\n%s", out)
	}
	r := b.WaitState(t, p.ID+"-run2", 30*time.Second, store.RolloutCompleted)
	if r.Counts[store.Succeeded] != len(drifted) || r.Counts[store.Unchanged] != len(p.Items)-len(drifted) {
		t.Fatalf("run 2 counts %v, want %d succeeded", r.Counts, len(drifted))
	}
	for _, id := range drifted {
		if kms, _, _ := b.Sim.Config(id); kms[0] != newKMS {
			t.Errorf("%s not back at the target: %v", id, kms)
		}
	}
	var evs []store.Event
	if err := json.Unmarshal([]byte(mustRun(t, b, "events", p.ID, "-o", "json")), &evs); err != nil || !strings.Contains(evs[len(evs)-1].What, "run 2 started as "+p.ID+"-run2") {
		t.Fatalf("events of the base: %+v %v", evs, err)
	}

	// A cancelled rollout does not start again.
	cfile := testutil.WriteFile(t, "name: stopped\nselector: {all: true}\ntarget: {kms_urls: [\"https://kms-stopped.example:8000\"]}\nschedule: {start_at: 2099-01-01T00:00:00Z}\n")
	mustRun(t, b, "apply", "-f", cfile, "--yes")
	var c plan.Plan
	if err := json.Unmarshal([]byte(mustRun(t, b, "plan", "-f", cfile, "-o", "json")), &c); err != nil {
		t.Fatal(err)
	}
	mustRun(t, b, "cancel", c.ID)
	if _, _, err := run(t, b, "apply", "-f", cfile, "--yes"); err == nil || !strings.Contains(err.Error(), "a cancelled rollout does not start again") {
		t.Fatalf("apply of a cancelled rollout: %v", err)
	}
}
