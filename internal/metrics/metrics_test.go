package metrics_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/phalafleet/rollout/internal/metrics"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/testutil"
	"github.com/phalafleet/rollout/internal/worker"
)

// TestWorkerMetrics runs a worker with --metrics-addr through a rollout and
// reads what a Prometheus scrape would.
func TestWorkerMetrics(t *testing.T) {
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 20, Seed: 3, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	p := b.Apply(t, "name: m\nselector: {all: true}\ntarget: {kms_urls: [\"https://k.example:1\"]}\n")
	// Before any worker: the dashboard's view of the queued rollout.
	before := httptest.NewServer(metrics.New(b.Store).Handler(func() error { return nil }))
	defer before.Close()
	body := scrape(t, before.URL+"/metrics")
	for _, want := range []string{
		`rollout_queue_tasks{state="pending"} 20`,
		`rollout_queue_tasks{state="active"} 0`,
		`rollout_cvms{rollout="` + p.ID + `",state="pending"} 20`,
		`rollout_state{rollout="` + p.ID + `",state="running"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics before the workers lack %s", want)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		worker.Run(ctx, b.RDB, worker.Config{Concurrency: 4, API: b.API, MetricsAddr: addr, ControllerInterval: 50 * time.Millisecond})
	}()
	defer func() { cancel(); <-done }()
	b.WaitState(t, p.ID, 30*time.Second, store.RolloutCompleted)
	body = scrape(t, "http://"+addr+"/metrics")
	for _, want := range []string{
		`rollout_cvm_outcomes_total{rollout="` + p.ID + `",state="succeeded"} 20`,
		`rollout_api_requests_total{code="200",op="patch_network_config"} 20`,
		`rollout_api_request_duration_seconds_count{op="get_network_config"} 20`,
		`rollout_queue_tasks{state="pending"} 0`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if got := scrape(t, "http://"+addr+"/healthz"); got != "ok\n" {
		t.Errorf("healthz %q", got)
	}
}

func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
