// Package limitbench measures the fleet-wide limits against the simulator
// on loopback: the shared request rate with several worker processes, the
// throughput an in-flight cap allows at a given API latency, and how the
// adaptive rate behaves under random errors, an API limit it is not told,
// and a limit that changes.
package limitbench

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/phalafleet/rollout/internal/api"
	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/phalafleet/rollout/internal/control"
	"github.com/phalafleet/rollout/internal/plan"
	"github.com/phalafleet/rollout/internal/ratelimit"
	"github.com/phalafleet/rollout/internal/redisconn"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/worker"
	"github.com/redis/go-redis/v9"
)

// Result is one measured figure.
type Result struct {
	Name, Ours, Target, Note string
	Pass                     bool
}

// Config says what to measure with.
type Config struct {
	RedisURL  string // flushed
	WorkerBin string // a built cmd/worker; empty: go build one
	Rate      float64
	Window    time.Duration
	Progress  io.Writer
}

type env struct {
	cfg    Config
	rdb    redis.UniversalClient
	sim    *sim.Server
	prefix string
	key    string
	client *api.Client
	stop   func()
}

func setup(ctx context.Context, cfg Config, cvms int, f sim.Faults) (*env, error) {
	rdb, err := redisconn.Open(ctx, cfg.RedisURL)
	if err != nil {
		return nil, err
	}
	if err := rdb.FlushDB(ctx).Err(); err != nil {
		return nil, err
	}
	e := &env{cfg: cfg, rdb: rdb, key: sim.NewAPIKey()}
	e.sim = sim.New(sim.Options{APIKey: e.key, Fleet: sim.FleetOptions{CVMs: cvms, Seed: 1, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9}})
	e.sim.SetFaults(f)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	hs := &http.Server{Handler: e.sim}
	go hs.Serve(ln)
	e.prefix = "http://" + ln.Addr().String() + "/api/v1"
	e.stop = func() { hs.Close(); rdb.Close() }
	e.client, err = api.New(api.Config{APIKey: e.key, Prefix: e.prefix, ReadTries: 1}) // a worker's client
	return e, err
}

func (e *env) apply(ctx context.Context, yaml string) (string, error) {
	f, err := plan.Parse("bench.yaml", []byte(yaml))
	if err != nil {
		return "", err
	}
	p, err := plan.Build(ctx, e.client, f, 0)
	if err != nil {
		return "", err
	}
	return e.record(ctx, p)
}

// planPaced plans yaml as `apply` does: its reads paced through the
// rollout's shared limiter (or on their own with no rate in the file).
func (e *env) planPaced(ctx context.Context, yaml string) (*plan.Plan, error) {
	f, err := plan.Parse("bench.yaml", []byte(yaml))
	if err != nil {
		return nil, err
	}
	return plan.BuildWith(ctx, e.client, f, plan.Options{Pace: ratelimit.New(e.rdb).PlanPacer(f.ID(), f)})
}

func (e *env) record(ctx context.Context, p *plan.Plan) (string, error) {
	c := control.New(e.rdb)
	a, err := c.Apply(ctx, p, "bench", time.Now(), control.ApplyOptions{})
	return a.ID, err
}

// PlanPaced plans n CVMs against an API limit of 50 req/s (burst 50, 20 ms
// latency), known to the file or not: known, no 429 and within 10% of
// (n/100 pages + n reads)/50 s; unknown, at most 5% answered 429.
func PlanPaced(ctx context.Context, cfg Config, n int, known bool) (Result, error) {
	const limit = 50.0
	e, err := setup(ctx, cfg, n, sim.Faults{RateLimit: limit, RateBurst: int(limit), Latency: 20 * time.Millisecond})
	if err != nil {
		return Result{}, err
	}
	defer e.stop()
	e.client, err = api.New(api.Config{APIKey: e.key, Prefix: e.prefix}) // a planner's client, which retries reads
	if err != nil {
		return Result{}, err
	}
	rate, what := "{}", "unknown to the file"
	if known {
		rate, what = fmt.Sprintf("{per_second: %g}", limit), "known to the file"
	}
	e.logf("plan: %d CVMs, API limit %g req/s %s", n, limit, what)
	start := time.Now()
	p, err := e.planPaced(ctx, file("plan", rate))
	if err != nil {
		return Result{}, err
	}
	took, st := time.Since(start), e.sim.Stats()
	if p.Counts[plan.Patch] != n {
		return Result{}, fmt.Errorf("plan: %v, want %d to patch", p.Counts, n)
	}
	ideal := time.Duration(float64(st.Requests-st.Throttled) / limit * float64(time.Second))
	share := float64(st.Throttled) / float64(st.Requests)
	r := Result{Name: fmt.Sprintf("plan %d CVMs, API limit %g req/s %s", n, limit, what),
		Ours: fmt.Sprintf("%.1f s (%.2fx of %d requests/%g), %d answered 429 (%.1f%%)", took.Seconds(), took.Seconds()/ideal.Seconds(),
			st.Requests-st.Throttled, limit, st.Throttled, 100*share)}
	if known {
		r.Target, r.Pass = "no 429, within 10% of requests/limit", st.Throttled == 0 && took <= ideal*11/10
	} else {
		r.Target, r.Pass = "<= 5% answered 429", share <= 0.05
	}
	return r, nil
}

// EndToEnd plans and rolls out n CVMs with 3 worker processes (50 tasks
// each) against an API limit of 50 req/s known to the file, and reports
// the time from the plan's start to the rollout's end as a ratio of the
// physical limit: every request made (plan reads, then the workers' GET
// and PATCH per CVM) at 50 req/s.
func EndToEnd(ctx context.Context, cfg Config, n int) (Result, error) {
	const limit = 50.0
	e, err := setup(ctx, cfg, n, sim.Faults{RateLimit: limit, RateBurst: int(limit), Latency: 20 * time.Millisecond})
	if err != nil {
		return Result{}, err
	}
	defer e.stop()
	e.client, err = api.New(api.Config{APIKey: e.key, Prefix: e.prefix})
	if err != nil {
		return Result{}, err
	}
	stopWorkers, err := e.workers(ctx, 3, 50)
	if err != nil {
		return Result{}, err
	}
	defer stopWorkers()
	time.Sleep(time.Second) // the workers' start (a key check each)
	s0 := e.sim.Stats()
	e.logf("end to end: %d CVMs, API limit %g req/s known to the file, 3 worker processes", n, limit)
	start := time.Now()
	p, err := e.planPaced(ctx, file("e2e", fmt.Sprintf("{per_second: %g}", limit)))
	if err != nil {
		return Result{}, err
	}
	planned := time.Since(start)
	id, err := e.record(ctx, p)
	if err != nil {
		return Result{}, err
	}
	st := store.New(e.rdb)
	var r *store.Rollout
	for end := time.Now().Add(30 * time.Minute); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		if r, err = st.Get(ctx, id); err == nil && r.State.Finished() {
			break
		}
	}
	took := time.Since(start)
	if r == nil || r.State != store.RolloutCompleted {
		return Result{}, fmt.Errorf("end to end: the rollout did not complete")
	}
	s1 := e.sim.Stats()
	planReads := n/100 + n
	physical := float64(planReads+2*n) / limit
	return Result{Name: fmt.Sprintf("end to end: plan + roll out %d CVMs, API limit %g req/s known to the file, 3 worker processes", n, limit),
		Ours: fmt.Sprintf("%.1f s = %.2fx the physical limit of %.0f s (plan %.1f s); %d requests, %d answered 429, %d PATCH; %d succeeded",
			took.Seconds(), took.Seconds()/physical, physical, planned.Seconds(), s1.Requests-s0.Requests, s1.Throttled-s0.Throttled,
			s1.Patches-s0.Patches, r.Counts[store.Succeeded]),
		Target: "within 10% of (plan reads + 2 per CVM)/50",
		Note:   fmt.Sprintf("physical limit: (%d plan reads + %d worker requests (GET + PATCH per CVM)) / %g req/s", planReads, 2*n, limit),
		Pass:   took.Seconds() <= 1.1*physical}, nil
}

// requestRate counts the simulator's requests over window, after warmup.
func (e *env) requestRate(warmup, window time.Duration) (float64, int64) {
	time.Sleep(warmup)
	s0 := e.sim.Stats()
	time.Sleep(window)
	s1 := e.sim.Stats()
	return float64(s1.Requests-s0.Requests) / window.Seconds(), s1.Throttled - s0.Throttled
}

func (e *env) logf(format string, args ...any) {
	if e.cfg.Progress != nil {
		fmt.Fprintf(e.cfg.Progress, format+"\n", args...)
	}
}

func file(name, rate string) string {
	return "name: " + name + "\nselector: {all: true}\ntarget: {kms_urls: [\"https://kms-new.example:8000\"]}\nrate: " + rate + "\n"
}

// SharedRate runs 3 worker processes under one rollout rate R against a
// simulator whose own limit is 1.1·R: it should see R ±5% and answer no 429.
func SharedRate(ctx context.Context, cfg Config) (Result, error) {
	r := cfg.Rate
	e, err := setup(ctx, cfg, int(r*cfg.Window.Seconds()), sim.Faults{RateLimit: 1.1 * r, RateBurst: max(1, int(1.1*r))})
	if err != nil {
		return Result{}, err
	}
	defer e.stop()
	if _, err := e.apply(ctx, file("rate", fmt.Sprintf("{per_second: %g, adaptive: false}", r))); err != nil {
		return Result{}, err
	}
	stopWorkers, err := e.workers(ctx, 3, 32)
	if err != nil {
		return Result{}, err
	}
	defer stopWorkers()
	e.logf("shared rate: 3 worker processes, rate %g/s, simulator limit %g/s, %s window", r, 1.1*r, cfg.Window)
	got, throttled := e.requestRate(5*time.Second, cfg.Window)
	dev := (got - r) / r
	return Result{Name: "rate shared by 3 worker processes",
		Ours:   fmt.Sprintf("%.1f req/s (%+.1f%%), %d answered 429", got, 100*dev, throttled),
		Target: fmt.Sprintf("%g req/s ±5%%, no 429 at a %g req/s API limit", r, 1.1*r),
		Pass:   dev >= -0.05 && dev <= 0.05 && throttled == 0}, nil
}

// InFlight measures throughput with max_in_flight M at API latency L:
// each CVM makes 3 calls, so the ceiling is M/(3L) CVMs/s, i.e. M/L calls/s.
func InFlight(ctx context.Context, cfg Config, m int, l time.Duration) (Result, error) {
	ceiling := float64(m) / l.Seconds()
	e, err := setup(ctx, cfg, int(ceiling*(cfg.Window.Seconds()+10)/3)+100, sim.Faults{Latency: l})
	if err != nil {
		return Result{}, err
	}
	defer e.stop()
	if _, err := e.apply(ctx, file("inflight", fmt.Sprintf("{max_in_flight: %d}", m))); err != nil {
		return Result{}, err
	}
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		worker.Run(wctx, e.rdb, worker.Config{Concurrency: 2 * m, API: e.client, ShutdownTimeout: time.Second, Log: quietLog()})
	}()
	defer func() { cancel(); <-done }()
	e.logf("in flight: max_in_flight %d, latency %s, %s window", m, l, cfg.Window)
	got, _ := e.requestRate(3*time.Second, cfg.Window)
	return Result{Name: fmt.Sprintf("throughput at max_in_flight %d, latency %s", m, l),
		Ours:   fmt.Sprintf("%.1f calls/s = %.0f%% of M/L", got, 100*got/ceiling),
		Target: fmt.Sprintf(">= 90%% of M/L = %.0f calls/s", ceiling),
		Pass:   got >= 0.9*ceiling}, nil
}

// workers starts n cmd/worker processes on e's Redis and simulator, each
// at concurrency conc; stop kills them.
func (e *env) workers(ctx context.Context, n, conc int) (stop func(), err error) {
	bin, err := workerBin(e.cfg)
	if err != nil {
		return nil, err
	}
	var procs []*exec.Cmd
	stop = func() {
		for _, p := range procs {
			p.Process.Kill()
			p.Wait()
		}
	}
	for range n {
		cmd := exec.CommandContext(ctx, bin, "--concurrency", fmt.Sprint(conc))
		cmd.Env = append(os.Environ(), "PHALA_CLOUD_API_KEY="+e.key, "PHALA_CLOUD_API_PREFIX="+e.prefix, "REDIS_URL="+e.cfg.RedisURL)
		if err := cmd.Start(); err != nil {
			stop()
			return nil, err
		}
		procs = append(procs, cmd)
	}
	return stop, nil
}

// sample is the simulator's counters at one time.
type sample struct {
	at                time.Time
	sent, refused, er int64
}

// sampler reads the simulator's counters every 250 ms until stopped.
type sampler struct {
	mu   sync.Mutex
	s    []sample
	stop chan struct{}
}

func (e *env) sample() *sampler {
	sp := &sampler{stop: make(chan struct{})}
	go func() {
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			st := e.sim.Stats()
			sp.mu.Lock()
			sp.s = append(sp.s, sample{time.Now(), st.Requests, st.Throttled, st.ServerErrors})
			sp.mu.Unlock()
			select {
			case <-sp.stop:
				return
			case <-t.C:
			}
		}
	}()
	return sp
}

// over is the rates between from and to: sent, accepted (not 429) and
// answered without error (neither 429 nor 5xx) per second, and the share
// answered 429.
func (sp *sampler) over(from, to time.Time) (sent, accepted, good, refused float64) {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	var a, b *sample
	for i := range sp.s {
		if a == nil && !sp.s[i].at.Before(from) {
			a = &sp.s[i]
		}
		if !sp.s[i].at.After(to) {
			b = &sp.s[i]
		}
	}
	if a == nil || b == nil || !b.at.After(a.at) {
		return 0, 0, 0, 0
	}
	sec := b.at.Sub(a.at).Seconds()
	n := float64(b.sent - a.sent)
	if n > 0 {
		refused = float64(b.refused-a.refused) / n
	}
	return n / sec, (n - float64(b.refused-a.refused)) / sec, (n - float64(b.refused-a.refused) - float64(b.er-a.er)) / sec, refused
}

// settled is how long after from the sent rate over 3 s and the accepted
// rate are both within 10% of limit (what is sent no more than 10% above
// it, what is accepted no more than 10% below), looking until to; -1 if
// never.
func (sp *sampler) settled(from, to time.Time, limit float64) time.Duration {
	for t := from; !t.Add(3 * time.Second).After(to); t = t.Add(250 * time.Millisecond) {
		sent, acc, _, _ := sp.over(t, t.Add(3*time.Second))
		if sent <= 1.1*limit && acc >= 0.9*limit {
			return t.Sub(from)
		}
	}
	return -1
}

func (sp *sampler) close() { close(sp.stop) }

// Adaptive measures the adaptive rate with 3 worker processes (50 tasks
// each) sharing one rollout against the simulator at 20 ms latency:
//
//   - noise: 10% random 503s (no Retry-After), no limit, the file allows
//     100 req/s: what is accepted over 60 s should be at least 80 req/s;
//   - unknown: a 40 req/s limit the file does not know (it allows 400):
//     accepted within 10% of 40 and at most 5% answered 429, over 30 s
//     after 20 s to settle;
//   - step: the limit drops from 80 to 20 req/s (the file allows 200), then
//     rises to 80 again: back within 10% of 20 in under 15 s, of 80 in
//     under 60 s.
func Adaptive(ctx context.Context, cfg Config, scenario string) (Result, error) {
	const latency = 20 * time.Millisecond
	var f sim.Faults
	var ceiling float64
	var cvms int
	switch scenario {
	case "noise":
		f, ceiling, cvms = sim.Faults{Latency: latency, ErrorRate: 0.10, ErrorCodes: []int{503}}, 100, 4000
	case "unknown":
		f, ceiling, cvms = sim.Faults{Latency: latency, RateLimit: 40, RateBurst: 10}, 400, 1500
	case "step":
		f = sim.Faults{Latency: latency, RateLimit: 80, RateBurst: 20,
			RateChanges: []sim.RateChange{{After: 30 * time.Second, Limit: 20}, {After: 60 * time.Second, Limit: 80}}}
		ceiling, cvms = 200, 5000
	default:
		return Result{}, fmt.Errorf("adaptive: no scenario %q", scenario)
	}
	e, err := setup(ctx, cfg, cvms, sim.Faults{})
	if err != nil {
		return Result{}, err
	}
	defer e.stop()
	if _, err := e.apply(ctx, file("adaptive-"+scenario, fmt.Sprintf("{per_second: %g}", ceiling))); err != nil {
		return Result{}, err
	}
	stopWorkers, err := e.workers(ctx, 3, 50)
	if err != nil {
		return Result{}, err
	}
	defer stopWorkers()
	e.sim.SetFaults(f)
	start := time.Now()
	sp := e.sample()
	defer sp.close()
	e.logf("adaptive %s: 3 worker processes x 50, file allows %g req/s, faults %+v", scenario, ceiling, f)
	wait := func(d time.Duration) { time.Sleep(time.Until(start.Add(d))) }
	switch scenario {
	case "noise":
		wait(60 * time.Second)
		sent, acc, good, _ := sp.over(start, start.Add(60*time.Second))
		return Result{Name: "adaptive, 10% random 503s, no limit, file 100 req/s (3 workers)",
			Ours:   fmt.Sprintf("accepted %.1f req/s over 60 s (%.0f%% of 100), sent %.1f, answered 2xx %.1f", acc, acc, sent, good),
			Target: ">= 80 req/s accepted", Pass: acc >= 80}, nil
	case "unknown":
		wait(50 * time.Second)
		sent, acc, _, refused := sp.over(start.Add(20*time.Second), start.Add(50*time.Second))
		dev := (acc - 40) / 40
		return Result{Name: "adaptive, unknown 40 req/s limit, file 400 req/s (3 workers)",
			Ours:   fmt.Sprintf("accepted %.1f req/s (%+.1f%%), sent %.1f, %.1f%% answered 429 (s 20-50)", acc, 100*dev, sent, 100*refused),
			Target: "within 10% of 40, <= 5% answered 429", Pass: dev >= -0.1 && dev <= 0.1 && refused <= 0.05}, nil
	}
	wait(120 * time.Second)
	_, before, _, _ := sp.over(start.Add(20*time.Second), start.Add(30*time.Second))
	down := sp.settled(start.Add(30*time.Second), start.Add(60*time.Second), 20)
	up := sp.settled(start.Add(60*time.Second), start.Add(120*time.Second), 80)
	_, low, _, _ := sp.over(start.Add(50*time.Second), start.Add(60*time.Second))
	_, high, _, _ := sp.over(start.Add(110*time.Second), start.Add(120*time.Second))
	return Result{Name: "adaptive, limit 80 -> 20 -> 80 req/s, file 200 req/s (3 workers)",
		Ours: fmt.Sprintf("within 10%% of 20 after %s, of 80 after %s (accepted %.1f at 80, %.1f at 20, %.1f back at 80)",
			secs(down), secs(up), before, low, high),
		Target: "drop: < 15 s; rise: < 60 s", Pass: down >= 0 && down < 15*time.Second && up >= 0 && up < 60*time.Second}, nil
}

func secs(d time.Duration) string {
	if d < 0 {
		return "never"
	}
	return fmt.Sprintf("%.1f s", d.Seconds())
}

func workerBin(cfg Config) (string, error) {
	if cfg.WorkerBin != "" {
		return cfg.WorkerBin, nil
	}
	dir, err := os.MkdirTemp("", "limitbench")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "worker")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/phalafleet/rollout/cmd/worker").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build ./cmd/worker: %v: %s", err, out)
	}
	return bin, nil
}
