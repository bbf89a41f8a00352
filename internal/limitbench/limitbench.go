// Package limitbench measures the fleet-wide limits against the simulator
// on loopback: the shared request rate with several worker processes, the
// throughput an in-flight cap allows at a given API latency, and where the
// adaptive mode settles under an API limit it is not told.
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
	"time"

	"github.com/phalafleet/rollout/internal/api"
	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/phalafleet/rollout/internal/control"
	"github.com/phalafleet/rollout/internal/plan"
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
	c := control.New(e.rdb)
	a, err := c.Apply(ctx, p, "bench", time.Now(), control.ApplyOptions{})
	return a.ID, err
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
	bin, err := workerBin(cfg)
	if err != nil {
		return Result{}, err
	}
	var procs []*exec.Cmd
	for range 3 {
		cmd := exec.CommandContext(ctx, bin, "--concurrency", "32")
		cmd.Env = append(os.Environ(), "PHALA_CLOUD_API_KEY="+e.key, "PHALA_CLOUD_API_PREFIX="+e.prefix, "REDIS_URL="+cfg.RedisURL)
		if err := cmd.Start(); err != nil {
			return Result{}, err
		}
		procs = append(procs, cmd)
	}
	defer func() {
		for _, p := range procs {
			p.Process.Kill()
			p.Wait()
		}
	}()
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

// Adaptive runs a rollout whose file allows far more than the simulator's
// own (unstated) limit X: adaptive mode should settle within 20% of X and
// finish with no failed CVM.
func Adaptive(ctx context.Context, cfg Config, x float64, cvms int) (Result, error) {
	e, err := setup(ctx, cfg, cvms, sim.Faults{RateLimit: x, RateBurst: max(1, int(x/4))})
	if err != nil {
		return Result{}, err
	}
	defer e.stop()
	id, err := e.apply(ctx, file("adaptive", fmt.Sprintf("{per_second: %g}", 10*x)))
	if err != nil {
		return Result{}, err
	}
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		worker.Run(wctx, e.rdb, worker.Config{Concurrency: 64, API: e.client, ShutdownTimeout: time.Second, Log: quietLog(), ControllerInterval: 200 * time.Millisecond})
	}()
	defer func() { cancel(); <-done }()
	e.logf("adaptive: simulator limit %g/s (unknown to the tool), file allows %g/s", x, 10*x)
	// Settled rate: what the simulator accepted (answered other than 429).
	time.Sleep(20 * time.Second)
	s0 := e.sim.Stats()
	time.Sleep(cfg.Window)
	s1 := e.sim.Stats()
	accepted := float64((s1.Requests-s0.Requests)-(s1.Throttled-s0.Throttled)) / cfg.Window.Seconds()
	sent := float64(s1.Requests-s0.Requests) / cfg.Window.Seconds()
	st := store.New(e.rdb)
	var r *store.Rollout
	for end := time.Now().Add(10 * time.Minute); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
		if r, err = st.Get(ctx, id); err == nil && r.State == store.RolloutCompleted {
			break
		}
	}
	if r == nil || r.State != store.RolloutCompleted {
		return Result{}, fmt.Errorf("adaptive rollout did not complete")
	}
	dev := (accepted - x) / x
	return Result{Name: fmt.Sprintf("adaptive under an unknown %g req/s limit", x),
		Ours: fmt.Sprintf("accepted %.1f req/s (%+.0f%%), sent %.1f req/s; %d of %d CVMs failed", accepted, 100*dev, sent,
			r.Counts[store.Failed], r.Total),
		Target: "within 20% of the limit, no failed CVM",
		Pass:   dev >= -0.2 && dev <= 0.2 && r.Counts[store.Failed] == 0}, nil
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
