package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime/pprof"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynq"
	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/tasks"
	"github.com/phalafleet/rollout/internal/worker"
)

// process compares an n-CVM rollout run end to end by one in-process
// worker (GET network config, PATCH, records, over loopback HTTP to the
// simulator in this process) with what a user would write with asynq: a
// raw handler doing the same GET and PATCH against the same simulator and
// recording nothing, at the same concurrency; and, for information, with a
// no-op handler over n bare tasks. Each of the Repeat rounds runs the
// three in turn; the best of each is reported, with the load average.
func (b *runner) process(ctx context.Context) ([]Row, error) {
	n, conc := b.cfg.Sizes[StageProcess], b.cfg.Concurrency
	var base, raw, ours []time.Duration
	var baseUse, rawUse, oursUse []cpuUse
	var st sim.Stats
	var loads []string
	for round := range b.cfg.Repeat {
		loads = append(loads, loadAvg())
		d, use, err := b.processBaseline(ctx, n, conc)
		if err != nil {
			return nil, fmt.Errorf("baseline: %w", err)
		}
		base, baseUse = append(base, d), append(baseUse, use)
		b.progress("process: round %d: baseline no-op server did %d tasks in %s (%s)", round+1, n, d.Round(time.Millisecond), use)

		d, use, err = b.processRaw(ctx, n, conc, round == 0 && b.cfg.CPUProfile != "")
		if err != nil {
			return nil, fmt.Errorf("raw handler: %w", err)
		}
		raw, rawUse = append(raw, d), append(rawUse, use)
		b.progress("process: round %d: raw GET+PATCH handler did %d CVMs in %s (%s)", round+1, n, d.Round(time.Millisecond), use)

		d, use, st, err = b.processOurs(ctx, n, conc, round == 0 && b.cfg.CPUProfile != "")
		if err != nil {
			return nil, err
		}
		ours, oursUse = append(ours, d), append(oursUse, use)
		b.progress("process: round %d: worker did %d CVMs in %s (%s)", round+1, n, d.Round(time.Millisecond), use)
	}
	bestBase, bestRaw, bestOurs := best(base), best(raw), best(ours)
	ratio, rawRatio := bestBase.Seconds()/bestOurs.Seconds(), bestRaw.Seconds()/bestOurs.Seconds()
	note := fmt.Sprintf("concurrency %d for all; best of %d rounds, run in turn (ours %s; raw %s; no-op %s); load average before each round %s; ours: %d HTTP requests per round to the in-process simulator (%d PATCH), every CVM succeeded",
		conc, b.cfg.Repeat, secsList(ours), secsList(raw), secsList(base), strings.Join(loads, " / "), st.Requests, st.Patches)
	if b.cfg.CPUProfile != "" {
		note += "; CPU profiles of round 1's worker run in " + b.cfg.CPUProfile + ", of its raw handler run in " + b.cfg.CPUProfile + ".raw"
	}
	oSelf, oRedis := minCPU(oursUse, n)
	rSelf, rRedis := minCPU(rawUse, n)
	bSelf, bRedis := minCPU(baseUse, n)
	oCmds, rCmds, bCmds := minCmds(oursUse, n), minCmds(rawUse, n), minCmds(baseUse, n)
	return []Row{{
		Stage:    fmt.Sprintf("process %s CVMs (worker: GET config, PATCH, record) vs a raw asynq GET+PATCH handler", thousands(int64(n))),
		Ours:     rate(n, bestOurs),
		Baseline: rate(n, bestRaw),
		Ratio:    pct(rawRatio),
		Target:   ">= 80%",
		Result:   verdict(rawRatio >= 0.80),
		Note:     note,
	}, {
		Stage:    "process, against a no-op asynq handler (no HTTP)",
		Ours:     rate(n, bestOurs),
		Baseline: rate(n, bestBase),
		Ratio:    pct(ratio),
		Result:   "info",
	}, {
		Stage:    "process CPU per CVM (bench process + redis-server), ours vs raw",
		Ours:     fmt.Sprintf("%d + %d µs", oSelf.Microseconds(), oRedis.Microseconds()),
		Baseline: fmt.Sprintf("%d + %d µs", rSelf.Microseconds(), rRedis.Microseconds()),
		Ratio:    pct((rSelf + rRedis).Seconds() / (oSelf + oRedis).Seconds()),
		Result:   "info",
		Note: fmt.Sprintf("CPU time per CVM over the same runs (the least of the rounds): getrusage of this process, which also serves the simulator, and INFO cpu (used_cpu_sys+used_cpu_user) of redis-server; no-op: %d + %d µs",
			bSelf.Microseconds(), bRedis.Microseconds()),
	}, {
		Stage:    "process Redis commands per CVM, ours vs raw",
		Ours:     fmt.Sprintf("%.1f", oCmds.total),
		Baseline: fmt.Sprintf("%.1f", rCmds.total),
		Ratio:    fmt.Sprintf("%.2fx", oCmds.total/rCmds.total),
		Result:   "info",
		Note:     fmt.Sprintf("INFO commandstats calls delta per CVM (the least of the rounds); ours: %s; raw: %s; no-op: %s", oCmds.top, rCmds.top, bCmds.top),
	}}, nil
}

// processRaw queues n bare tasks naming the simulator's CVMs and runs one
// asynq server (as a user would configure it) whose handler GETs each
// CVM's network config and PATCHes it to the bench target, through the
// same API client, recording nothing, until all are done.
func (b *runner) processRaw(ctx context.Context, n, conc int, profile bool) (time.Duration, cpuUse, error) {
	if err := b.flush(ctx); err != nil {
		return 0, cpuUse{}, err
	}
	s, err := startSim(n, true)
	if err != nil {
		return 0, cpuUse{}, err
	}
	defer s.Close()
	f, err := rolloutFile("bench-raw")
	if err != nil {
		return 0, cpuUse{}, err
	}
	if _, err := bareEnqueue(ctx, b.rdb, s.Sim.IDs(), b.cfg.EnqueueGoroutines, "bench-raw"); err != nil {
		return 0, cpuUse{}, err
	}
	var count atomic.Int64
	all := make(chan struct{})
	srv := asynq.NewServerFromRedisClient(b.rdb, asynq.Config{
		Concurrency: conc, Queues: map[string]int{tasks.Queue: 1}, ShutdownTimeout: 5 * time.Second, LogLevel: asynq.WarnLevel,
	})
	mux := asynq.NewServeMux()
	mux.HandleFunc(tasks.TypeCVM, func(ctx context.Context, t *asynq.Task) error {
		var p tasks.Payload
		if err := json.Unmarshal(t.Payload(), &p); err != nil {
			return err
		}
		cur, err := s.Client.GetNetworkConfig(ctx, p.CVM)
		if err != nil {
			return err
		}
		if upd, changed := f.Target.Diff(cur); changed {
			if _, err := s.Client.PatchNetworkConfig(ctx, p.CVM, upd); err != nil {
				return err
			}
		}
		if count.Add(1) == int64(n) {
			close(all)
		}
		return nil
	})
	if profile {
		stop, err := startProfile(b.cfg.CPUProfile + ".raw")
		if err != nil {
			return 0, cpuUse{}, err
		}
		defer stop()
	}
	d, use, err := b.runBaseline(ctx, srv, mux, all, func() string { return fmt.Sprintf("raw handler did %d of %d CVMs", count.Load(), n) })
	if err != nil {
		return 0, use, err
	}
	if p := s.Sim.Stats().Patches; p != int64(n) {
		return 0, cpuUse{}, fmt.Errorf("raw handler: %d PATCHes for %d CVMs", p, n)
	}
	return d, use, nil
}

// runBaseline runs srv with mux until all is closed (every task handled),
// and times it with the CPU it took; it gives up after 10 minutes, saying
// how far it got (progress).
func (b *runner) runBaseline(ctx context.Context, srv *asynq.Server, mux *asynq.ServeMux, all <-chan struct{}, progress func() string) (time.Duration, cpuUse, error) {
	meter := newCPUMeter(ctx, b.rdb)
	start := time.Now()
	if err := srv.Start(mux); err != nil {
		return 0, cpuUse{}, err
	}
	defer srv.Shutdown()
	select {
	case <-all:
		return time.Since(start), meter.Stop(), nil
	case <-time.After(10 * time.Minute):
		return 0, cpuUse{}, fmt.Errorf("%s in 10 min", progress())
	case <-ctx.Done():
		return 0, cpuUse{}, ctx.Err()
	}
}

// processOurs applies an n-CVM rollout on a fresh simulator, then runs one
// worker.Run until every CVM is done.
func (b *runner) processOurs(ctx context.Context, n, conc int, profile bool) (time.Duration, cpuUse, sim.Stats, error) {
	if err := b.flush(ctx); err != nil {
		return 0, cpuUse{}, sim.Stats{}, err
	}
	s, err := startSim(n, true)
	if err != nil {
		return 0, cpuUse{}, sim.Stats{}, err
	}
	defer s.Close()
	f, err := rolloutFile("bench-process")
	if err != nil {
		return 0, cpuUse{}, sim.Stats{}, err
	}
	p := syntheticPlan(f, s.Sim.IDs())
	if _, err := b.apply(ctx, p); err != nil {
		return 0, cpuUse{}, sim.Stats{}, err
	}
	stopProfile := func() {}
	if profile {
		if stopProfile, err = startProfile(b.cfg.CPUProfile); err != nil {
			return 0, cpuUse{}, sim.Stats{}, err
		}
	}
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	meter := newCPUMeter(ctx, b.rdb)
	start := time.Now()
	go func() {
		done <- worker.Run(wctx, b.rdb, worker.Config{Concurrency: conc, API: s.Client, Name: "bench-worker",
			Log: b.log, ControllerInterval: 100 * time.Millisecond, ShutdownTimeout: 5 * time.Second})
	}()
	r, werr := waitDone(ctx, store.New(b.rdb), p.ID, 10*time.Minute)
	d := time.Since(start)
	use := meter.Stop()
	stopProfile()
	cancel()
	<-done
	if werr != nil {
		return 0, use, sim.Stats{}, werr
	}
	if got := r.Counts[store.Succeeded]; got != n {
		return 0, use, sim.Stats{}, fmt.Errorf("%d of %d CVMs succeeded: %v", got, n, r.Counts)
	}
	return d, use, s.Sim.Stats(), nil
}

// processBaseline queues n bare tasks, then runs an asynq server configured
// as worker.Run configures its own, with a handler that does nothing,
// until it handled all of them.
func (b *runner) processBaseline(ctx context.Context, n, conc int) (time.Duration, cpuUse, error) {
	if err := b.flush(ctx); err != nil {
		return 0, cpuUse{}, err
	}
	if _, err := bareEnqueue(ctx, b.rdb, cvmIDs(n), b.cfg.EnqueueGoroutines, "bench-baseline"); err != nil {
		return 0, cpuUse{}, err
	}
	var count atomic.Int64
	all := make(chan struct{})
	srv := asynq.NewServerFromRedisClient(b.rdb, asynq.Config{
		Concurrency:              conc,
		Queues:                   map[string]int{tasks.Queue: 1},
		DelayedTaskCheckInterval: time.Second,
		TaskCheckInterval:        200 * time.Millisecond,
		ShutdownTimeout:          5 * time.Second,
		LogLevel:                 asynq.WarnLevel,
	})
	mux := asynq.NewServeMux()
	mux.HandleFunc(tasks.TypeCVM, func(context.Context, *asynq.Task) error {
		if count.Add(1) == int64(n) {
			close(all)
		}
		return nil
	})
	return b.runBaseline(ctx, srv, mux, all, func() string { return fmt.Sprintf("no-op server handled %d of %d tasks", count.Load(), n) })
}

func best(ds []time.Duration) time.Duration {
	m := ds[0]
	for _, d := range ds[1:] {
		m = min(m, d)
	}
	return m
}

func secsList(ds []time.Duration) string {
	s := ""
	for i, d := range ds {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("%.2f", d.Seconds())
	}
	return s + " s"
}

// minCPU is the least total CPU per item over rounds.
func minCPU(us []cpuUse, n int) (self, redis time.Duration) {
	for i, u := range us {
		s, r := u.perItem(n)
		if i == 0 || s+r < self+redis {
			self, redis = s, r
		}
	}
	return self, redis
}

// startProfile writes a CPU profile of this process to path until stop.
func startProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}
