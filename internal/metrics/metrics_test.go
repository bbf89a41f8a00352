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
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
)

// leaderOnly are the gauges read from Redis, which only the controller-lock
// holder exports.
var leaderOnly = []string{"rollout_workers_alive", "rollout_queue_tasks", "rollout_queue_latency_seconds", "rollout_cvms",
	"rollout_state", "rollout_stage", "rollout_stages", "rollout_stage_cvms", "rollout_stage_waiting", "rollout_budget_left",
	"rollout_budget_tripped", "rollout_rate_limit_per_second", "rollout_rate_adaptive_per_second", "rollout_in_flight",
	"rollout_in_flight_limit"}

// TestWorkerMetrics runs a worker with --http-addr through a rollout and
// reads what a Prometheus scrape would, and its health endpoints.
func TestWorkerMetrics(t *testing.T) {
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 20, Seed: 3, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9})
	addr := freeAddr(t)
	p := b.Apply(t, "name: m\nselector: {all: true}\ntarget: {kms_urls: [\"https://k.example:1\"]}\n")
	// Before any worker: the dashboard's view of the queued rollout, from
	// a process that holds the controller lock.
	lead(t, b.Store, "before")
	before := httptest.NewServer(metrics.New(metrics.Options{Store: b.Store, Owner: "before"}).Handler(nil))
	defer before.Close()
	body := scrape(t, before.URL+"/metrics")
	for _, want := range []string{
		`rollout_queue_tasks{state="pending"} 20`,
		`rollout_queue_tasks{state="active"} 0`,
		`rollout_cvms{rollout="` + p.ID + `",state="pending"} 20`,
		`rollout_state{rollout="` + p.ID + `",state="running"} 1`,
		`rollout_in_flight{rollout="` + p.ID + `"} 0`,
		`rollout_redis_up 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics before the workers lack %s", want)
		}
	}
	if err := b.Store.Unlead(context.Background(), "before"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		worker.Run(ctx, b.RDB, worker.Config{Concurrency: 4, API: b.API, HTTPAddr: addr, ControllerInterval: 50 * time.Millisecond,
			Root: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "root "+r.URL.Path) })})
	}()
	defer func() { cancel(); <-done }()
	b.WaitState(t, p.ID, 30*time.Second, store.RolloutCompleted)
	waitActive(t, b.Store, p.ID, false)
	body = scrape(t, "http://"+addr+"/metrics")
	for _, want := range []string{
		`rollout_cvm_outcomes_total{rollout="` + p.ID + `",state="succeeded"} 20`,
		`rollout_api_requests_total{code="200",op="patch_network_config"} 20`,
		`rollout_api_request_duration_seconds_count{op="get_network_config"} 20`,
		`rollout_queue_tasks{state="pending"} 0`,
		`rollout_workers_alive 1`,
		`rollout_build_info{commit=`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	// The rollout ended: no gauge of it is left (its counters stay for
	// metrics.DefaultGrace).
	for _, l := range strings.Split(body, "\n") {
		if strings.Contains(l, `rollout="`+p.ID+`"`) && !strings.HasPrefix(l, "rollout_cvm_outcomes_total") {
			t.Errorf("a series of the completed rollout is left: %s", l)
		}
	}
	for path, want := range map[string]string{"/healthz": "ok\n", "/readyz": "ok\n", "/some/page": "root /some/page"} {
		if got, code := get(t, "http://"+addr+path); got != want || code != 200 {
			t.Errorf("%s: %d %q, want %q", path, code, got, want)
		}
	}
	problems, err := promlint.NewWithMetricFamilies(gather(t, metrics.New(metrics.Options{Store: b.Store}))).Lint()
	if err != nil || len(problems) > 0 {
		t.Errorf("promlint: %v %v", problems, err)
	}
}

// TestReadyzRedisDown: /readyz answers 503 and rollout_redis_up 0 when
// Redis does not answer, while /healthz still answers 200.
func TestReadyzRedisDown(t *testing.T) {
	rdb, _ := testutil.Redis(t)
	st := store.New(rdb)
	m := metrics.New(metrics.Options{Store: st, Owner: "w"})
	srv := httptest.NewServer(m.Handler(nil))
	defer srv.Close()
	if _, code := get(t, srv.URL+"/readyz"); code != 200 {
		t.Fatalf("readyz with Redis up: %d", code)
	}
	rdb.Close()
	if body, code := get(t, srv.URL+"/readyz"); code != http.StatusServiceUnavailable || !strings.HasPrefix(body, "redis: ") {
		t.Errorf("readyz with Redis closed: %d %q", code, body)
	}
	if _, code := get(t, srv.URL+"/healthz"); code != 200 {
		t.Errorf("healthz with Redis closed: %d", code)
	}
	if body := scrape(t, srv.URL+"/metrics"); !strings.Contains(body, "\nrollout_redis_up 0\n") {
		t.Errorf("rollout_redis_up is not 0 with Redis closed:\n%s", grep(body, "rollout_redis_up"))
	}
}

// TestRedisGaugesFromTheLockHolderOnly scrapes two workers' registries on
// one Redis: only the one holding the controller lock exports the gauges
// read from Redis, so a sum over workers counts each CVM once; both
// export their own series. When the lock moves, so do the gauges.
func TestRedisGaugesFromTheLockHolderOnly(t *testing.T) {
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 6, Seed: 5, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9})
	p := b.Apply(t, "name: two\nselector: {all: true}\ntarget: {kms_urls: [\"https://k.example:1\"]}\nrate: {per_second: 7, max_in_flight: 3}\nfailure_budget: {max_failed: 2}\n")
	a := metrics.New(metrics.Options{Store: b.Store, Owner: "worker-a"})
	c := metrics.New(metrics.Options{Store: b.Store, Owner: "worker-c"})
	check := func(leader, other *metrics.Metrics) {
		t.Helper()
		lf, of := families(gather(t, leader)), families(gather(t, other))
		for _, name := range leaderOnly {
			if _, ok := lf[name]; !ok {
				t.Errorf("the lock holder does not export %s", name)
			}
			if _, ok := of[name]; ok {
				t.Errorf("a worker without the lock exports %s", name)
			}
		}
		for _, name := range []string{"rollout_redis_up", "rollout_build_info"} {
			if _, ok := lf[name]; !ok {
				t.Errorf("the lock holder lacks %s", name)
			}
			if _, ok := of[name]; !ok {
				t.Errorf("the other worker lacks %s", name)
			}
		}
		// What a sum over every worker's scrape says.
		sum := 0.0
		for _, fs := range []map[string][]sample{lf, of} {
			for _, s := range fs["rollout_cvms"] {
				sum += s.v
			}
		}
		if sum != 6 {
			t.Errorf("sum(rollout_cvms) over both workers = %v, want the rollout's 6 CVMs", sum)
		}
		want := map[string]float64{"rollout_rate_limit_per_second": 7, "rollout_rate_adaptive_per_second": 7,
			"rollout_in_flight_limit": 3, "rollout_budget_left": 2, "rollout_budget_tripped": 0, "rollout_stage": 0, "rollout_stages": 1}
		for name, v := range want {
			if s := lf[name]; len(s) != 1 || s[0].v != v || s[0].labels["rollout"] != p.ID {
				t.Errorf("%s = %+v, want %v for %s", name, s, v, p.ID)
			}
		}
	}
	lead(t, b.Store, "worker-a")
	check(a, c)
	if err := b.Store.Unlead(context.Background(), "worker-a"); err != nil {
		t.Fatal(err)
	}
	lead(t, b.Store, "worker-c")
	check(c, a)
}

// TestCountersOfEndedRolloutsAreDropped: a worker's per-rollout counters
// go once the rollout has been inactive for the grace period, so a
// long-lived worker's series stay bounded; an active rollout's stay.
func TestCountersOfEndedRolloutsAreDropped(t *testing.T) {
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 3, Seed: 5, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9})
	p := b.Apply(t, "name: live\nselector: {all: true}\ntarget: {kms_urls: [\"https://k.example:1\"]}\n")
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	m := metrics.New(metrics.Options{Store: b.Store, Owner: "w", Grace: 10 * time.Minute, Now: func() time.Time { return now }})
	m.Outcome("ended-rollout", "succeeded")
	m.Snoozed("ended-rollout")
	m.Outcome(p.ID, "succeeded")
	ctx := context.Background()
	has := func(id string) bool {
		for _, s := range families(gather(t, m))["rollout_cvm_outcomes_total"] {
			if s.labels["rollout"] == id {
				return true
			}
		}
		return false
	}
	now = now.Add(9 * time.Minute)
	if err := m.Prune(ctx); err != nil {
		t.Fatal(err)
	}
	if !has("ended-rollout") || !has(p.ID) {
		t.Fatal("counters dropped before the grace period")
	}
	now = now.Add(2 * time.Minute)
	if err := m.Prune(ctx); err != nil {
		t.Fatal(err)
	}
	if has("ended-rollout") {
		t.Error("the ended rollout's outcomes are still exported after the grace period")
	}
	if s := families(gather(t, m))["rollout_cvm_snoozed_total"]; len(s) > 0 {
		t.Errorf("the ended rollout's snoozes are still exported: %+v", s)
	}
	if !has(p.ID) {
		t.Error("the active rollout's outcomes were dropped")
	}
}

func lead(t *testing.T, st *store.Store, owner string) {
	t.Helper()
	if ok, err := st.Lead(context.Background(), owner, time.Minute); err != nil || !ok {
		t.Fatalf("taking the controller lock as %s: %v %v", owner, ok, err)
	}
}

func waitActive(t *testing.T, st *store.Store, id string, want bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; {
		ids, err := st.Active(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, a := range ids {
			found = found || a == id
		}
		if found == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("rollout %s active %v, want %v", id, found, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func get(t *testing.T, url string) (string, int) {
	t.Helper()
	body, code, err := tryGet(url)
	if err != nil {
		t.Fatal(err)
	}
	return body, code
}

func tryGet(url string) (string, int, error) {
	resp, err := http.Get(url)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), resp.StatusCode, err
}

func scrape(t *testing.T, url string) string {
	t.Helper()
	body, code := get(t, url)
	if code != 200 {
		t.Fatalf("%s: %d %s", url, code, body)
	}
	return body
}

func grep(body, what string) string {
	var out []string
	for _, l := range strings.Split(body, "\n") {
		if strings.Contains(l, what) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
