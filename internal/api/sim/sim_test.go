package sim_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/phalafleet/rollout/internal/api"
	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/santhosh-tekuri/jsonschema/v6"
)

// specPath is the fleet excerpt of the OpenAPI document, copied into
// testdata (see testdata/README.md), so the tests need nothing beside the repository.
var specPath = filepath.Join("testdata", "openapi-fleet-excerpt.json")

const specURL = "https://phala.example/openapi-fleet-excerpt.json"

type fixture struct {
	s   *sim.Server
	srv *httptest.Server
	key string
	c   *api.Client
}

func newFixture(t *testing.T, fo sim.FleetOptions) *fixture {
	t.Helper()
	key := sim.NewAPIKey()
	s := sim.New(sim.Options{Fleet: fo, APIKey: key})
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	c, err := api.New(api.Config{APIKey: key, Prefix: srv.URL + "/api/v1", ReadTries: 2, MaxBackoff: 5 * time.Millisecond, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{s: s, srv: srv, key: key, c: c}
}

// do sends a raw request with the fixture's key (key "" sends none).
func (f *fixture) do(t *testing.T, method, path, body string) (*http.Response, []byte) {
	t.Helper()
	return f.doKey(t, method, path, body, f.key)
}

func (f *fixture) doKey(t *testing.T, method, path, body, key string) (*http.Response, []byte) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, f.srv.URL+"/api/v1"+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("X-API-Key", key)
	}
	req.Header.Set("X-Phala-Version", api.DefaultAPIVersion)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := f.srv.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

// spec is the OpenAPI document, loaded once.
var spec = sync.OnceValues(func() (map[string]any, error) {
	b, err := os.ReadFile(specPath)
	if err != nil {
		return nil, err
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	m, ok := doc.(map[string]any)
	if !ok {
		return nil, errors.New("spec is not an object")
	}
	return m, nil
})

var schemas sync.Map // name -> *jsonschema.Schema

// schema compiles #/components/schemas/<name> of the OpenAPI document (3.1,
// so JSON Schema 2020-12).
func schema(t *testing.T, name string) *jsonschema.Schema {
	t.Helper()
	if s, ok := schemas.Load(name); ok {
		return s.(*jsonschema.Schema)
	}
	doc, err := spec()
	if err != nil {
		t.Fatalf("loading %s: %v", specPath, err)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	if err := c.AddResource(specURL, doc); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile(specURL + "#/components/schemas/" + name)
	if err != nil {
		t.Fatalf("compiling %s: %v", name, err)
	}
	schemas.Store(name, s)
	return s
}

// validate checks body against the named schema, and that every field the
// simulator sends at the top level is one the schema declares.
func validate(t *testing.T, name string, body []byte) {
	t.Helper()
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("%s: body is not JSON: %v\n%s", name, err, body)
	}
	if err := schema(t, name).Validate(inst); err != nil {
		t.Errorf("response does not match %s: %v\nbody: %.600s", name, err, body)
	}
	knownKeys(t, name, inst)
}

// knownKeys walks objects alongside their component schemas and reports any
// property the spec does not declare (the spec allows extras, but a
// simulator inventing fields would let the client rely on them).
func knownKeys(t *testing.T, name string, inst any) {
	t.Helper()
	doc, _ := spec()
	comps := doc["components"].(map[string]any)["schemas"].(map[string]any)
	sch, _ := comps[name].(map[string]any)
	obj, ok := inst.(map[string]any)
	if sch == nil || !ok {
		return
	}
	props, _ := sch["properties"].(map[string]any)
	for k, v := range obj {
		p, ok := props[k].(map[string]any)
		if !ok {
			t.Errorf("%s: field %q is not in the spec", name, k)
			continue
		}
		for _, ref := range refsOf(p) {
			switch vv := v.(type) {
			case map[string]any:
				knownKeys(t, ref, vv)
			case []any:
				for _, it := range vv {
					knownKeys(t, ref, it)
				}
			}
		}
	}
}

// refsOf lists component names a property schema points to, through anyOf
// and items.
func refsOf(p map[string]any) []string {
	var out []string
	if r, ok := p["$ref"].(string); ok {
		out = append(out, strings.TrimPrefix(r, "#/components/schemas/"))
	}
	if it, ok := p["items"].(map[string]any); ok {
		out = append(out, refsOf(it)...)
	}
	if alts, ok := p["anyOf"].([]any); ok {
		for _, a := range alts {
			if m, ok := a.(map[string]any); ok {
				out = append(out, refsOf(m)...)
			}
		}
	}
	return out
}

func TestSchemaConformance(t *testing.T) {
	f := newFixture(t, sim.FleetOptions{CVMs: 250, Seed: 7})
	ids := f.s.IDs()
	// Give one node an unknown (null) VMM version so null is validated too.
	f.s.SetVMMVersionOf(ids[1], nil)
	// One CVM mid-restart, so in_progress and a non-running status are covered.
	f.s.SetFaults(sim.Faults{RestartTime: time.Minute})
	target := ""
	for _, id := range ids {
		c, err := f.c.GetCVM(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if ok, _ := api.VMMGate(c.VMMVersion()); ok {
			target = id
			break
		}
	}
	if target == "" {
		t.Fatal("no CVM on a VMM >= 0.5.7")
	}

	tests := []struct {
		name, method, path, body string
		wantStatus               int
		schema                   string
	}{
		{"PATCH response", http.MethodPatch, "/cvms/" + target + "/network-config", `{"kms_urls":["https://kms.new:8000"],"restart":true}`, 200, "NetworkConfigResponse"},
		{"list first page", http.MethodGet, "/cvms/paginated?page=1&page_size=100", "", 200, "PaginatedCvmInfos"},
		{"list last partial page", http.MethodGet, "/cvms/paginated?page=3&page_size=100", "", 200, "PaginatedCvmInfos"},
		{"list default page size", http.MethodGet, "/cvms/paginated", "", 200, "PaginatedCvmInfos"},
		{"list past the end", http.MethodGet, "/cvms/paginated?page=9&page_size=100", "", 200, "PaginatedCvmInfos"},
		{"detail", http.MethodGet, "/cvms/" + ids[0], "", 200, "CVMInfoDetail"},
		{"detail, null VMM version", http.MethodGet, "/cvms/" + ids[1], "", 200, "CVMInfoDetail"},
		{"detail, restarting", http.MethodGet, "/cvms/" + target, "", 200, "CVMInfoDetail"},
		{"network-config", http.MethodGet, "/cvms/" + ids[0] + "/network-config", "", 200, "NetworkConfigResponse"},
		{"network-config after PATCH", http.MethodGet, "/cvms/" + target + "/network-config", "", 200, "NetworkConfigResponse"},
		{"422 page_size", http.MethodGet, "/cvms/paginated?page_size=101", "", 422, "HTTPValidationError"},
		{"422 page", http.MethodGet, "/cvms/paginated?page=0", "", 422, "HTTPValidationError"},
		{"422 kms_urls not a list", http.MethodPatch, "/cvms/" + ids[0] + "/network-config", `{"kms_urls":"x"}`, 422, "HTTPValidationError"},
		{"422 bad URL", http.MethodPatch, "/cvms/" + ids[0] + "/network-config", `{"gateway_urls":["has space"]}`, 422, "HTTPValidationError"},
		{"422 not JSON", http.MethodPatch, "/cvms/" + ids[0] + "/network-config", `{`, 422, "HTTPValidationError"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := f.do(t, tt.method, tt.path, tt.body)
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.wantStatus, body)
			}
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("Content-Type = %q", ct)
			}
			if resp.Header.Get("X-Request-ID") == "" {
				t.Error("no X-Request-ID")
			}
			validate(t, tt.schema, body)
		})
	}

	t.Run("list all is an array of CVMInfo", func(t *testing.T) {
		resp, body := f.do(t, http.MethodGet, "/cvms", "")
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		var items []json.RawMessage
		if err := json.Unmarshal(body, &items); err != nil {
			t.Fatal(err)
		}
		if len(items) != len(ids) {
			t.Errorf("%d items, want %d", len(items), len(ids))
		}
		for _, it := range items[:20] {
			validate(t, "teehouse__api__routes__cvms__v20260121__schemas__CVMInfo", it)
		}
	})
}

// TestSchemaRejectsBadShapes makes sure the validation above has teeth.
func TestSchemaRejectsBadShapes(t *testing.T) {
	tests := []struct{ schema, body string }{
		{"PaginatedCvmInfos", `{"items":[],"total":0,"page":1,"page_size":100}`},
		{"PaginatedCvmInfos", `{"items":[{"id":"vm_1","name":"a","resource":{},"status":"running","gateway":{}}],"total":1,"page":1,"page_size":100,"pages":1}`},
		{"CVMInfoDetail", `{"id":"cvm_1","name":"a","resource":{},"status":"running"}`},
		{"CVMInfoDetail", `{"id":"cvm_1","name":"a","resource":{},"status":"running","gateway":{},"node_info":{"status":"UP"}}`},
		{"NetworkConfigResponse", `{"kms_urls":"x"}`},
		{"NetworkConfigResponse", `{"ports":[{"host_port":0,"vm_port":1}]}`},
		{"HTTPValidationError", `{"detail":[{"loc":["body"],"msg":"x"}]}`},
	}
	for i, tt := range tests {
		t.Run(fmt.Sprintf("%s_%d", tt.schema, i), func(t *testing.T) {
			inst, err := jsonschema.UnmarshalJSON(strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			if schema(t, tt.schema).Validate(inst) == nil {
				t.Errorf("%s accepted %s", tt.schema, tt.body)
			}
		})
	}
}

func TestAuth(t *testing.T) {
	f := newFixture(t, sim.FleetOptions{CVMs: 5, Seed: 1})
	id := f.s.IDs()[0]
	paths := []struct{ method, path, body string }{
		{http.MethodGet, "/cvms/paginated", ""},
		{http.MethodGet, "/cvms", ""},
		{http.MethodGet, "/cvms/" + id, ""},
		{http.MethodGet, "/cvms/" + id + "/network-config", ""},
		{http.MethodPatch, "/cvms/" + id + "/network-config", `{"restart":false}`},
	}
	keys := []struct {
		name, key string
		want      int
	}{
		{"no key", "", 401},
		{"wrong key", sim.NewAPIKey(), 401},
		{"key with a suffix", f.key + "x", 401},
		{"right key", f.key, 200},
	}
	for _, k := range keys {
		for _, p := range paths {
			t.Run(k.name+"/"+p.method+p.path, func(t *testing.T) {
				resp, body := f.doKey(t, p.method, p.path, p.body, k.key)
				if resp.StatusCode != k.want {
					t.Fatalf("status %d, want %d: %s", resp.StatusCode, k.want, body)
				}
				if k.want == 401 && !strings.Contains(string(body), "Not authenticated") {
					t.Errorf("body %s", body)
				}
			})
		}
	}
	t.Run("client with a wrong key", func(t *testing.T) {
		c, err := api.New(api.Config{APIKey: "phak_wrong", Prefix: f.srv.URL + "/api/v1", MaxBackoff: time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.ListCVMs(context.Background())
		if api.StatusOf(err) != 401 || api.Transient(err) {
			t.Fatalf("err = %v, want a non-transient 401", err)
		}
	})
	t.Run("server with no key accepts nothing", func(t *testing.T) {
		s := sim.New(sim.Options{Fleet: sim.FleetOptions{CVMs: 1}})
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/api/v1/cvms", nil))
		if rec.Code != 401 {
			t.Errorf("status %d, want 401", rec.Code)
		}
	})
}

func TestNotFound(t *testing.T) {
	f := newFixture(t, sim.FleetOptions{CVMs: 5, Seed: 1})
	calls := []struct {
		name string
		call func() error
	}{
		{"GetCVM", func() error { _, err := f.c.GetCVM(context.Background(), "cvm_nope"); return err }},
		{"GetNetworkConfig", func() error { _, err := f.c.GetNetworkConfig(context.Background(), "cvm_nope"); return err }},
		{"PatchNetworkConfig", func() error {
			_, err := f.c.PatchNetworkConfig(context.Background(), "cvm_nope", api.NetworkConfigUpdate{})
			return err
		}},
		{"id with a slash", func() error { _, err := f.c.GetCVM(context.Background(), f.s.IDs()[0]+"/x"); return err }},
	}
	for _, tt := range calls {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			var e *api.Error
			if !errors.As(err, &e) || e.StatusCode != 404 {
				t.Fatalf("err = %v, want a 404", err)
			}
			if e.ErrorCode != "ERR-03-001" || !strings.Contains(e.Message, "not found") || !strings.HasPrefix(e.RequestID, "req_") {
				t.Errorf("error = %+v", e)
			}
		})
	}
	t.Run("request_id matches the header", func(t *testing.T) {
		resp, body := f.do(t, http.MethodGet, "/cvms/cvm_nope", "")
		var b struct {
			RequestID string `json:"request_id"`
		}
		_ = json.Unmarshal(body, &b)
		if b.RequestID == "" || b.RequestID != resp.Header.Get("X-Request-ID") {
			t.Errorf("body request_id %q, header %q", b.RequestID, resp.Header.Get("X-Request-ID"))
		}
	})
	t.Run("removed CVM", func(t *testing.T) {
		id := f.s.IDs()[2]
		f.s.Remove(id)
		if _, err := f.c.GetCVM(context.Background(), id); api.StatusOf(err) != 404 {
			t.Errorf("GetCVM after Remove: %v", err)
		}
		if slices.Contains(f.s.IDs(), id) {
			t.Error("IDs still lists the removed CVM")
		}
		all, err := f.c.ListCVMs(context.Background())
		if err != nil || len(all) != 4 {
			t.Errorf("ListCVMs after Remove: %d, %v", len(all), err)
		}
		if _, _, ok := f.s.Config(id); ok {
			t.Error("Config still finds it")
		}
	})
}

type detailItem struct {
	Loc  []any  `json:"loc"`
	Msg  string `json:"msg"`
	Type string `json:"type"`
}

func TestValidation(t *testing.T) {
	f := newFixture(t, sim.FleetOptions{CVMs: 5, Seed: 1})
	id := f.s.IDs()[0]
	nc := "/cvms/" + id + "/network-config"
	tests := []struct {
		name, method, path, body string
		wantLoc                  string // the first item's loc, dot-joined
	}{
		{"page_size 101", http.MethodGet, "/cvms/paginated?page_size=101", "", "query.page_size"},
		{"page_size 0", http.MethodGet, "/cvms/paginated?page_size=0", "", "query.page_size"},
		{"page_size text", http.MethodGet, "/cvms/paginated?page_size=ten", "", "query.page_size"},
		{"page 0", http.MethodGet, "/cvms/paginated?page=0", "", "query.page"},
		{"page negative", http.MethodGet, "/cvms/paginated?page=-1", "", "query.page"},
		{"kms_urls a string", http.MethodPatch, nc, `{"kms_urls":"x"}`, "body.kms_urls"},
		{"gateway_urls an object", http.MethodPatch, nc, `{"gateway_urls":{"a":1}}`, "body.gateway_urls"},
		{"kms_urls of numbers", http.MethodPatch, nc, `{"kms_urls":[1]}`, "body.kms_urls"},
		{"empty URL", http.MethodPatch, nc, `{"kms_urls":["https://ok",""]}`, "body.kms_urls.1"},
		{"restart a string", http.MethodPatch, nc, `{"restart":"maybe"}`, "body.restart"},
		{"not JSON", http.MethodPatch, nc, `not json`, "body"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := f.do(t, tt.method, tt.path, tt.body)
			if resp.StatusCode != 422 {
				t.Fatalf("status %d, want 422: %s", resp.StatusCode, body)
			}
			var v struct {
				Detail []detailItem `json:"detail"`
			}
			if err := json.Unmarshal(body, &v); err != nil || len(v.Detail) == 0 {
				t.Fatalf("detail is not a FastAPI list: %s (%v)", body, err)
			}
			loc := make([]string, len(v.Detail[0].Loc))
			for i, l := range v.Detail[0].Loc {
				loc[i] = fmt.Sprint(l)
			}
			if got := strings.Join(loc, "."); got != tt.wantLoc {
				t.Errorf("loc = %s, want %s", got, tt.wantLoc)
			}
			if v.Detail[0].Msg == "" || v.Detail[0].Type == "" {
				t.Errorf("item %+v lacks msg or type", v.Detail[0])
			}
		})
	}
	t.Run("client sees the validation message", func(t *testing.T) {
		_, err := f.c.PatchNetworkConfig(context.Background(), id, api.NetworkConfigUpdate{KMSURLs: &[]string{"bad url"}})
		var e *api.Error
		if !errors.As(err, &e) || e.StatusCode != 422 || !strings.Contains(e.Message, "body.kms_urls.0") {
			t.Fatalf("err = %v", err)
		}
		if k, _, _ := f.s.Config(id); slices.Contains(k, "bad url") {
			t.Error("a rejected PATCH changed the config")
		}
	})
	if st := f.s.Stats(); st.Patches != 0 {
		t.Errorf("Stats.Patches = %d after only rejected PATCHes", st.Patches)
	}
}

func TestPatchVMMGate(t *testing.T) {
	f := newFixture(t, sim.FleetOptions{CVMs: 1000, Nodes: 60, Seed: 42})
	all, err := f.c.ListCVMs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var old, unknown, good []api.CVM
	for _, c := range all {
		ok, reason := api.VMMGate(c.VMMVersion())
		switch {
		case ok:
			good = append(good, c)
		case strings.Contains(reason, "unknown"):
			unknown = append(unknown, c)
		default:
			old = append(old, c)
		}
	}
	if len(old) == 0 || len(good) == 0 {
		t.Fatalf("fleet has %d old and %d good CVMs; want both", len(old), len(good))
	}
	if share := float64(len(old)) / float64(len(all)); share < 0.02 || share > 0.3 {
		t.Errorf("old-VMM share %.2f, want about 0.1", share)
	}
	kms := []string{"https://kms.new:8000"}
	patch := func(id string) error {
		_, err := f.c.PatchNetworkConfig(context.Background(), id, api.NetworkConfigUpdate{KMSURLs: &kms})
		return err
	}
	t.Run("listed old VMM", func(t *testing.T) {
		err := patch(old[0].ID)
		var e *api.Error
		if !errors.As(err, &e) || e.StatusCode != 400 || !strings.Contains(e.Message, "VMM too old") {
			t.Fatalf("PATCH on VMM %q: %v", old[0].VMMVersion(), err)
		}
		if k, _, _ := f.s.Config(old[0].ID); slices.Equal(k, kms) {
			t.Error("config changed despite the 400")
		}
	})
	if len(unknown) > 0 {
		t.Run("listed unknown VMM", func(t *testing.T) {
			if err := patch(unknown[0].ID); api.StatusOf(err) != 400 {
				t.Fatalf("PATCH on VMM %q: %v", unknown[0].VMMVersion(), err)
			}
		})
	}
	t.Run("listed good VMM", func(t *testing.T) {
		if err := patch(good[0].ID); err != nil {
			t.Fatalf("PATCH on VMM %q: %v", good[0].VMMVersion(), err)
		}
	})

	id := good[1].ID
	tests := []struct {
		version *string
		want    int
	}{
		{ptr("0.5.6"), 400},
		{ptr("0.5.7-rc1"), 400},
		{ptr("v0.5.5"), 400},
		{nil, 400},
		{ptr(""), 400},
		{ptr("unknown"), 400},
		{ptr("0.5.7"), 200},
		{ptr("v0.5.10 (git:9f1c2ab)"), 200},
		{ptr("0.6.0-dev"), 200},
	}
	for _, tt := range tests {
		name := "nil"
		if tt.version != nil {
			name = strconv.Quote(*tt.version)
		}
		t.Run("SetVMMVersionOf "+name, func(t *testing.T) {
			f.s.SetVMMVersionOf(id, tt.version)
			c, err := f.c.GetCVM(context.Background(), id)
			if err != nil {
				t.Fatal(err)
			}
			if tt.version == nil && (c.NodeInfo == nil || c.NodeInfo.Version != nil) {
				t.Errorf("node_info.version = %v, want null", c.NodeInfo)
			}
			if tt.version != nil && c.VMMVersion() != *tt.version {
				t.Errorf("VMMVersion = %q, want %q", c.VMMVersion(), *tt.version)
			}
			if got := api.StatusOf(patch(id)); got != tt.want && !(tt.want == 200 && got == 0) {
				t.Errorf("PATCH status %d, want %d", got, tt.want)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestFaults(t *testing.T) {
	f := newFixture(t, sim.FleetOptions{CVMs: 5, Seed: 1})
	id := f.s.IDs()[0]
	nc := "/cvms/" + id + "/network-config"

	t.Run("GateOff answers 403 to PATCH only", func(t *testing.T) {
		f.s.SetFaults(sim.Faults{GateOff: true})
		defer f.s.SetFaults(sim.Faults{})
		if !f.s.Faults().GateOff {
			t.Fatal("Faults() does not return what was set")
		}
		_, err := f.c.PatchNetworkConfig(context.Background(), id, api.NetworkConfigUpdate{KMSURLs: &[]string{"https://k"}})
		var e *api.Error
		if !errors.As(err, &e) || e.StatusCode != 403 || !strings.Contains(e.Message, "not enabled") {
			t.Fatalf("err = %v, want 403", err)
		}
		if _, err := f.c.GetNetworkConfig(context.Background(), id); err != nil {
			t.Errorf("GET with GateOff: %v", err)
		}
	})

	t.Run("rate limit answers 429 with Retry-After", func(t *testing.T) {
		f.s.SetFaults(sim.Faults{RateLimit: 0.001, RateBurst: 1})
		defer f.s.SetFaults(sim.Faults{})
		before := f.s.Stats().Throttled
		resp, _ := f.do(t, http.MethodGet, nc, "")
		if resp.StatusCode != 200 {
			t.Fatalf("first request: %d, want 200 (burst 1)", resp.StatusCode)
		}
		resp, body := f.do(t, http.MethodGet, nc, "")
		if resp.StatusCode != 429 {
			t.Fatalf("second request: %d, want 429", resp.StatusCode)
		}
		ra, err := strconv.Atoi(resp.Header.Get("Retry-After"))
		if err != nil || ra < 1 {
			t.Errorf("Retry-After = %q, want whole seconds >= 1", resp.Header.Get("Retry-After"))
		}
		if !strings.Contains(string(body), "Rate limit") {
			t.Errorf("body %s", body)
		}
		// The client retries (MaxBackoff caps the wait) and then reports the 429.
		start := time.Now()
		_, err = f.c.GetCVM(context.Background(), id)
		var e *api.Error
		if !errors.As(err, &e) || e.StatusCode != 429 || e.RetryAfter < time.Second {
			t.Fatalf("client err = %v, want 429 with RetryAfter", err)
		}
		if time.Since(start) > time.Second {
			t.Errorf("client waited %v", time.Since(start))
		}
		if got := f.s.Stats().Throttled - before; got != 3 {
			t.Errorf("Throttled grew by %d, want 3 (1 raw + 2 client tries)", got)
		}
	})

	t.Run("ErrorCodes and ErrorRetryAfter: a busy 503", func(t *testing.T) {
		f.s.SetFaults(sim.Faults{ErrorRate: 1, ErrorCodes: []int{503}, ErrorRetryAfter: 2 * time.Second})
		defer f.s.SetFaults(sim.Faults{})
		resp, _ := f.do(t, http.MethodGet, nc, "")
		if resp.StatusCode != 503 || resp.Header.Get("Retry-After") != "2" {
			t.Fatalf("%d, Retry-After %q; want 503 with 2", resp.StatusCode, resp.Header.Get("Retry-After"))
		}
		f.s.SetFaults(sim.Faults{ErrorRate: 1, ErrorCodes: []int{503}})
		if resp, _ := f.do(t, http.MethodGet, nc, ""); resp.StatusCode != 503 || resp.Header.Get("Retry-After") != "" {
			t.Fatalf("%d, Retry-After %q; want a bare 503", resp.StatusCode, resp.Header.Get("Retry-After"))
		}
	})

	t.Run("RateChanges change the limit", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			s := sim.New(sim.Options{APIKey: "k"})
			s.SetFaults(sim.Faults{RateLimit: 1000, RateBurst: 1000, RateChanges: []sim.RateChange{{After: time.Second, Limit: 0.001}}})
			get := func() int {
				w := httptest.NewRecorder()
				r := httptest.NewRequest(http.MethodGet, "/api/v1/cvms", nil)
				r.Header.Set("X-API-Key", "k")
				s.ServeHTTP(w, r)
				return w.Code
			}
			for range 2 {
				if c := get(); c != 200 {
					t.Fatalf("before the change: %d", c)
				}
			}
			time.Sleep(1500 * time.Millisecond)
			if f := s.Faults(); f.RateLimit != 0.001 {
				t.Fatalf("Faults().RateLimit %v after the change", f.RateLimit)
			}
			get() // the new bucket's one token
			if c := get(); c != 429 {
				t.Fatalf("after the change: %d, want 429", c)
			}
		})
	})

	t.Run("ErrorRate 1 gives 5xx", func(t *testing.T) {
		f.s.SetFaults(sim.Faults{ErrorRate: 1})
		defer f.s.SetFaults(sim.Faults{})
		before := f.s.Stats().ServerErrors
		for range 10 {
			resp, _ := f.do(t, http.MethodGet, "/cvms/"+id, "")
			if resp.StatusCode < 500 || resp.StatusCode > 599 {
				t.Fatalf("status %d, want 5xx", resp.StatusCode)
			}
		}
		_, err := f.c.GetCVM(context.Background(), id)
		if s := api.StatusOf(err); s < 500 {
			t.Fatalf("client err = %v, want 5xx", err)
		}
		_, err = f.c.PatchNetworkConfig(context.Background(), id, api.NetworkConfigUpdate{})
		if s := api.StatusOf(err); s < 500 {
			t.Fatalf("PATCH err = %v, want 5xx", err)
		}
		if got := f.s.Stats().ServerErrors - before; got != 13 {
			t.Errorf("ServerErrors grew by %d, want 13", got)
		}
	})

	t.Run("Down gives 503", func(t *testing.T) {
		f.s.SetFaults(sim.Faults{Down: true})
		defer f.s.SetFaults(sim.Faults{})
		if resp, _ := f.do(t, http.MethodGet, "/cvms/paginated", ""); resp.StatusCode != 503 {
			t.Fatalf("status %d, want 503", resp.StatusCode)
		}
		if resp, _ := f.doKey(t, http.MethodGet, "/cvms/paginated", "", ""); resp.StatusCode != 401 {
			t.Errorf("no key while down: %d, want 401", resp.StatusCode)
		}
	})

	t.Run("DropRate 1 closes the connection", func(t *testing.T) {
		f.s.SetFaults(sim.Faults{DropRate: 1})
		defer f.s.SetFaults(sim.Faults{})
		_, err := f.c.GetCVM(context.Background(), id)
		if err == nil || api.StatusOf(err) != 0 || !api.Transient(err) {
			t.Fatalf("err = %v, want a transient network error", err)
		}
	})

	t.Run("HangRate 1 never answers", func(t *testing.T) {
		f.s.SetFaults(sim.Faults{HangRate: 1})
		defer f.s.SetFaults(sim.Faults{})
		c, err := api.New(api.Config{APIKey: f.key, Prefix: f.srv.URL + "/api/v1", Timeout: 30 * time.Millisecond, ReadTries: 1})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.GetCVM(context.Background(), id); err == nil || !api.Transient(err) {
			t.Fatalf("err = %v, want a timeout", err)
		}
	})

	t.Run("Latency delays answers", func(t *testing.T) {
		f.s.SetFaults(sim.Faults{Latency: 20 * time.Millisecond})
		defer f.s.SetFaults(sim.Faults{})
		start := time.Now()
		if _, err := f.c.GetCVM(context.Background(), id); err != nil {
			t.Fatal(err)
		}
		if el := time.Since(start); el < 20*time.Millisecond {
			t.Errorf("answered in %v", el)
		}
	})

	ops := []struct {
		name string
		fail func(id string, status int)
		call func() error
	}{
		{"FailPatch", f.s.FailPatch, func() error {
			_, err := f.c.PatchNetworkConfig(context.Background(), id, api.NetworkConfigUpdate{})
			return err
		}},
		{"FailRead", f.s.FailRead, func() error { _, err := f.c.GetNetworkConfig(context.Background(), id); return err }},
	}
	for _, op := range ops {
		t.Run(op.name, func(t *testing.T) {
			for _, code := range []int{403, 404, 500} {
				op.fail(id, code)
				if err := op.call(); api.StatusOf(err) != code {
					t.Errorf("%s(%d): err = %v", op.name, code, err)
				}
			}
			op.fail(id, 0)
			if err := op.call(); err != nil {
				t.Errorf("after %s(0): %v", op.name, err)
			}
		})
	}
}

func TestStatsAndPartialPatch(t *testing.T) {
	f := newFixture(t, sim.FleetOptions{CVMs: 50, Seed: 3, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9})
	ids := f.s.IDs()
	a, b := ids[0], ids[1]
	ctx := context.Background()
	origKMS, origGW, ok := f.s.Config(a)
	if !ok || len(origKMS) != 1 || len(origGW) != 1 {
		t.Fatalf("Config(%s) = %v %v %v", a, origKMS, origGW, ok)
	}
	newKMS := []string{"https://kms.new-a:8000", "https://kms.new-b:8000"}
	empty := []string{}
	steps := []struct {
		name            string
		id              string
		upd             api.NetworkConfigUpdate
		wantKMS, wantGW []string
	}{
		{"kms only leaves gateway", a, api.NetworkConfigUpdate{KMSURLs: &newKMS}, newKMS, origGW},
		{"nothing set changes nothing", a, api.NetworkConfigUpdate{}, newKMS, origGW},
		{"[] clears gateway, kms kept", a, api.NetworkConfigUpdate{GatewayURLs: &empty}, newKMS, []string{}},
		{"[] clears kms", a, api.NetworkConfigUpdate{KMSURLs: &empty}, []string{}, []string{}},
		{"other CVM", b, api.NetworkConfigUpdate{GatewayURLs: &[]string{"https://gw.new:8000"}}, nil, []string{"https://gw.new:8000"}},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			resp, err := f.c.PatchNetworkConfig(ctx, st.id, st.upd)
			if err != nil {
				t.Fatal(err)
			}
			got, err := f.c.GetNetworkConfig(ctx, st.id)
			if err != nil {
				t.Fatal(err)
			}
			for _, nc := range []*api.NetworkConfig{resp, got} {
				if st.wantKMS != nil && !slices.Equal(nc.KMSURLs, st.wantKMS) {
					t.Errorf("kms_urls = %q, want %q", nc.KMSURLs, st.wantKMS)
				}
				if !slices.Equal(nc.GatewayURLs, st.wantGW) {
					t.Errorf("gateway_urls = %q, want %q", nc.GatewayURLs, st.wantGW)
				}
				if nc.KMSURLs == nil || nc.GatewayURLs == nil {
					t.Errorf("a list came back null: %+v", nc)
				}
				if len(nc.Ports) == 0 {
					t.Error("ports missing")
				}
			}
		})
	}
	st := f.s.Stats()
	if st.Patches != 5 || st.PatchesPerCVM[a] != 4 || st.PatchesPerCVM[b] != 1 || len(st.PatchesPerCVM) != 2 {
		t.Errorf("Stats = %+v, want 5 patches: %s×4, %s×1", st, a, b)
	}
	if st.Requests < 10 {
		t.Errorf("Requests = %d", st.Requests)
	}
	// The snapshot is a copy.
	st.PatchesPerCVM[a] = 99
	if f.s.Stats().PatchesPerCVM[a] != 4 {
		t.Error("Stats shares its map")
	}
	// Config returns copies too.
	k, _, _ := f.s.Config(b)
	if len(k) > 0 {
		k[0] = "mutated"
		if k2, _, _ := f.s.Config(b); k2[0] == "mutated" {
			t.Error("Config shares its slice")
		}
	}
}

func TestFleetGeneration(t *testing.T) {
	opts := sim.FleetOptions{CVMs: 300, Seed: 99}
	a, b := sim.New(sim.Options{Fleet: opts, APIKey: "k"}), sim.New(sim.Options{Fleet: opts, APIKey: "k"})
	other := sim.New(sim.Options{Fleet: sim.FleetOptions{CVMs: 300, Seed: 100}, APIKey: "k"})
	if !slices.Equal(a.IDs(), b.IDs()) {
		t.Error("the same seed gave different fleets")
	}
	if slices.Equal(a.IDs(), other.IDs()) {
		t.Error("different seeds gave the same fleet")
	}
	ids := a.IDs()
	if len(ids) != 300 {
		t.Fatalf("%d CVMs, want 300", len(ids))
	}
	seen := map[string]bool{}
	for _, id := range ids {
		if !strings.HasPrefix(id, "cvm_") || len(id) != 12 || seen[id] {
			t.Errorf("bad or duplicate id %q", id)
		}
		seen[id] = true
	}
	for _, id := range ids[:10] {
		ka, ga, _ := a.Config(id)
		kb, gb, _ := b.Config(id)
		if !slices.Equal(ka, kb) || !slices.Equal(ga, gb) {
			t.Errorf("%s: configs differ between same-seed fleets", id)
		}
	}

	t.Run("same seed, same detail", func(t *testing.T) {
		fa, fb := newFixtureFrom(t, a), newFixtureFrom(t, b)
		la, err := fa.c.ListCVMs(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		lb, err := fb.c.ListCVMs(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(la) != 300 || len(lb) != 300 {
			t.Fatalf("listed %d and %d", len(la), len(lb))
		}
		for i := range la {
			if la[i].ID != ids[i] || la[i].Name != lb[i].Name || la[i].VMMVersion() != lb[i].VMMVersion() || la[i].NodeName() != lb[i].NodeName() {
				t.Fatalf("item %d differs: %+v vs %+v", i, la[i], lb[i])
			}
		}
	})

	t.Run("AtTarget", func(t *testing.T) {
		kms, gw := []string{"https://kms.target:8000"}, []string{"https://gw.target:8000"}
		s := sim.New(sim.Options{Fleet: sim.FleetOptions{CVMs: 20, Seed: 5, AtTargetShare: 1, AtTargetKMS: kms, AtTargetGateway: gw}, APIKey: "k"})
		for _, id := range s.IDs() {
			k, g, _ := s.Config(id)
			if !slices.Equal(k, kms) || !slices.Equal(g, gw) {
				t.Fatalf("%s: %v %v, want the target", id, k, g)
			}
		}
	})
}

func newFixtureFrom(t *testing.T, s *sim.Server) *fixture {
	t.Helper()
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	c, err := api.New(api.Config{APIKey: "k", Prefix: srv.URL + "/api/v1", MaxBackoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{s: s, srv: srv, key: "k", c: c}
}

func TestPagination(t *testing.T) {
	f := newFixture(t, sim.FleetOptions{CVMs: 95, Seed: 2})
	tests := []struct {
		query                      string
		wantItems, wantPages, page int
		wantSize                   int
	}{
		{"", 30, 4, 1, 30},
		{"?page=4", 5, 4, 4, 30},
		{"?page=1&page_size=100", 95, 1, 1, 100},
		{"?page=2&page_size=50", 45, 2, 2, 50},
		{"?page=3&page_size=50", 0, 2, 3, 50},
		{"?page=1&page_size=1", 1, 95, 1, 1},
		{"?page=9223372036854775807&page_size=100", 0, 1, 9223372036854775807, 100},
		{"?page=4611686018427387904", 0, 4, 4611686018427387904, 30},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			resp, body := f.do(t, http.MethodGet, "/cvms/paginated"+tt.query, "")
			if resp.StatusCode != 200 {
				t.Fatalf("status %d: %s", resp.StatusCode, body)
			}
			var p api.Page
			if err := json.Unmarshal(body, &p); err != nil {
				t.Fatal(err)
			}
			if len(p.Items) != tt.wantItems || p.Pages != tt.wantPages || p.Page != tt.page || p.PageSize != tt.wantSize || p.Total != 95 {
				t.Errorf("got %d items, page %d/%d, size %d, total %d", len(p.Items), p.Page, p.Pages, p.PageSize, p.Total)
			}
		})
	}
	all, err := f.c.ListCVMs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got := make([]string, len(all))
	for i, c := range all {
		got[i] = c.ID
	}
	if !slices.Equal(got, f.s.IDs()) {
		t.Error("ListCVMs does not return the fleet in list order")
	}
}

func TestRestart(t *testing.T) {
	const restart = 50 * time.Millisecond
	f := newFixture(t, sim.FleetOptions{CVMs: 20, Seed: 11, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9})
	f.s.SetFaults(sim.Faults{RestartTime: restart})
	ctx := context.Background()
	var id string
	for _, i := range f.s.IDs() {
		c, err := f.c.GetCVM(ctx, i)
		if err != nil {
			t.Fatal(err)
		}
		if c.Status == "running" && !c.InProgress {
			id = i
			break
		}
	}
	if id == "" {
		t.Fatal("no running CVM")
	}
	kms := []string{"https://kms.restart:8000"}
	wantPatches := 2 // the PATCH with restart and the one after it; a 409 is not counted
	start := time.Now()
	if _, err := f.c.PatchNetworkConfig(ctx, id, api.NetworkConfigUpdate{KMSURLs: &kms, Restart: true}); err != nil {
		t.Fatal(err)
	}
	// The restart ends at most restart after this (the server set its end
	// before answering); start is only a lower bound of that end.
	patched := time.Now()
	c, err := f.c.GetCVM(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if time.Since(start) < restart {
		if !c.InProgress || c.Status == "running" {
			t.Errorf("during restart: status %q in_progress %v", c.Status, c.InProgress)
		}
		_, err = f.c.PatchNetworkConfig(ctx, id, api.NetworkConfigUpdate{KMSURLs: &kms})
		var e *api.Error
		if time.Since(start) < restart && (!errors.As(err, &e) || e.StatusCode != 409) {
			t.Errorf("PATCH during restart: %v, want 409", err)
		}
		if err == nil {
			// It landed after the window (checked just above), so it was
			// a real PATCH and counts.
			wantPatches++
		}
		list, err := f.c.ListCVMs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, lc := range list {
			if lc.ID == id && time.Since(start) < restart && (!lc.InProgress || lc.Status == "running") {
				t.Errorf("list during restart: status %q in_progress %v", lc.Status, lc.InProgress)
			}
		}
	} else {
		t.Log("machine too slow to observe the restart window")
	}
	// The network config is readable (and already new) during the restart.
	if nc, err := f.c.GetNetworkConfig(ctx, id); err != nil || !slices.Equal(nc.KMSURLs, kms) {
		t.Errorf("GetNetworkConfig = %v, %v", nc, err)
	}
	// Sleeping until start+restart+10ms failed whenever the PATCH took over
	// 10ms to reach the server (a loaded -race run): wait from its answer.
	time.Sleep(restart - time.Since(patched) + 10*time.Millisecond)
	c, err = f.c.GetCVM(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if c.InProgress || c.Status != "running" {
		t.Errorf("after restart: status %q in_progress %v", c.Status, c.InProgress)
	}
	if _, err := f.c.PatchNetworkConfig(ctx, id, api.NetworkConfigUpdate{}); err != nil {
		t.Errorf("PATCH after restart: %v", err)
	}
	if n := f.s.Stats().PatchesPerCVM[id]; n != wantPatches {
		t.Errorf("PatchesPerCVM = %d, want %d (the 409 is not counted)", n, wantPatches)
	}

	t.Run("restart settles on PATCH without a GET", func(t *testing.T) {
		id2 := f.s.IDs()[len(f.s.IDs())-1]
		if _, err := f.c.PatchNetworkConfig(ctx, id2, api.NetworkConfigUpdate{Restart: true}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(restart + 10*time.Millisecond)
		if _, err := f.c.PatchNetworkConfig(ctx, id2, api.NetworkConfigUpdate{}); err != nil {
			t.Errorf("PATCH after the restart window: %v", err)
		}
	})

	t.Run("NeverComesBack", func(t *testing.T) {
		id3 := f.s.IDs()[len(f.s.IDs())-2]
		f.s.NeverComesBack(id3)
		if _, err := f.c.PatchNetworkConfig(ctx, id3, api.NetworkConfigUpdate{Restart: true}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(restart + 10*time.Millisecond)
		c, err := f.c.GetCVM(ctx, id3)
		if err != nil {
			t.Fatal(err)
		}
		if c.Status != "stopped" || c.InProgress {
			t.Errorf("status %q in_progress %v, want stopped", c.Status, c.InProgress)
		}
		if _, err := f.c.PatchNetworkConfig(ctx, id3, api.NetworkConfigUpdate{}); api.StatusOf(err) != 409 {
			t.Errorf("PATCH on a CVM that never came back: %v, want 409", err)
		}
	})
}

// TestConcurrentReadsDuringRestart lists and reads from many goroutines
// while restarts finish; run with -race.
func TestConcurrentReadsDuringRestart(t *testing.T) {
	f := newFixture(t, sim.FleetOptions{CVMs: 60, Seed: 4, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9})
	f.s.SetFaults(sim.Faults{RestartTime: time.Millisecond})
	ctx := context.Background()
	ids := f.s.IDs()
	for _, id := range ids[:30] {
		if _, err := f.c.PatchNetworkConfig(ctx, id, api.NetworkConfigUpdate{Restart: true}); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(5 * time.Millisecond)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			// Readers only: a writer (GET /cvms/{id}, PATCH) in between
			// would order the list handlers and hide a race.
			var err error
			if i%2 == 0 {
				_, err = f.c.ListCVMs(ctx)
			} else {
				resp, _ := f.do(t, http.MethodGet, "/cvms", "")
				if resp.StatusCode != 200 {
					err = fmt.Errorf("status %d", resp.StatusCode)
				}
			}
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	all, err := f.c.ListCVMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range all {
		if c.InProgress || c.Status == "restarting" {
			t.Errorf("%s still restarting", c.ID)
		}
	}
}

// TestPatchNullIsUnchanged: null (what the client sends for a pointer to a
// nil slice) leaves a list as it is, like an omitted field.
func TestPatchNullIsUnchanged(t *testing.T) {
	f := newFixture(t, sim.FleetOptions{CVMs: 10, Seed: 8, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9})
	id := f.s.IDs()[0]
	kms, gw, _ := f.s.Config(id)
	resp, body := f.do(t, http.MethodPatch, "/cvms/"+id+"/network-config", `{"kms_urls":null,"gateway_urls":["https://gw.x:8000"],"restart":null}`)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	validate(t, "NetworkConfigResponse", body)
	k, g, _ := f.s.Config(id)
	if !slices.Equal(k, kms) || slices.Equal(g, gw) || !slices.Equal(g, []string{"https://gw.x:8000"}) {
		t.Errorf("after PATCH: kms %v (was %v), gateway %v (was %v)", k, kms, g, gw)
	}
	if c, err := f.c.GetCVM(context.Background(), id); err != nil || c.InProgress {
		t.Errorf("restart:null restarted the CVM: %+v, %v", c, err)
	}
}
