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
		})
	}
}
