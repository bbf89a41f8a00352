// Package worker runs the asynq server that processes rollout tasks, plus
// the controller loop, until its context ends, then drains.
package worker

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/phalafleet/rollout/internal/control"
	"github.com/phalafleet/rollout/internal/metrics"
	"github.com/phalafleet/rollout/internal/notify"
	"github.com/phalafleet/rollout/internal/plan"
	"github.com/phalafleet/rollout/internal/ratelimit"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/tasks"
	"github.com/redis/go-redis/v9"
)

// Config configures a worker process.
type Config struct {
	Concurrency int
	// ShutdownTimeout is how long in-flight tasks may run after SIGTERM;
	// keep it above one CVM's attempt so a drain never cuts a PATCH short.
	ShutdownTimeout time.Duration
	API             tasks.API
	// Rate is the default rate section for rollouts whose file leaves
	// fields unset (`worker --rate`, `--max-in-flight`).
	Rate plan.Rate
	Name string // host/pid by default
	Log  *slog.Logger
	// ControllerInterval is how often the controller looks at rollouts.
	ControllerInterval time.Duration
	// HTTPAddr, when set (e.g. :9090), serves /metrics, /healthz (the
	// process is alive), /readyz (Redis answers) and Root at /.
	HTTPAddr string
	// Root is served at / on HTTPAddr (the web dashboard); nil: 404.
	Root http.Handler
	// Fetchers is how many asynq servers share Concurrency (0: Fetchers
	// picks). See fetchers.
	Fetchers int
	// Notify configures the delivery of notifications (Store, Log and
	// Observe are filled in); NotifyDefault, when its URL is set, is the
	// target every rollout recorded while this worker runs also gets.
	Notify        notify.Options
	NotifyDefault store.NotifyTarget
	// Retention prunes finished rollouts this long after their end (0: never).
	Retention time.Duration
	// StallAfter: see control.Controller.StallAfter.
	StallAfter time.Duration
}

// fetchers is how many asynq servers a worker runs. An asynq server takes
// tasks off the queue one at a time (one Redis round trip each, whatever
// its concurrency), so against a fast API that one loop, not the handlers,
// caps a worker: measured here, one server at concurrency 50 kept about 1.1
// of 2 cores busy; two kept 1.7 and did 15-25% more CVMs a second. One
// server per 25 handlers, at most 8: each server also keeps its own
// heartbeat, pub/sub connection and maintenance loops.
func fetchers(concurrency, asked int) int {
	if asked > 0 {
		return min(asked, concurrency)
	}
	return max(1, min(8, concurrency/25))
}

// DefaultShutdownTimeout is above the default per-call timeout (30s).
const DefaultShutdownTimeout = 45 * time.Second

// Run processes tasks until ctx is done, then stops taking new ones and
// waits for in-flight ones up to ShutdownTimeout.
func Run(ctx context.Context, rdb redis.UniversalClient, cfg Config) error {
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 50
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = DefaultShutdownTimeout
	}
	if cfg.Name == "" {
		host, _ := os.Hostname()
		cfg.Name = fmt.Sprintf("%s/%d", host, os.Getpid())
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.ControllerInterval <= 0 {
		cfg.ControllerInterval = time.Second
	}
	st := store.New(rdb)
	lim := ratelimit.New(rdb)
	// Registered before any slot is taken, unregistered once drained: the
	// controller frees the in-flight slots of a worker whose heartbeat
	// lapses (ratelimit.Heartbeat).
	unregister, err := lim.Heartbeat(context.WithoutCancel(ctx), cfg.Name, cfg.Log.Warn)
	if err != nil {
		return err
	}
	defer unregister()
	h := &tasks.Handler{Store: st, API: cfg.API, Worker: cfg.Name, Pacer: &tasks.Pacer{L: lim, Defaults: cfg.Rate}, Log: cfg.Log}
	var mx *metrics.Metrics
	if cfg.HTTPAddr != "" {
		mx = metrics.New(metrics.Options{Store: st, Owner: cfg.Name, Rate: cfg.Rate})
		h.API, h.Observer = mx.Instrument(cfg.API), mx
	}
	// The servers share the handler (and its spec cache); each gets its
	// share of the concurrency.
	mux := asynq.NewServeMux()
	mux.Handle(tasks.TypeCVM, h)
	n := fetchers(cfg.Concurrency, cfg.Fetchers)
	var srvs []*asynq.Server
	stop := func() {
		// All stop taking tasks first (each Stop waits for its fetch loop,
		// so together), then drain together: one ShutdownTimeout in all.
		var wg sync.WaitGroup
		for _, srv := range srvs {
			wg.Go(srv.Stop)
		}
		wg.Wait()
		for _, srv := range srvs {
			wg.Go(srv.Shutdown)
		}
		wg.Wait()
	}
	for i := range n {
		srv := asynq.NewServerFromRedisClient(rdb, asynq.Config{
			Concurrency:              cfg.Concurrency/n + btoi(i < cfg.Concurrency%n),
			Queues:                   map[string]int{tasks.Queue: 1},
			IsFailure:                tasks.IsFailure,
			RetryDelayFunc:           h.RetryDelay,
			ShutdownTimeout:          cfg.ShutdownTimeout,
			DelayedTaskCheckInterval: time.Second,
			TaskCheckInterval:        200 * time.Millisecond,
			// Task contexts must outlive SIGTERM so in-flight PATCHes finish.
			BaseContext: func() context.Context { return context.WithoutCancel(ctx) },
			LogLevel:    asynq.WarnLevel,
			Logger:      asynqLogger{cfg.Log},
		})
		if err := srv.Start(mux); err != nil {
			stop()
			return fmt.Errorf("starting worker: %w", err)
		}
		srvs = append(srvs, srv)
	}
	if mx != nil {
		ln, err := net.Listen("tcp", cfg.HTTPAddr)
		if err != nil {
			stop()
			return fmt.Errorf("--http-addr: %v", err)
		}
		hs := &http.Server{Handler: mx.Handler(cfg.Root), ReadHeaderTimeout: 5 * time.Second}
		go hs.Serve(ln)
		defer hs.Close()
		cfg.Log.Info("http listening", "addr", ln.Addr().String(), "paths", "/metrics /healthz /readyz")
	}
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{}, 3)
	// Notifications in their own goroutines: a slow receiver holds up
	// nothing else. Deliveries under way finish (bounded by their timeout).
	d := &notify.Deliverer{Options: cfg.Notify, Store: st, Log: cfg.Log, Worker: cfg.Name}
	if mx != nil {
		d.Observe = mx.Notified
	}
	go func() { defer func() { done <- struct{}{} }(); d.Run(cctx) }()
	go func() {
		defer func() { done <- struct{}{} }()
		if cfg.NotifyDefault.URL == "" {
			return
		}
		t := time.NewTicker(notifyDefaultTTL / 4)
		defer t.Stop()
		for {
			if err := st.PublishNotifyDefault(cctx, cfg.NotifyDefault, notifyDefaultTTL); err != nil && cctx.Err() == nil {
				cfg.Log.Warn("publishing --notify-url", "err", store.Full(err))
			}
			select {
			case <-cctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	go func() {
		defer func() { done <- struct{}{} }()
		c := control.New(rdb)
		hk := &housekeeping{ctl: c, log: cfg.Log, retention: cfg.Retention}
		ctl := &control.Controller{Control: c, Owner: cfg.Name, Log: cfg.Log, Reaper: lim,
			StallAfter: cfg.StallAfter, OnLead: hk.onLead, PlanPace: lim.PlanPacer}
		if r, ok := cfg.API.(plan.Reader); ok {
			ctl.Planner = r
		}
		ctl.Run(cctx, cfg.ControllerInterval)
	}()
	<-ctx.Done()
	cancel()
	for range cap(done) {
		<-done
	}
	stop()
	return nil
}

// notifyDefaultTTL bounds how long a --notify-url outlives its workers.
const notifyDefaultTTL = 2 * time.Minute

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

type asynqLogger struct{ l *slog.Logger }

func (a asynqLogger) Debug(args ...any) { a.l.Debug(fmt.Sprint(args...)) }
func (a asynqLogger) Info(args ...any)  { a.l.Info(fmt.Sprint(args...)) }
func (a asynqLogger) Warn(args ...any)  { a.l.Warn(fmt.Sprint(args...)) }
func (a asynqLogger) Error(args ...any) { a.l.Error(fmt.Sprint(args...)) }
func (a asynqLogger) Fatal(args ...any) { a.l.Error(fmt.Sprint(args...)); os.Exit(1) }
