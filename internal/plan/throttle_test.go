package plan_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/phalafleet/rollout/internal/api"
	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/phalafleet/rollout/internal/plan"
	"github.com/phalafleet/rollout/internal/testutil"
)

const throttledFile = `name: throttled
selector: {names: ["prod-*", "staging-*"]}
target: {kms_urls: ["https://kms-new.example:8000"], gateway_urls: ["https://gw-new.example:8000"]}
stages: [5, "50%", "100%"]
`

// TestThrottledPlanMatchesUnthrottled: against an API that answers most
// reads 429 (with Retry-After), the plan waits the throttle out and is the
// plan of the calm API: the same counts, rows and hash, and no CVM planned
// as patch because its config could not be read. Runs on the bubble's
// fake clock, so the Retry-After waits cost no real time.
func TestThrottledPlanMatchesUnthrottled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := testutil.InBubble(t, sim.FleetOptions{CVMs: 300, Seed: 21, AtTargetShare: 0.1,
			AtTargetKMS: []string{"https://kms-new.example:8000"}, AtTargetGateway: []string{"https://gw-new.example:8000"}})
		f := mustParse(t, throttledFile)
		ctx := context.Background()
		calm, err := plan.Build(ctx, b.API, f, 0)
		if err != nil {
			t.Fatal(err)
		}
		b.Sim.SetFaults(sim.Faults{RateLimit: 5, RateBurst: 1})
		for run := range 2 {
			before := b.Sim.Stats().Throttled
			p, err := plan.Build(ctx, b.API, f, 0)
			if err != nil {
				t.Fatalf("run %d: %v", run, err)
			}
			if b.Sim.Stats().Throttled == before {
				t.Fatalf("run %d: the simulator throttled nothing: the test tests nothing", run)
			}
			for _, it := range p.Items {
				if strings.Contains(it.Reason, "unreadable") {
					t.Errorf("run %d: %s planned %s: %s", run, it.CVMID, it.Action, it.Reason)
				}
			}
			for _, a := range []plan.Action{plan.Patch, plan.Unchanged, plan.Skip, plan.Unknown} {
				if p.Counts[a] != calm.Counts[a] {
					t.Errorf("run %d: %d %s, the calm plan has %d", run, p.Counts[a], a, calm.Counts[a])
				}
			}
			if p.Hash != calm.Hash {
				t.Errorf("run %d: plan hash %s, the calm plan's is %s", run, p.Hash, calm.Hash)
			}
		}
	})
}

// TestPlanOfSilentAPIEndsWithinReadTimeout: an API that answers every
// request 503, or never answers at all, ends the plan with one error line
// within the read timeout (of fake time).
func TestPlanOfSilentAPIEndsWithinReadTimeout(t *testing.T) {
	for _, tt := range []struct {
		name   string
		faults sim.Faults
		want   string
	}{
		{"down", sim.Faults{Down: true}, "HTTP 503"},
		{"hangs", sim.Faults{HangRate: 1}, "request abandoned"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				b := testutil.InBubble(t, sim.FleetOptions{CVMs: 50, Seed: 2})
				b.Sim.SetFaults(tt.faults)
				f := mustParse(t, throttledFile)
				const timeout = 45 * time.Second
				start := time.Now()
				_, err := plan.BuildWith(context.Background(), b.API, f, plan.Options{ReadTimeout: timeout})
				took := time.Since(start)
				if err == nil {
					t.Fatal("Build succeeded against an API that does not answer")
				}
				msg := err.Error()
				if !strings.HasPrefix(msg, "listing CVMs: no usable answer from the API for 45s (read timeout): ") ||
					!strings.Contains(msg, tt.want) || strings.Contains(msg, "\n") {
					t.Errorf("error = %q", msg)
				}
				if took > timeout+time.Second {
					t.Errorf("took %s, read timeout %s", took, timeout)
				}
			})
		})
	}
}

// failing reads the simulator's list but fails the config reads of the
// CVMs in fail (all, if nil) with a 503 whose request id changes each time.
type failing struct {
	plan.Reader
	fail map[string]bool
	n    atomic.Int64
}

func (r *failing) GetNetworkConfig(ctx context.Context, id string) (*api.NetworkConfig, error) {
	if r.fail == nil || r.fail[id] {
		return nil, &api.Error{Method: "GET", Path: "/cvms/" + id + "/network-config", StatusCode: 503,
			Message: "Service Unavailable", RequestID: fmt.Sprint("req_", r.n.Add(1))}
	}
	return r.Reader.GetNetworkConfig(ctx, id)
}

// TestUnreadableConfigIsUnknown: a CVM whose config read keeps failing is
// its own action, unknown: counted, never patch, and hashed without its
// (changing) error text, so the same fleet gives the same hash each time,
// and a different one from the plan that could read it.
func TestUnreadableConfigIsUnknown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := testutil.InBubble(t, sim.FleetOptions{CVMs: 100, Seed: 5})
		f := mustParse(t, throttledFile)
		ctx := context.Background()
		calm, err := plan.Build(ctx, b.API, f, 0)
		if err != nil {
			t.Fatal(err)
		}
		var victim string
		for _, it := range calm.Items {
			if it.Action == plan.Patch {
				victim = it.CVMID
				break
			}
		}
		r := &failing{Reader: b.API, fail: map[string]bool{victim: true}}
		var hashes []string
		for run := range 2 {
			start := time.Now()
			p, err := plan.BuildWith(ctx, r, f, plan.Options{ReadTimeout: time.Minute})
			if err != nil {
				t.Fatal(err)
			}
			if took := time.Since(start); took < time.Minute || took > time.Minute+time.Second {
				t.Errorf("run %d took %s; the failing read is retried for the read timeout (1m)", run, took)
			}
			for _, it := range p.Items {
				want := calm.Items[slices.IndexFunc(calm.Items, func(c plan.Item) bool { return c.CVMID == it.CVMID })].Action
				if it.CVMID == victim {
					want = plan.Unknown
					if !strings.HasPrefix(it.Reason, "current config unreadable: no usable answer from the API for 1m0s (read timeout): GET /cvms/"+victim+"/network-config: HTTP 503") || it.Stage != -1 {
						t.Errorf("run %d: unknown row %+v", run, it)
					}
				}
				if it.Action != want {
					t.Errorf("run %d: %s is %s, want %s", run, it.CVMID, it.Action, want)
				}
			}
			if p.Counts[plan.Unknown] != 1 || p.Counts[plan.Patch] != calm.Counts[plan.Patch]-1 {
				t.Errorf("run %d: counts %v, calm %v", run, p.Counts, calm.Counts)
			}
			hashes = append(hashes, p.Hash)
		}
		if hashes[0] != hashes[1] || hashes[0] == calm.Hash {
			t.Errorf("hashes %v (calm %s): want two equal ones, unlike the calm one", hashes, calm.Hash)
		}
	})
}

// TestNoConfigReadableFailsThePlan: the list answers, no config read does:
// one error line within the read timeout, not a plan of unknowns.
func TestNoConfigReadableFailsThePlan(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := testutil.InBubble(t, sim.FleetOptions{CVMs: 100, Seed: 5})
		start := time.Now()
		_, err := plan.BuildWith(context.Background(), &failing{Reader: b.API}, mustParse(t, throttledFile), plan.Options{ReadTimeout: 30 * time.Second})
		if err == nil || !strings.HasPrefix(err.Error(), "reading network configs: none of ") ||
			!strings.Contains(err.Error(), "could be read: no usable answer from the API for 30s (read timeout): GET /cvms/") {
			t.Fatalf("err = %v", err)
		}
		if took := time.Since(start); took > 31*time.Second {
			t.Errorf("took %s, read timeout 30s", took)
		}
	})
}

// dated answers each CVM's first config read 503 with a Retry-After given
// as an HTTP date, and records when each CVM was read.
type dated struct {
	next http.RoundTripper
	mu   sync.Mutex
	seen map[string][]time.Time
}

func (d *dated) RoundTrip(r *http.Request) (*http.Response, error) {
	if !strings.HasSuffix(r.URL.Path, "/network-config") {
		return d.next.RoundTrip(r)
	}
	d.mu.Lock()
	n := len(d.seen[r.URL.Path])
	d.seen[r.URL.Path] = append(d.seen[r.URL.Path], time.Now())
	d.mu.Unlock()
	if n > 0 {
		return d.next.RoundTrip(r)
	}
	rec := httptest.NewRecorder()
	rec.Header().Set("Retry-After", time.Now().Add(5*time.Second).UTC().Format(http.TimeFormat))
	rec.WriteHeader(http.StatusServiceUnavailable)
	res := rec.Result()
	res.Request = r
	return res, nil
}

// TestPlanHonoursRetryAfterDate: a 503 with Retry-After as an HTTP date is
// waited out (the client itself tries once here), and the plan is the
// calm one.
func TestPlanHonoursRetryAfterDate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		time.Sleep(time.Now().Truncate(time.Second).Add(time.Second).Sub(time.Now())) // on a whole second
		b := testutil.InBubble(t, sim.FleetOptions{CVMs: 60, Seed: 9})
		f := mustParse(t, throttledFile)
		ctx := context.Background()
		calm, err := plan.Build(ctx, b.API, f, 0)
		if err != nil {
			t.Fatal(err)
		}
		d := &dated{next: b.Sim.Transport(), seen: map[string][]time.Time{}}
		c, err := api.New(api.Config{APIKey: b.Key, Prefix: b.SimURL, ReadTries: 1, HTTPClient: &http.Client{Transport: d}})
		if err != nil {
			t.Fatal(err)
		}
		p, err := plan.Build(ctx, c, f, 0)
		if err != nil {
			t.Fatal(err)
		}
		if p.Hash != calm.Hash || fmt.Sprint(p.Counts) != fmt.Sprint(calm.Counts) {
			t.Errorf("plan %s %v, calm %s %v", p.Hash, p.Counts, calm.Hash, calm.Counts)
		}
		if len(d.seen) == 0 {
			t.Fatal("no config read")
		}
		for path, at := range d.seen {
			if len(at) != 2 || at[1].Sub(at[0]) < 4*time.Second {
				t.Errorf("%s read at %v: want twice, 5s apart (Retry-After)", path, at)
			}
		}
	})
}

func mustParse(t *testing.T, y string) *plan.File {
	t.Helper()
	f, err := plan.Parse("t.yaml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	return f
}
