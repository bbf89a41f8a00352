package plan

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/phalafleet/rollout/internal/api"
)

func strs(v ...string) []Str {
	out := make([]Str, len(v))
	for i, s := range v {
		out[i] = Str{V: s, Line: i + 1}
	}
	return out
}

func ptr[T any](v T) *T { return &v }

// cvm builds a CVM; node, region and vmm "" mean null.
func cvm(id, name, app, status, node, region, vmm string) api.CVM {
	c := api.CVM{ID: id, Name: name, Status: status, NodeInfo: &api.NodeInfo{}}
	if app != "" {
		c.AppID = ptr(app)
	}
	if node != "" {
		c.NodeInfo.Name = ptr(node)
	}
	if region != "" {
		c.NodeInfo.Region = ptr(region)
	}
	if vmm != "" {
		c.NodeInfo.Version = ptr(vmm)
	}
	return c
}

func TestSelectorMatches(t *testing.T) {
	web1 := cvm("cvm_1", "prod-web-1", "app_a", "running", "prod7", "eu-central", "0.5.8")
	db := cvm("cvm_2", "prod-db", "app_b", "stopped", "prod8", "us-east", "0.5.8")
	dev := cvm("cvm_3", "dev-web", "", "running", "dev1", "eu-central", "0.5.8")
	bare := api.CVM{ID: "cvm_4", Name: "orphan", Status: "running"} // null node_info, null app_id
	all := []api.CVM{web1, db, dev, bare}

	tests := []struct {
		name string
		sel  Selector
		want []string
	}{
		{"all", Selector{All: true}, []string{"cvm_1", "cvm_2", "cvm_3", "cvm_4"}},
		{"all minus excluded", Selector{All: true, ExcludeIDs: strs("cvm_2", "cvm_4")}, []string{"cvm_1", "cvm_3"}},
		{"ids", Selector{IDs: strs("cvm_3", "cvm_1", "cvm_9")}, []string{"cvm_1", "cvm_3"}},
		{"name glob star", Selector{Names: strs("prod-*")}, []string{"cvm_1", "cvm_2"}},
		{"name globs are alternatives", Selector{Names: strs("prod-db", "dev-*")}, []string{"cvm_2", "cvm_3"}},
		{"name glob ? and class", Selector{Names: strs("prod-web-?", "[o]rph*")}, []string{"cvm_1", "cvm_4"}},
		{"glob matches the whole name", Selector{Names: strs("web")}, nil},
		{"glob is case-sensitive", Selector{Names: strs("PROD-*")}, nil},
		{"app_ids", Selector{AppIDs: strs("app_b", "app_z")}, []string{"cvm_2"}},
		{"nodes", Selector{Nodes: strs("prod7", "dev1")}, []string{"cvm_1", "cvm_3"}},
		{"regions", Selector{Regions: strs("eu-central")}, []string{"cvm_1", "cvm_3"}},
		{"statuses", Selector{Statuses: strs("stopped")}, []string{"cvm_2"}},
		{"all conditions must hold", Selector{Names: strs("*web*"), Regions: strs("eu-central"), Statuses: strs("running"), Nodes: strs("prod7")}, []string{"cvm_1"}},
		{"one failing condition excludes", Selector{IDs: strs("cvm_1", "cvm_2"), Statuses: strs("running")}, []string{"cvm_1"}},
		{"exclude beats ids", Selector{IDs: strs("cvm_1", "cvm_2"), ExcludeIDs: strs("cvm_1")}, []string{"cvm_2"}},
		{"exclude beats names", Selector{Names: strs("*"), ExcludeIDs: strs("cvm_3")}, []string{"cvm_1", "cvm_2", "cvm_4"}},
		{"null node_info fails nodes", Selector{Names: strs("orphan"), Nodes: strs("prod7")}, nil},
		{"null node_info fails regions", Selector{IDs: strs("cvm_4"), Regions: strs("eu-central")}, nil},
		{"null app_id fails app_ids", Selector{IDs: strs("cvm_3", "cvm_4"), AppIDs: strs("app_a")}, nil},
		{"null node_info passes other conditions", Selector{Statuses: strs("running"), Names: strs("o*")}, []string{"cvm_4"}},
		{"empty lists are no condition", Selector{IDs: strs("cvm_2"), Names: []Str{}, Nodes: []Str{}}, []string{"cvm_2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for i := range all {
				if tt.sel.Matches(&all[i]) {
					got = append(got, all[i].ID)
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("matched %q, want %q", got, tt.want)
			}
		})
	}
}

// fakeReader is an in-memory Reader. It counts concurrent GetNetworkConfig
// calls and keeps the highest count seen.
type fakeReader struct {
	cvms    []api.CVM
	configs map[string]*api.NetworkConfig
	errs    map[string]error
	listErr error
	delay   time.Duration

	mu       sync.Mutex
	reads    []string
	inFlight atomic.Int32
	maxSeen  atomic.Int32
}

func (r *fakeReader) ListCVMs(context.Context) ([]api.CVM, error) {
	return slices.Clone(r.cvms), r.listErr
}

func (r *fakeReader) GetNetworkConfig(ctx context.Context, id string) (*api.NetworkConfig, error) {
	n := r.inFlight.Add(1)
	defer r.inFlight.Add(-1)
	for {
		m := r.maxSeen.Load()
		if n <= m || r.maxSeen.CompareAndSwap(m, n) {
			break
		}
	}
	r.mu.Lock()
	r.reads = append(r.reads, id)
	r.mu.Unlock()
	if r.delay > 0 {
		select {
		case <-time.After(r.delay):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if err := r.errs[id]; err != nil {
		return nil, err
	}
	if nc := r.configs[id]; nc != nil {
		return &api.NetworkConfig{KMSURLs: slices.Clone(nc.KMSURLs), GatewayURLs: slices.Clone(nc.GatewayURLs)}, nil
	}
	return nil, &api.Error{Method: "GET", Path: "/cvms/" + id + "/network-config", StatusCode: 404}
}

func mustParse(t *testing.T, y string) *File {
	t.Helper()
	f, err := Parse("t.yaml", []byte(y))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

const (
	kmsNew = "https://kms.new:8000"
	kmsOld = "https://kms.old:8000"
)

// TestBuild runs in a bubble: cvm_i's config answers 500 every time, and
// the plan retries it for the read timeout of fake time.
func TestBuild(t *testing.T) { synctest.Test(t, testBuild) }

func testBuild(t *testing.T) {
	r := &fakeReader{
		cvms: []api.CVM{
			// Listed out of order, one twice: the plan sorts and dedupes.
			cvm("cvm_e", "prod-e", "", "running", "n1", "eu", "0.5.8"),
			cvm("cvm_a", "prod-a", "", "running", "n1", "eu", "v0.5.7"),
			cvm("cvm_b", "prod-b", "", "running", "n1", "eu", "0.5.10"),
			cvm("cvm_c", "prod-c", "", "running", "n1", "eu", "0.5.6"),
			cvm("cvm_d", "prod-d", "", "running", "n1", "eu", ""),
			cvm("cvm_f", "prod-f", "", "running", "n1", "eu", "0.5.7-rc1"),
			cvm("cvm_g", "prod-g", "", "running", "n1", "eu", "garbage"),
			cvm("cvm_h", "prod-h", "", "running", "n1", "eu", "0.6.0"),
			cvm("cvm_i", "prod-i", "", "running", "n1", "eu", "0.6.0"),
			cvm("cvm_s", "prod-s", "", "stopped", "n1", "eu", "0.6.0"),
			cvm("cvm_x", "prod-x", "", "running", "n1", "eu", "0.6.0"),
			cvm("cvm_y", "other", "", "running", "n1", "eu", "0.6.0"),
			cvm("cvm_a", "prod-a", "", "running", "n1", "eu", "v0.5.7"),
		},
		configs: map[string]*api.NetworkConfig{
			"cvm_a": {KMSURLs: []string{kmsOld}, GatewayURLs: []string{"https://gw"}},
			"cvm_b": {KMSURLs: []string{kmsNew}},
			"cvm_h": {KMSURLs: []string{kmsNew, kmsOld}},
			"cvm_i": {KMSURLs: []string{kmsOld}},
		},
		errs: map[string]error{
			"cvm_i": &api.Error{Method: "GET", Path: "/cvms/cvm_i/network-config", StatusCode: 500, Message: "boom"},
		},
		// cvm_e: no config, so the fake answers 404 (deleted between list and read).
	}
	f := mustParse(t, `name: t
selector:
  ids: [cvm_a, cvm_b, cvm_c, cvm_d, cvm_e, cvm_f, cvm_g, cvm_h, cvm_i, cvm_s, cvm_x, cvm_gone, cvm_y]
  names: ["prod-*"]
  statuses: [running]
  exclude_ids: [cvm_x]
target:
  kms_urls: ["`+kmsNew+`"]
`)
	start := time.Now()
	p, err := Build(context.Background(), r, f, 4)
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < DefaultReadTimeout || took > DefaultReadTimeout+20*time.Second {
		t.Errorf("Build took %s; a read failing with 500 is retried for the read timeout (%s)", took, DefaultReadTimeout)
	}
	type row struct {
		id     string
		action Action
		reason string
	}
	want := []row{
		{"cvm_a", Patch, ""},
		{"cvm_b", Unchanged, ""},
		{"cvm_c", Skip, "VMM 0.5.6 is below 0.5.7"},
		{"cvm_d", Skip, "VMM version unknown"},
		{"cvm_e", Skip, "CVM not found"},
		{"cvm_f", Skip, "VMM 0.5.7-rc1 is below 0.5.7"},
		{"cvm_g", Skip, `VMM version unknown ("garbage")`},
		{"cvm_gone", Skip, "CVM not found"},
		{"cvm_h", Patch, ""},
		{"cvm_i", Unknown, "current config unreadable: no usable answer from the API for 2m0s (read timeout): GET /cvms/cvm_i/network-config: HTTP 500"},
		{"cvm_s", Skip, "listed in selector.ids but fails another selector condition"},
		{"cvm_y", Skip, "listed in selector.ids but fails another selector condition"},
	}
	var got []row
	for _, it := range p.Items {
		got = append(got, row{it.CVMID, it.Action, it.Reason})
	}
	if len(got) != len(want) {
		t.Fatalf("items:\n got %v\nwant %v", got, want)
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.id != w.id || g.action != w.action || (g.reason != w.reason && !(w.id == "cvm_i" && strings.HasPrefix(g.reason, w.reason))) {
			t.Errorf("item %d = %+v, want %+v", i, g, w)
		}
	}
	if !strings.HasPrefix(p.Items[9].Reason, "current config unreadable") {
		t.Errorf("500 reason = %q", p.Items[9].Reason)
	}

	// Fields of a patched item and the current URLs it shows.
	a := p.Items[0]
	if a.Name != "prod-a" || a.Node != "n1" || a.Region != "eu" || a.Status != "running" || a.VMM != "v0.5.7" ||
		!slices.Equal(a.KMS, []string{kmsOld}) || !slices.Equal(a.Gateway, []string{"https://gw"}) {
		t.Errorf("cvm_a item = %+v", a)
	}
	if s := p.Items[10]; s.Status != "stopped" || s.Name != "prod-s" {
		t.Errorf("cvm_s item = %+v", s)
	}
	wantCounts := map[Action]int{Patch: 2, Unchanged: 1, Skip: 8, Unknown: 1}
	if fmt.Sprint(p.Counts) != fmt.Sprint(wantCounts) {
		t.Errorf("Counts = %v, want %v", p.Counts, wantCounts)
	}
	if p.Name != "t" || p.SpecHash != f.Hash() || p.ID != "t-"+f.Hash()[:8] || p.File != f {
		t.Errorf("plan header = %q %q %q", p.Name, p.SpecHash, p.ID)
	}

	// Only CVMs that pass the selector and the VMM gate are read, once
	// each, but for cvm_i, which is retried.
	slices.Sort(r.reads)
	if n := strings.Count(strings.Join(r.reads, " "), "cvm_i"); n < 3 {
		t.Errorf("cvm_i read %d times; a 500 is retried", n)
	}
	r.reads = slices.Compact(r.reads)
	if want := []string{"cvm_a", "cvm_b", "cvm_e", "cvm_h", "cvm_i"}; !slices.Equal(r.reads, want) {
		t.Errorf("read %q, want %q", r.reads, want)
	}
}

func TestBuildResetTarget(t *testing.T) {
	r := &fakeReader{
		cvms: []api.CVM{
			cvm("cvm_1", "a", "", "running", "n", "r", "0.5.7"),
			cvm("cvm_2", "b", "", "running", "n", "r", "0.5.7"),
			cvm("cvm_3", "c", "", "running", "n", "r", "0.5.7"),
		},
		configs: map[string]*api.NetworkConfig{
			"cvm_1": {KMSURLs: []string{kmsOld}},
			"cvm_2": {KMSURLs: []string{}},
			"cvm_3": {KMSURLs: nil, GatewayURLs: []string{"https://gw"}},
		},
	}
	f := mustParse(t, "name: t\nselector: {all: true}\ntarget: {kms_urls: []}\n")
	p, err := Build(context.Background(), r, f, 0)
	if err != nil {
		t.Fatal(err)
	}
	got := []Action{p.Items[0].Action, p.Items[1].Action, p.Items[2].Action}
	if want := []Action{Patch, Unchanged, Unchanged}; !slices.Equal(got, want) {
		t.Errorf("actions = %v, want %v", got, want)
	}
}

func TestBuildConcurrencyLimit(t *testing.T) {
	for _, limit := range []int{1, 3, 8} {
		t.Run(fmt.Sprint(limit), func(t *testing.T) {
			r := &fakeReader{configs: map[string]*api.NetworkConfig{}, delay: 5 * time.Millisecond}
			for i := range 40 {
				id := fmt.Sprintf("cvm_%02d", i)
				r.cvms = append(r.cvms, cvm(id, "n", "", "running", "n", "r", "0.6.0"))
				r.configs[id] = &api.NetworkConfig{KMSURLs: []string{kmsOld}}
			}
			f := mustParse(t, "name: t\nselector: {all: true}\ntarget: {kms_urls: [\""+kmsNew+"\"]}\n")
			p, err := Build(context.Background(), r, f, limit)
			if err != nil {
				t.Fatal(err)
			}
			if p.Counts[Patch] != 40 || len(r.reads) != 40 {
				t.Errorf("counts %v, reads %d", p.Counts, len(r.reads))
			}
			if m := int(r.maxSeen.Load()); m > limit {
				t.Errorf("%d concurrent reads, limit %d", m, limit)
			} else if limit > 1 && m < 2 {
				t.Errorf("reads never overlapped (max %d): the limit is not exercised", m)
			}
		})
	}
}

func TestBuildErrors(t *testing.T) { synctest.Test(t, testBuildErrors) }

func testBuildErrors(t *testing.T) {
	f := mustParse(t, "name: t\nselector: {all: true}\ntarget: {kms_urls: []}\n")
	listErr := &api.Error{Method: "GET", Path: "/cvms", StatusCode: 503}
	if _, err := Build(context.Background(), &fakeReader{listErr: listErr}, f, 2); !errors.Is(err, listErr) || !strings.HasPrefix(err.Error(), "listing CVMs: ") {
		t.Errorf("list error = %v", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r := &fakeReader{cvms: []api.CVM{cvm("cvm_1", "a", "", "running", "n", "r", "0.5.7")}, delay: time.Minute}
	if _, err := Build(ctx, r, f, 2); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled Build = %v, want context.Canceled", err)
	}
}

func TestTargetDiff(t *testing.T) {
	list := func(v ...string) *[]Str { s := strs(v...); return &s }
	tests := []struct {
		name    string
		target  Target
		cur     api.NetworkConfig
		kms     *[]string // nil: not in the PATCH
		gateway *[]string
		changed bool
	}{
		{"kms differs only", Target{KMSURLs: list(kmsNew), GatewayURLs: list("https://gw")},
			api.NetworkConfig{KMSURLs: []string{kmsOld}, GatewayURLs: []string{"https://gw"}}, &[]string{kmsNew}, nil, true},
		{"gateway differs only", Target{KMSURLs: list(kmsNew), GatewayURLs: list("https://gw2")},
			api.NetworkConfig{KMSURLs: []string{kmsNew}, GatewayURLs: []string{"https://gw"}}, nil, &[]string{"https://gw2"}, true},
		{"both differ", Target{KMSURLs: list(kmsNew), GatewayURLs: list("https://gw2")},
			api.NetworkConfig{}, &[]string{kmsNew}, &[]string{"https://gw2"}, true},
		{"order matters", Target{KMSURLs: list(kmsNew, kmsOld)},
			api.NetworkConfig{KMSURLs: []string{kmsOld, kmsNew}}, &[]string{kmsNew, kmsOld}, nil, true},
		{"equal", Target{KMSURLs: list(kmsNew)}, api.NetworkConfig{KMSURLs: []string{kmsNew}, GatewayURLs: []string{"x"}}, nil, nil, false},
		{"omitted list left alone", Target{GatewayURLs: list("https://gw")},
			api.NetworkConfig{KMSURLs: []string{kmsOld}, GatewayURLs: []string{"https://gw"}}, nil, nil, false},
		{"reset vs non-empty", Target{KMSURLs: list()}, api.NetworkConfig{KMSURLs: []string{kmsOld}}, &[]string{}, nil, true},
		{"reset vs empty", Target{KMSURLs: list()}, api.NetworkConfig{KMSURLs: []string{}}, nil, nil, false},
		{"reset vs null", Target{KMSURLs: list()}, api.NetworkConfig{}, nil, nil, false},
		{"restart carried", Target{KMSURLs: list(kmsNew), Restart: true}, api.NetworkConfig{}, &[]string{kmsNew}, nil, true},
		{"restart carried when unchanged", Target{KMSURLs: list(kmsNew), Restart: true}, api.NetworkConfig{KMSURLs: []string{kmsNew}}, nil, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cur := tt.cur
			upd, changed := tt.target.Diff(&cur)
			if changed != tt.changed {
				t.Errorf("changed = %v, want %v", changed, tt.changed)
			}
			if tt.target.Reached(&cur) == tt.changed {
				t.Errorf("Reached = %v, want %v", !tt.changed, !tt.changed)
			}
			check := func(what string, got, want *[]string) {
				t.Helper()
				switch {
				case (got == nil) != (want == nil):
					t.Errorf("%s = %v, want %v", what, got, want)
				case got != nil && (!slices.Equal(*got, *want) || *got == nil):
					t.Errorf("%s = %#v, want %#v (non-nil)", what, *got, *want)
				}
			}
			check("KMSURLs", upd.KMSURLs, tt.kms)
			check("GatewayURLs", upd.GatewayURLs, tt.gateway)
			if upd.Restart != tt.target.Restart {
				t.Errorf("Restart = %v, want %v", upd.Restart, tt.target.Restart)
			}
		})
	}
}

func TestBackoffDelay(t *testing.T) {
	b := Backoff{Base: 2 * time.Second, Max: time.Minute}
	tests := []struct {
		n     int
		upper time.Duration
	}{
		{1, 2 * time.Second}, {2, 4 * time.Second}, {3, 8 * time.Second}, {4, 16 * time.Second},
		{5, 32 * time.Second}, {6, time.Minute}, {7, time.Minute}, {50, time.Minute},
	}
	const samples = 2000
	prevMean := time.Duration(0)
	for _, tt := range tests {
		var sum, hi time.Duration
		for range samples {
			d := b.Delay(tt.n)
			if d < max(time.Second, tt.upper/2) || d > tt.upper {
				t.Fatalf("Delay(%d) = %v, want within [max(1s, %v), %v]", tt.n, d, tt.upper/2, tt.upper)
			}
			sum += d
			hi = max(hi, d)
		}
		mean := sum / samples
		// Equal jitter: the samples should reach near the bound and the mean
		// grows with n until the bound hits Max.
		if hi < tt.upper*9/10 {
			t.Errorf("Delay(%d): highest of %d samples %v, want near %v", tt.n, samples, hi, tt.upper)
		}
		if tt.upper < b.Max && mean <= prevMean {
			t.Errorf("Delay(%d): mean %v did not grow from %v", tt.n, mean, prevMean)
		}
		prevMean = mean
	}

	// Degenerate policies still wait at least a second.
	for _, d := range []Backoff{{}, {Base: time.Millisecond, Max: 10 * time.Millisecond}, Retry{}.WithDefaults().Backoff} {
		for n := range 40 {
			if got := d.Delay(n); got < time.Second || got > max(time.Second, d.Max) {
				t.Errorf("%+v.Delay(%d) = %v", d, n, got)
			}
		}
	}
}
