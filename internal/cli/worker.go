package cli

import (
	"context"
	"flag"
	"fmt"
	"net/url"
	"regexp"
	"time"

	"github.com/phalafleet/rollout/internal/api"
	"github.com/phalafleet/rollout/internal/control"
	"github.com/phalafleet/rollout/internal/dashboard"
	"github.com/phalafleet/rollout/internal/notify"
	"github.com/phalafleet/rollout/internal/plan"
	"github.com/phalafleet/rollout/internal/redisconn"
	"github.com/phalafleet/rollout/internal/store"
	build "github.com/phalafleet/rollout/internal/version"
	"github.com/phalafleet/rollout/internal/worker"
)

// RunWorker is `worker` (cmd/worker and `rollout worker`): process tasks
// until ctx ends (SIGTERM), then drain in-flight ones.
func RunWorker(ctx context.Context, e *Env, args []string) error {
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	redisFlag := fs.String("redis", "", "Redis URL (default $REDIS_URL)")
	conc := fs.Int("concurrency", 50, "CVMs processed at once by this worker")
	drain := fs.Duration("shutdown-timeout", worker.DefaultShutdownTimeout, "how long in-flight CVMs may finish after SIGTERM")
	version := fs.String("api-version", "", "X-Phala-Version to send")
	var lf logFlags
	lf.register(fs, true)
	var httpAddr string
	fs.StringVar(&httpAddr, "http-addr", "", "serve /metrics (Prometheus), /healthz, /readyz and the read-only web dashboard on this address (e.g. :9090)")
	fs.StringVar(&httpAddr, "metrics-addr", "", "the older name of --http-addr")
	rate := fs.Float64("rate", 0, "default API requests/s per rollout, across all workers, where the file sets no rate.per_second")
	inFlight := fs.Int("max-in-flight", 0, "default CVMs in flight per rollout, across all workers, where the file sets no rate.max_in_flight")
	notifyURL := fs.String("notify-url", "", "also POST every event of every rollout recorded while this worker runs to this http(s) URL")
	notifySecret := fs.String("notify-secret-env", "", "the environment variable holding --notify-url's signing secret (its NAME)")
	notifyAge := fs.Duration("notify-max-age", notify.DefaultMaxAge, "retry a notification with backoff until the event is this old")
	notifyLease := fs.Duration("notify-lease", notify.DefaultLease, "how long a claimed notification is this worker's before another may send it again")
	notifyTimeout := fs.Duration("notify-timeout", notify.DefaultTimeout, "time limit of one notification POST (below --notify-lease)")
	dashboardURL := fs.String("dashboard-url", "", "base URL of the dashboard, for the link in notifications")
	stall := fs.Duration("stall-after", control.DefaultStallAfter, "report a running rollout stalled after this long without progress (0: never)")
	var retention age
	fs.Var(&retention, "retention", "prune finished rollouts this long after their end, once an hour (e.g. 90d; off by default)")
	showVersion := fs.Bool("version", false, "print the version and exit")
	keyFile := keyFileFlag(fs)
	if err := noArgs(fs, args); err != nil {
		return err
	}
	if *showVersion {
		fmt.Fprintln(e.Stdout, "worker", build.Get())
		return nil
	}
	e, err := e.withKeyFile(*keyFile)
	if err != nil {
		return err
	}
	if *conc < 1 {
		return usageErr("worker: --concurrency %d: must be at least 1", *conc)
	}
	def := store.NotifyTarget{URL: *notifyURL, SecretEnv: *notifySecret}
	if err := checkNotifyFlags(def, *notifyLease, *notifyTimeout, *notifyAge, *dashboardURL); err != nil {
		return err
	}
	if *stall == 0 {
		*stall = -1 // never
	}
	log, err := lf.logger(e)
	if err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	c, err := workerClient(e, *version)
	if err != nil {
		return err
	}
	// A key the API refuses would fail every CVM the worker touches: stop
	// here instead. Any other trouble (the API down) is the queue's to ride
	// out, so the worker starts anyway.
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	kerr := c.CheckKey(cctx)
	cancel()
	if st := api.StatusOf(kerr); st == 401 || st == 403 {
		return fmt.Errorf("worker: %w", keyHint(kerr))
	}
	rdb, err := redisconn.OpenPool(ctx, redisURL(e, *redisFlag), *conc+64)
	if err != nil {
		return err
	}
	defer rdb.Close()
	if kerr != nil {
		log.Warn("could not check the API key; starting anyway", "err", kerr)
	}
	log.Info("worker started", "concurrency", *conc)
	err = worker.Run(ctx, rdb, worker.Config{Concurrency: *conc, ShutdownTimeout: *drain, API: c, Log: log, ControllerInterval: time.Second,
		Rate: plan.Rate{PerSecond: *rate, MaxInFlight: *inFlight}, HTTPAddr: httpAddr,
		Root:          dashboard.New(dashboard.Config{RDB: rdb, Log: log}), // read-only: actions need `rollout dashboard --token-file`
		Notify:        notify.Options{Lease: *notifyLease, Timeout: *notifyTimeout, MaxAge: *notifyAge, Dashboard: *dashboardURL, Getenv: e.Getenv},
		NotifyDefault: def, Retention: retention.d, StallAfter: *stall})
	log.Info("worker stopped")
	return err
}

// checkNotifyFlags judges the worker's notification flags: one error line
// naming the flag.
func checkNotifyFlags(def store.NotifyTarget, lease, timeout, maxAge time.Duration, dashboard string) error {
	for _, u := range []struct{ flag, v string }{{"--notify-url", def.URL}, {"--dashboard-url", dashboard}} {
		if u.v == "" {
			continue
		}
		p, err := url.Parse(u.v)
		if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" || p.User != nil {
			return fmt.Errorf("worker: %s: not an absolute http(s) URL without credentials", u.flag) // the URL may carry a token: not repeated
		}
	}
	if def.SecretEnv != "" && !envNamePattern.MatchString(def.SecretEnv) {
		return fmt.Errorf("worker: --notify-secret-env: not an environment variable name (give the variable's NAME, not the secret)")
	}
	if def.SecretEnv != "" && def.URL == "" {
		return fmt.Errorf("worker: --notify-secret-env needs --notify-url")
	}
	if lease <= 0 || timeout <= 0 || timeout >= lease {
		return fmt.Errorf("worker: --notify-timeout %s must be above 0 and below --notify-lease %s (a POST must end before another worker may send it again)", timeout, lease)
	}
	if maxAge <= 0 {
		return fmt.Errorf("worker: --notify-max-age %s: must be above 0", maxAge)
	}
	return nil
}

var envNamePattern = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
