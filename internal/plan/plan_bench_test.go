package plan

import (
	"context"
	"fmt"
	"testing"

	"github.com/phalafleet/rollout/internal/api"
)

// benchReader is an in-memory Reader with nothing else in it: no locks, no
// bookkeeping, so the benchmark measures Build.
type benchReader struct {
	cvms    []api.CVM
	configs map[string]*api.NetworkConfig
}

func (r *benchReader) ListCVMs(context.Context) ([]api.CVM, error) {
	return append([]api.CVM(nil), r.cvms...), nil
}

func (r *benchReader) GetNetworkConfig(_ context.Context, id string) (*api.NetworkConfig, error) {
	c := *r.configs[id]
	return &c, nil
}

func newBenchReader(n int) *benchReader {
	r := &benchReader{configs: make(map[string]*api.NetworkConfig, n)}
	versions := []string{"0.5.8", "v0.5.10 (git:9f1c2ab)", "0.5.6", "0.6.0-dev"}
	for i := range n {
		id := fmt.Sprintf("cvm_%08d", i)
		c := cvm(id, fmt.Sprintf("prod-web-%06d", i), "app", "running", fmt.Sprintf("prod%d", i%400), "eu-central", versions[i%len(versions)])
		r.cvms = append(r.cvms, c)
		r.configs[id] = &api.NetworkConfig{KMSURLs: []string{"https://kms-old.example:8000"}, GatewayURLs: []string{"https://gateway-old.example:8000"}}
	}
	return r
}

// BenchmarkBuild plans a rollout of every CVM of a 20,000-CVM fleet (a
// quarter on a VMM too old) against an in-memory API: what Build itself
// costs, per CVM.
func BenchmarkBuild(b *testing.B) {
	const n = 20_000
	r := newBenchReader(n)
	f, err := Parse("bench.yaml", []byte("name: bench\nselector: {all: true}\ntarget:\n  kms_urls: [\"https://kms-new.example:8000\"]\n"))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		p, err := Build(context.Background(), r, f, 0)
		if err != nil || len(p.Items) != n {
			b.Fatalf("%d items: %v", len(p.Items), err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/CVM")
}

// BenchmarkMatches is the selector over one CVM with every condition set.
func BenchmarkMatches(b *testing.B) {
	s := Selector{Names: strs("prod-*", "staging-*"), Regions: strs("eu-central", "us-east"), Statuses: strs("running"), ExcludeIDs: strs("cvm_x", "cvm_y")}
	c := cvm("cvm_1", "prod-web-000001", "app", "running", "prod7", "eu-central", "0.5.8")
	for b.Loop() {
		if !s.Matches(&c) {
			b.Fatal("no match")
		}
	}
}
