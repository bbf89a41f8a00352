package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hibiken/asynq"
	"github.com/phalafleet/rollout/internal/plan"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/tasks"
	"github.com/phalafleet/rollout/internal/worker"
)

// memory measures Redis bytes per queued CVM, the RSS of a worker process
// at concurrency 200 working through those CVMs, and the planner's bytes
// per CVM.
func (b *runner) memory(ctx context.Context) ([]Row, error) {
	rows, err := b.redisAndRSS(ctx)
	if err != nil {
		return rows, err
	}
	pr, err := b.plannerBytes(ctx)
	return append(rows, pr...), err
}

// redisAndRSS starts a worker on a paused queue, applies an n-CVM rollout
// (reading used_memory before and after), then unpauses and samples the
// worker's RSS until every CVM is done.
func (b *runner) redisAndRSS(ctx context.Context) ([]Row, error) {
	n := b.cfg.Sizes[StageMemory]
	if err := b.flush(ctx); err != nil {
		return nil, err
	}
	s, err := startSim(n, true)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	f, err := rolloutFile("bench-memory")
	if err != nil {
		return nil, err
	}
	p := syntheticPlan(f, s.Sim.IDs())
	insp := asynq.NewInspectorFromRedisClient(b.rdb)
	if err := insp.PauseQueue(tasks.Queue); err != nil {
		return nil, err
	}

	w, err := b.startWorker(ctx, s)
	if err != nil {
		return nil, err
	}
	defer w.stop()
	time.Sleep(1500 * time.Millisecond) // started, connected, idle
	idle := w.sample()

	m0, err := usedMemory(ctx, b.rdb)
	if err != nil {
		return nil, err
	}
	if _, err := b.apply(ctx, p); err != nil {
		return nil, err
	}
	m1, err := usedMemory(ctx, b.rdb)
	if err != nil {
		return nil, err
	}
	perCVM := float64(m1-m0) / float64(n)
	taskBytes, _ := b.rdb.MemoryUsage(ctx, "asynq:{"+tasks.Queue+"}:t:"+tasks.TaskID(tasks.Payload{Rollout: p.ID, CVM: p.Items[0].CVMID})).Result()
	recBytes, _ := b.rdb.MemoryUsage(ctx, store.CVMKey(p.ID, p.Items[0].CVMID)).Result()
	b.progress("memory: Redis used_memory +%d bytes for %d CVMs", m1-m0, n)

	start := time.Now()
	if err := insp.UnpauseQueue(tasks.Queue); err != nil {
		return nil, err
	}
	r, err := waitDone(ctx, store.New(b.rdb), p.ID, 10*time.Minute)
	took := time.Since(start)
	peak := w.stopSampling()
	if err != nil {
		return nil, err
	}
	if got := r.Counts[store.Succeeded]; got != n {
		return nil, fmt.Errorf("%d of %d CVMs succeeded: %v", got, n, r.Counts)
	}
	b.progress("memory: worker (%s) did %d CVMs in %s, peak %s", w.kind, n, took.Round(time.Millisecond), mib(peak))

	rows := []Row{{
		Stage:  fmt.Sprintf("Redis bytes per queued CVM (task+record, %s)", thousands(int64(n))),
		Ours:   fmt.Sprintf("%.0f B", perCVM),
		Target: "< 1 KiB",
		Result: verdict(perCVM < 1024),
		Note: fmt.Sprintf("INFO memory used_memory %s -> %s around control.Apply; MEMORY USAGE of one task hash %d B, one CVM record %d B (the rest: list entries, key-space overhead)",
			thousands(m0), thousands(m1), taskBytes, recBytes),
	}, {
		Stage:    fmt.Sprintf("worker RSS, concurrency %d (%s)", b.cfg.RSSConcurrency, w.kind),
		Ours:     mib(peak) + " peak",
		Baseline: mib(idle) + " idle",
		Target:   "< 100 MiB",
		Result:   verdict(peak < 100<<20),
		Note:     fmt.Sprintf("%s; it processed the %s CVMs in %s (%s/s) with the simulator in the bench process", w.how, thousands(int64(n)), secs(took), thousands(int64(float64(n)/took.Seconds()))),
	}}
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) { // completed and settled by the worker's controller
		r, err := store.New(b.rdb).Get(ctx, p.ID)
		active, aerr := b.rdb.HExists(ctx, store.ActiveKey, p.ID).Result()
		if err == nil && aerr == nil && r.State == store.RolloutCompleted && !active {
			break
		}
		if time.Now().After(end) {
			return rows, fmt.Errorf("rollout %s not completed and settled after 10s", p.ID)
		}
	}
	more, err := b.retention(ctx, p.ID, n)
	return append(rows, more...), err
}

// workerProc is a running worker whose memory is sampled every 50 ms.
type workerProc struct {
	kind, how string
	sample    func() int64 // current bytes
	hwm       func() int64 // peak bytes as the kernel counts them (0: unknown)
	stop      func()

	mu       sync.Mutex
	peak     int64
	sampling chan struct{}
	sampled  chan struct{}
}

func (w *workerProc) run() {
	w.sampling, w.sampled = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(w.sampled)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			v := w.sample()
			w.mu.Lock()
			w.peak = max(w.peak, v)
			w.mu.Unlock()
			select {
			case <-w.sampling:
				return
			case <-t.C:
			}
		}
	}()
}

// stopSampling ends sampling and returns the peak.
func (w *workerProc) stopSampling() int64 {
	close(w.sampling)
	<-w.sampled
	w.mu.Lock()
	defer w.mu.Unlock()
	return max(w.peak, w.hwm())
}

// startWorker runs cmd/worker as a subprocess (built into a temp dir unless
// Config.WorkerBin names one) and samples /proc/PID/status VmRSS. If it
// cannot be built it falls back to an in-process worker, sampled as
// runtime.MemStats HeapInuse+StackInuse.
func (b *runner) startWorker(ctx context.Context, s *simAPI) (*workerProc, error) {
	bin := b.cfg.WorkerBin
	var cleanup func()
	if bin == "" {
		dir, err := os.MkdirTemp("", "rollout-bench")
		if err != nil {
			return nil, err
		}
		cleanup = func() { os.RemoveAll(dir) }
		bin = filepath.Join(dir, "worker")
		out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/phalafleet/rollout/cmd/worker").CombinedOutput()
		if err != nil {
			cleanup()
			b.progress("memory: cannot build cmd/worker (%v: %s); measuring an in-process worker instead", err, bytes.TrimSpace(out))
			return b.inProcessWorker(ctx, s), nil
		}
	}
	cmd := exec.Command(bin, "--concurrency", strconv.Itoa(b.cfg.RSSConcurrency), "--shutdown-timeout", "5s")
	// In the environment, not argv: the URL may hold a password.
	env := []string{"REDIS_URL=" + b.cfg.RedisURL, "PHALA_CLOUD_API_KEY=" + s.Key, "PHALA_CLOUD_API_PREFIX=" + s.Prefix}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PHALA_CLOUD_") && !strings.HasPrefix(kv, "REDIS_URL=") {
			env = append(env, kv)
		}
	}
	cmd.Env = env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		if cleanup != nil {
			cleanup()
		}
		return nil, err
	}
	pid := cmd.Process.Pid
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	w := &workerProc{kind: "cmd/worker subprocess", how: fmt.Sprintf("VmRSS of cmd/worker (pid %d) from /proc every 50 ms, and its VmHWM", pid),
		sample: func() int64 { return procStatus(pid, "VmRSS") },
		hwm:    func() int64 { return procStatus(pid, "VmHWM") },
	}
	w.stop = func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if cleanup != nil {
			cleanup()
		}
	}
	select {
	case <-exited:
		w.stop()
		return nil, fmt.Errorf("worker exited at start: %s", bytes.TrimSpace(stderr.Bytes()))
	case <-time.After(200 * time.Millisecond):
	}
	w.run()
	return w, nil
}

func (b *runner) inProcessWorker(ctx context.Context, s *simAPI) *workerProc {
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		worker.Run(wctx, b.rdb, worker.Config{Concurrency: b.cfg.RSSConcurrency, API: s.Client, Name: "bench-worker",
			Log: b.log, ControllerInterval: time.Second, ShutdownTimeout: 5 * time.Second})
	}()
	w := &workerProc{kind: "in-process proxy", how: "runtime.MemStats HeapInuse+StackInuse of the bench process (which also holds the simulator) every 50 ms",
		sample: func() int64 {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			return int64(m.HeapInuse + m.StackInuse)
		},
		hwm:  func() int64 { return 0 },
		stop: func() { cancel(); <-done },
	}
	w.run()
	return w
}

// procStatus reads a "kB" field of /proc/PID/status, in bytes.
func procStatus(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// plannerBytes reads runtime.MemStats around plan.Build of 5,000 and of the
// plan stage's size: the heap the plan keeps (after GC) and what Build
// allocated, per CVM. The simulator runs in this process, so the
// allocation figure includes its side of every request.
func (b *runner) plannerBytes(ctx context.Context) ([]Row, error) {
	sizes := []int{5000, b.cfg.Sizes[StagePlan]}
	type reading struct{ kept, alloc float64 }
	var got []reading
	for _, n := range sizes {
		s, err := startSim(n, true)
		if err != nil {
			return nil, err
		}
		f, err := rolloutFile("bench-plan")
		if err != nil {
			s.Close()
			return nil, err
		}
		var m0, m1 runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&m0)
		p, err := plan.Build(ctx, s.Client, f, 0)
		s.tr.CloseIdleConnections()
		runtime.GC()
		runtime.ReadMemStats(&m1)
		runtime.KeepAlive(p)
		s.Close()
		if err != nil {
			return nil, err
		}
		r := reading{kept: float64(int64(m1.HeapAlloc)-int64(m0.HeapAlloc)) / float64(n), alloc: float64(m1.TotalAlloc-m0.TotalAlloc) / float64(n)}
		b.progress("memory: plan of %d CVMs keeps %.0f B/CVM, allocated %.0f B/CVM", n, r.kept, r.alloc)
		got = append(got, r)
	}
	return []Row{{
		Stage:    fmt.Sprintf("planner bytes per CVM (kept / allocated), %s vs %s", thousands(int64(sizes[1])), thousands(int64(sizes[0]))),
		Ours:     fmt.Sprintf("%.0f / %.0f B", got[1].kept, got[1].alloc),
		Baseline: fmt.Sprintf("%.0f / %.0f B", got[0].kept, got[0].alloc),
		Ratio:    fmt.Sprintf("%.2fx", got[1].kept/got[0].kept),
		Result:   "info",
		Note:     "kept: HeapAlloc after GC with the plan alive, minus before; allocated: TotalAlloc delta over Build, which includes the in-process simulator's side of each request; ratio is kept per CVM, larger over smaller fleet (1.0 = linear)",
	}}, nil
}
