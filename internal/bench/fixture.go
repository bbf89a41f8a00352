package bench

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/phalafleet/rollout/internal/api"
	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/phalafleet/rollout/internal/control"
	"github.com/phalafleet/rollout/internal/plan"
	"github.com/phalafleet/rollout/internal/store"
)

// benchFile is the rollout every stage applies: every CVM to a new KMS and
// gateway, defaults otherwise (one stage, no rate limit, no budget).
const benchFile = `name: %s
selector: {all: true}
target:
  kms_urls: ["https://kms-new.bench.example:8000"]
  gateway_urls: ["https://gateway-new.bench.example:8000"]
`

func rolloutFile(name string) (*plan.File, error) {
	return plan.Parse(name+".yaml", []byte(fmt.Sprintf(benchFile, name)))
}

// simAPI is the simulator served over loopback HTTP, and a client of it.
type simAPI struct {
	Sim    *sim.Server
	Key    string
	Prefix string
	Client *api.Client
	tr     *http.Transport
	hs     *http.Server
}

// startSim serves a fleet of n CVMs on 127.0.0.1 at zero latency with no
// limits. patchable makes every node's VMM new enough, so every CVM gets
// the full GET, GET, PATCH; otherwise the generator's defaults (10% old
// VMMs, 2% unknown) apply.
func startSim(n int, patchable bool) (*simAPI, error) {
	fleet := sim.FleetOptions{CVMs: n, Seed: 1}
	if patchable {
		fleet.OldVMMShare, fleet.UnknownVMMShr = 1e-12, 1e-12 // 0 means "default"
	}
	s := &simAPI{Key: sim.NewAPIKey()}
	s.Sim = sim.New(sim.Options{APIKey: s.Key, Fleet: fleet})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s.hs = &http.Server{Handler: s.Sim, ReadHeaderTimeout: 10 * time.Second}
	go s.hs.Serve(ln)
	s.Prefix = "http://" + ln.Addr().String() + "/api/v1"
	// The same transport api.New builds by default, kept so idle
	// connections can be closed before a memory reading.
	s.tr = http.DefaultTransport.(*http.Transport).Clone()
	s.tr.MaxIdleConnsPerHost = 256
	s.Client, err = api.New(api.Config{APIKey: s.Key, Prefix: s.Prefix, HTTPClient: &http.Client{Transport: s.tr}})
	if err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func (s *simAPI) Close() {
	s.tr.CloseIdleConnections()
	s.hs.Close()
}

// syntheticPlan is what plan.Build returns for ids when every CVM is to be
// patched, without reading the API: the enqueue, process and memory stages
// measure apply and the workers, not the planner.
func syntheticPlan(f *plan.File, ids []string) *plan.Plan {
	p := &plan.Plan{Name: f.Name, File: f, SpecHash: f.Hash(), Counts: map[plan.Action]int{plan.Patch: len(ids)}}
	p.ID = f.Name + "-" + p.SpecHash[:8]
	p.Items = make([]plan.Item, len(ids))
	for i, id := range ids {
		p.Items[i] = plan.Item{CVMID: id, Name: fmt.Sprintf("prod-web-%06d", i+1), Status: "running", Action: plan.Patch}
	}
	p.Stages = plan.StagePlan(f.Stages, len(ids), f.Bake)
	return p
}

func cvmIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("cvm_%08d", i+1)
	}
	return ids
}

// apply records p and queues its tasks, as `rollout apply` does.
func (b *runner) apply(ctx context.Context, p *plan.Plan) (control.Applied, error) {
	c := control.New(b.rdb)
	a, err := c.Apply(ctx, p, "bench", time.Now(), control.ApplyOptions{})
	if err == nil && a.Queued != len(p.Items) {
		err = fmt.Errorf("apply queued %d tasks, want %d", a.Queued, len(p.Items))
	}
	return a, err
}

// waitDone polls the rollout's counters until no CVM is pending or
// running, and returns the record it saw last.
func waitDone(ctx context.Context, st *store.Store, id string, limit time.Duration) (*store.Rollout, error) {
	deadline := time.Now().Add(limit)
	for {
		r, err := st.Get(ctx, id)
		if err != nil {
			return nil, err
		}
		if r.Counts[store.Pending]+r.Counts[store.Running] == 0 {
			return r, nil
		}
		if time.Now().After(deadline) {
			return r, fmt.Errorf("rollout %s not done after %s: %v", id, limit, r.Counts)
		}
		select {
		case <-ctx.Done():
			return r, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}
