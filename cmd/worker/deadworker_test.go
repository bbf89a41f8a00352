package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/phalafleet/rollout/internal/cli"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/testutil"
)

// deadFile caps the rollout at 4 CVMs in flight; a try's deadline of 1m
// leases each slot for 2m (deadline+1m).
const deadFile = `name: deadworker
selector: {all: true}
target: {kms_urls: ["https://kms-new.example:8000"], gateway_urls: ["https://gw-new.example:8000"]}
rate: {max_in_flight: 4}
retry: {max_attempts: 4, deadline: 1m, backoff: {base: 1s, max: 2s}}
`

// TestKilledWorkerFreesItsSlots (issue 8): worker A holds every in-flight
// slot when it is killed with SIGKILL; worker B, alive, must get them back
// within seconds of A's heartbeat lapsing, not when their leases end (2m
// here, 6m with the default deadline). Meanwhile status names the dead
// worker. The rollout then completes with every CVM at the target, patched
// exactly once (A's CVMs come back through asynq's lease recovery).
func TestKilledWorkerFreesItsSlots(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for asynq's lease recovery (about 90s)")
	}
	bin := buildWorker(t)
	b := setupWaiting(t, sim.FleetOptions{CVMs: 30, Seed: 21, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9})
	// Each CVM's try is two calls (GET config, PATCH) of 1.5s: slots are
	// held for about 3s.
	b.Sim.SetFaults(sim.Faults{Latency: 1500 * time.Millisecond})
	p := b.Apply(t, deadFile)
	host, _ := os.Hostname()

	a := startWorker(t, bin, b)
	aName := fmt.Sprintf("%s/%d", host, a.Process.Pid)
	waitCounts(t, b, p.ID, time.Minute, func(r *store.Rollout) bool { return r.Counts[store.Running] == 4 })
	// B starts while A holds all 4 slots, and A dies as soon as B is up
	// (asynq lists its servers), well before A's CVMs are done.
	bw := startWorker(t, bin, b)
	waitServer(t, b, bw.Process.Pid)
	before := get(t, b, p.ID)
	for id, rec := range b.Records(t, p.ID) {
		if rec.State == store.Running && rec.Worker != aName {
			t.Fatalf("setup: %s is running on %s, not on %s: B got a slot before A died", id, rec.Worker, aName)
		}
	}
	if err := a.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	a.Wait()
	killed := time.Now()
	doneAtKill := doneCount(before)

	// Progress: a CVM finishes that had not, while status is watched for
	// the dead worker's line.
	want := "CVMs held by dead worker " + aName
	var sawLine, sawJSON string
	look := func() { // status, table and JSON, until each has shown the dead worker
		if sawLine == "" {
			sawLine = statusLine(t, b, p.ID, want)
		}
		if sawJSON == "" {
			sawJSON = statusDeadJSON(t, b, p.ID, aName)
		}
	}
	var progress time.Duration
	for progress == 0 {
		if time.Since(killed) > 3*time.Minute {
			t.Fatalf("no CVM finished within 3m of the kill (done %d)", doneAtKill)
		}
		if r := get(t, b, p.ID); doneCount(r) > doneAtKill {
			progress = time.Since(killed)
			break
		}
		look()
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("time to progress after the kill: %s (slots leased for 2m)", progress.Round(100*time.Millisecond))
	if progress > 30*time.Second {
		t.Errorf("the rollout moved again %s after the kill; want within 30s", progress.Round(time.Second))
	}
	// The line lasts until asynq hands A's tasks out again.
	for sawLine == "" || sawJSON == "" {
		if r := get(t, b, p.ID); r.State == store.RolloutCompleted || time.Since(killed) > 4*time.Minute {
			break
		}
		look()
		time.Sleep(200 * time.Millisecond)
	}
	if sawLine == "" || sawJSON == "" {
		t.Errorf("status never showed %q (table %q, json %q)", want, sawLine, sawJSON)
	} else {
		t.Logf("status said: %s; json: %s", sawLine, sawJSON)
	}

	r := waitCounts(t, b, p.ID, 4*time.Minute, func(r *store.Rollout) bool { return r.State == store.RolloutCompleted })
	if r.Counts[store.Succeeded] != len(p.Items) {
		t.Fatalf("counts %v, want all %d succeeded", r.Counts, len(p.Items))
	}
	stats := b.Sim.Stats()
	for id := range b.Records(t, p.ID) {
		if n := stats.PatchesPerCVM[id]; n != 1 {
			t.Errorf("%s: %d accepted PATCHes, want 1", id, n)
		}
		if kms, gw, _ := b.Sim.Config(id); len(kms) != 1 || kms[0] != "https://kms-new.example:8000" || len(gw) != 1 || gw[0] != "https://gw-new.example:8000" {
			t.Errorf("%s: config %v %v, not the target", id, kms, gw)
		}
	}
	if line := statusLine(t, b, p.ID, "dead worker"); line != "" {
		t.Errorf("status still shows %q after the rollout completed", line)
	}
}

func doneCount(r *store.Rollout) int {
	n := 0
	for st, c := range r.Counts {
		if st.Terminal() {
			n += c
		}
	}
	return n
}

// waitServer waits until asynq lists a server of the worker process pid.
func waitServer(t *testing.T, b *testutil.Bundle, pid int) {
	t.Helper()
	insp := asynq.NewInspectorFromRedisClient(b.RDB)
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		servers, _ := insp.Servers()
		for _, s := range servers {
			if s.PID == pid {
				return
			}
		}
	}
	t.Fatalf("worker %d did not start", pid)
}

// status runs `rollout status` with args.
func status(t *testing.T, b *testutil.Bundle, args ...string) string {
	t.Helper()
	var out, errb bytes.Buffer
	env := &cli.Env{Stdout: &out, Stderr: &errb, Stdin: strings.NewReader(""), Getenv: func(string) string { return "" }}
	if err := cli.Run(context.Background(), env, append([]string{"status", "--redis", b.RedisURL}, args...)); err != nil {
		t.Fatalf("status: %v\n%s", err, errb.String())
	}
	return out.String()
}

// statusLine is status's line that contains want, or "".
func statusLine(t *testing.T, b *testutil.Bundle, id, want string) string {
	t.Helper()
	for line := range strings.Lines(status(t, b, id)) {
		if strings.Contains(line, want) {
			return strings.TrimSpace(line)
		}
	}
	return ""
}

// statusDeadJSON is status -o json's dead_worker_slots entry for worker,
// or "".
func statusDeadJSON(t *testing.T, b *testutil.Bundle, id, worker string) string {
	t.Helper()
	var v struct {
		Dead []json.RawMessage `json:"dead_worker_slots"`
	}
	if err := json.Unmarshal([]byte(status(t, b, id, "-o", "json")), &v); err != nil {
		t.Fatal(err)
	}
	for _, d := range v.Dead {
		var e struct {
			Worker string `json:"worker"`
			Slots  int    `json:"slots"`
		}
		if json.Unmarshal(d, &e) == nil && e.Worker == worker && e.Slots > 0 {
			return string(d)
		}
	}
	return ""
}
