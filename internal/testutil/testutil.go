// Package testutil sets up what the end-to-end tests stand on: a Redis
// (miniredis, or the real one at $REDIS_URL), the simulator over HTTP, a
// client, and in-process workers.
package testutil

import (
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/phalafleet/rollout/internal/api"
	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/phalafleet/rollout/internal/control"
	"github.com/phalafleet/rollout/internal/plan"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/worker"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// Redis returns a client on a clean database: the real Redis at $REDIS_URL
// (flushed; run such packages with -p 1), else a fresh miniredis.
func Redis(t testing.TB) (redis.UniversalClient, string) {
	t.Helper()
	url := os.Getenv("REDIS_URL")
	if url == "" {
		m := miniredis.RunT(t)
		url = "redis://" + m.Addr() + "/0"
		// Let TTLs run as on a real Redis (locks and leases expire).
		stop := make(chan struct{})
		t.Cleanup(func() { close(stop) })
		go func() {
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			last := time.Now()
			for {
				select {
				case <-stop:
					return
				case now := <-tick.C:
					m.FastForward(now.Sub(last))
					last = now
				}
			}
		}()
	}
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	opt.PoolSize = 64
	opt.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	rdb := redis.NewClient(opt)
	if err := rdb.FlushDB(context.Background()).Err(); err != nil {
		t.Fatalf("redis %s: %v", url, err)
	}
	t.Cleanup(func() { rdb.Close() })
	return rdb, url
}

// Bundle is one end-to-end setup.
type Bundle struct {
	RDB      redis.UniversalClient
	RedisURL string
	Store    *store.Store
	Sim      *sim.Server
	SimURL   string // API prefix
	Key      string
	API      *api.Client
	// Tick is the controller interval of Workers (fine on a real clock,
	// coarser in a bubble, where every tick of fake time costs real CPU).
	Tick time.Duration
}

// Setup starts the simulator with fleet and a Redis.
func Setup(t testing.TB, fleet sim.FleetOptions) *Bundle {
	t.Helper()
	rdb, url := Redis(t)
	return SetupOn(t, fleet, rdb, url)
}

// SetupOn is Setup on a Redis the test opened (a Cluster, Sentinels, TLS):
// rdb, which url names for worker processes.
func SetupOn(t testing.TB, fleet sim.FleetOptions, rdb redis.UniversalClient, url string) *Bundle {
	t.Helper()
	b := &Bundle{Key: sim.NewAPIKey(), RDB: rdb, RedisURL: url}
	b.Store = store.New(b.RDB)
	b.Sim = sim.New(sim.Options{APIKey: b.Key, Fleet: fleet})
	hs := httptest.NewServer(b.Sim)
	t.Cleanup(hs.Close)
	b.SimURL = hs.URL + "/api/v1"
	var err error
	b.API, err = api.New(api.Config{APIKey: b.Key, Prefix: b.SimURL, Timeout: 5 * time.Second, MaxBackoff: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Workers runs n in-process workers until the test ends (or stop is called).
func (b *Bundle) Workers(t testing.TB, n, concurrency int) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, n)
	for range n {
		go func() {
			defer func() { done <- struct{}{} }()
			_ = worker.Run(ctx, b.RDB, worker.Config{Concurrency: concurrency, API: b.API, ControllerInterval: max(b.Tick, 50*time.Millisecond), ShutdownTimeout: 5 * time.Second})
		}()
	}
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		for range n {
			<-done
		}
	}
	t.Cleanup(stop)
	return stop
}

// WaitState polls until the rollout reaches one of states, or fails the test.
func (b *Bundle) WaitState(t testing.TB, id string, timeout time.Duration, states ...store.RolloutState) *store.Rollout {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		r, err := b.Store.Get(context.Background(), id)
		if err == nil {
			for _, s := range states {
				if r.State == s {
					return r
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("rollout %s: not %v after %s (now %+v, err %v)", id, states, timeout, r, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// WriteFile writes a rollout file into a temp dir and returns its path.
func WriteFile(t testing.TB, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "rollout.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// Apply parses yaml, plans it against the simulator and applies it.
func (b *Bundle) Apply(t testing.TB, yaml string) *plan.Plan {
	t.Helper()
	f, err := plan.Parse("test.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	p, err := plan.Build(ctx, b.API, f, 8)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Control().Apply(ctx, p, "test", time.Now(), control.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	return p
}

// Control returns a control.Control on the bundle's Redis.
func (b *Bundle) Control() *control.Control {
	return control.New(b.RDB)
}

// Records returns every CVM record of a rollout by CVM id.
func (b *Bundle) Records(t testing.TB, id string) map[string]store.CVMRecord {
	t.Helper()
	out := map[string]store.CVMRecord{}
	if err := b.Store.Records(context.Background(), id, func(r store.CVMRecord) error { out[r.CVMID] = r; return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}
