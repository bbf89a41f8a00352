package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/testutil"
)

// TestWorkerJSONLogs runs `worker --log-format json` through a rollout in
// which one CVM fails at once (404) and one is retried, then fails (500):
// every line is a JSON object; each failure is one WARN and each retry one
// INFO, with rollout_id, cvm_id, http_status, request_id and attempt as
// fields of their own; the API key is nowhere in the logs.
func TestWorkerJSONLogs(t *testing.T) {
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 6, Seed: 4, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9})
	ids := b.Sim.IDs()
	b.Sim.FailPatch(ids[1], 404)
	b.Sim.FailPatch(ids[2], 500)
	file := testutil.WriteFile(t, fmt.Sprintf("name: logs\nselector: {all: true}\ntarget: {kms_urls: [%q]}\nretry: {max_attempts: 2, backoff: {base: 10ms, max: 10ms}}\n", newKMS))
	var stderr testutil.Buffer
	env := map[string]string{"PHALA_CLOUD_API_KEY": b.Key, "PHALA_CLOUD_API_PREFIX": b.SimURL, "REDIS_URL": b.RedisURL}
	e := &Env{Stdout: &bytes.Buffer{}, Stderr: &stderr, Stdin: strings.NewReader(""), Getenv: func(k string) string { return env[k] }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, e, []string{"worker", "--log-format", "json", "--concurrency", "4", "--shutdown-timeout", "5s"})
	}()
	out := mustRun(t, b, "apply", "-f", file, "--yes", "-o", "json")
	var a struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal([]byte(out), &a); err != nil || a.ID == "" {
		t.Fatalf("apply -o json: %v\n%s", err, out)
	}
	b.WaitState(t, a.ID, 30*time.Second, store.RolloutCompleted)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("worker: %v\n%s", err, stderr.String())
	}
	logs := stderr.String()
	if strings.Contains(logs, b.Key) || strings.Contains(logs, b.Key[5:]) {
		t.Fatalf("the API key is in the logs:\n%s", logs)
	}
	type entry map[string]any
	var failed, retried []entry
	sc := bufio.NewScanner(strings.NewReader(logs))
	for sc.Scan() {
		var l entry
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("a log line is not JSON: %v\n%s", err, sc.Text())
		}
		switch l["msg"] {
		case "cvm failed":
			failed = append(failed, l)
		case "cvm retry":
			retried = append(retried, l)
		}
	}
	field := func(l entry, k string) string { return fmt.Sprint(l[k]) }
	check := func(l entry, level, cvm string, status, attempt int) {
		t.Helper()
		if field(l, "level") != level || field(l, "rollout_id") != a.ID || field(l, "cvm_id") != cvm ||
			field(l, "http_status") != fmt.Sprint(status) || field(l, "attempt") != fmt.Sprint(attempt) ||
			!strings.HasPrefix(field(l, "request_id"), "req_") {
			t.Errorf("log line %v: want %s for %s, http_status %d, attempt %d, a request_id", l, level, cvm, status, attempt)
		}
	}
	if len(failed) != 2 || len(retried) != 1 {
		t.Fatalf("%d failures and %d retries logged, want 2 and 1:\n%s", len(failed), len(retried), logs)
	}
	byCVM := map[string]entry{}
	for _, l := range failed {
		byCVM[field(l, "cvm_id")] = l
	}
	check(byCVM[ids[1]], "WARN", ids[1], 404, 1)
	check(byCVM[ids[2]], "WARN", ids[2], 500, 2)
	check(retried[0], "INFO", ids[2], 500, 1)
}

// TestLogFormatBad: an unknown --log-format is one clear error before
// anything starts.
func TestLogFormatBad(t *testing.T) {
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 1, Seed: 1})
	for _, cmd := range []string{"worker", "sim", "demo", "dashboard"} {
		_, _, err := run(t, b, cmd, "--log-format", "yaml")
		if err == nil || !strings.Contains(err.Error(), "--log-format yaml: expected text or json") {
			t.Errorf("%s --log-format yaml: %v", cmd, err)
		}
	}
}
