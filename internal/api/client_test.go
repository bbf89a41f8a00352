package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const testKey = "phak_0123456789abcdef_test_secret"

// newClient returns a Client for srvURL+"/api/v1" with small retry waits.
func newClient(t *testing.T, srvURL string, mod func(*Config)) *Client {
	t.Helper()
	cfg := Config{APIKey: testKey, Prefix: srvURL + "/api/v1", ReadTries: 3, MaxBackoff: 5 * time.Millisecond, Timeout: 5 * time.Second}
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

func newServer(t *testing.T, h http.HandlerFunc) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// dropConn closes the connection without an answer.
func dropConn(t *testing.T, w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		t.Error("ResponseWriter is not a Hijacker")
		return
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		t.Errorf("Hijack: %v", err)
		return
	}
	conn.Close()
}

// op is one client call, for tables that run every endpoint.
type op struct {
	name   string
	method string
	path   string // as the server sees it, under /api/v1
	call   func(ctx context.Context, c *Client) error
}

var readOps = []op{
	{"ListCVMs", http.MethodGet, "/cvms/paginated", func(ctx context.Context, c *Client) error { _, err := c.ListCVMs(ctx); return err }},
	{"GetCVM", http.MethodGet, "/cvms/cvm_abc", func(ctx context.Context, c *Client) error { _, err := c.GetCVM(ctx, "cvm_abc"); return err }},
	{"GetNetworkConfig", http.MethodGet, "/cvms/cvm_abc/network-config", func(ctx context.Context, c *Client) error {
		_, err := c.GetNetworkConfig(ctx, "cvm_abc")
		return err
	}},
}

var patchOp = op{"PatchNetworkConfig", http.MethodPatch, "/cvms/cvm_abc/network-config", func(ctx context.Context, c *Client) error {
	kms := []string{"https://kms.example:8000"}
	_, err := c.PatchNetworkConfig(ctx, "cvm_abc", NetworkConfigUpdate{KMSURLs: &kms})
	return err
}}

var allOps = append(append([]op(nil), readOps...), patchOp)

// okBody answers a successful request of any endpoint.
func okBody(w http.ResponseWriter, r *http.Request) {
	switch {
	case strings.HasSuffix(r.URL.Path, "/paginated"):
		writeJSON(w, 200, Page{Items: []CVM{{ID: "cvm_1", Name: "a"}}, Total: 1, Page: 1, PageSize: 100, Pages: 1})
	case strings.HasSuffix(r.URL.Path, "/network-config"):
		writeJSON(w, 200, NetworkConfig{KMSURLs: []string{"https://kms"}, GatewayURLs: []string{"https://gw"}})
	default:
		writeJSON(w, 200, CVM{ID: "cvm_abc", Name: "a", Status: "running"})
	}
}

func TestNew(t *testing.T) {
	tests := []struct {
		name       string
		cfg        Config
		wantErr    string
		wantPrefix string
	}{
		{name: "no key", cfg: Config{Prefix: "http://x/api/v1"}, wantErr: "PHALA_CLOUD_API_KEY"},
		{name: "default prefix", cfg: Config{APIKey: "k"}, wantPrefix: DefaultPrefix},
		{name: "trailing slash trimmed", cfg: Config{APIKey: "k", Prefix: "http://h:1/api/v1/"}, wantPrefix: "http://h:1/api/v1"},
		{name: "ftp", cfg: Config{APIKey: "k", Prefix: "ftp://h/api/v1"}, wantErr: "not an http(s) URL"},
		{name: "no scheme", cfg: Config{APIKey: "k", Prefix: "cloud-api.phala.com/api/v1"}, wantErr: "not an http(s) URL"},
		{name: "no host", cfg: Config{APIKey: "k", Prefix: "https:///api/v1"}, wantErr: "not an http(s) URL"},
		{name: "unparseable", cfg: Config{APIKey: "k", Prefix: "http://h:port/"}, wantErr: "not an http(s) URL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(tt.cfg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("New() error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			if got := c.base.String(); got != tt.wantPrefix {
				t.Errorf("base = %q, want %q", got, tt.wantPrefix)
			}
			if c.cfg.APIVersion != DefaultAPIVersion || c.cfg.ReadTries != DefaultReadTries || c.cfg.Timeout != DefaultTimeout || c.cfg.MaxBackoff <= 0 {
				t.Errorf("defaults not applied: %+v", c.cfg)
			}
		})
	}
}

func TestConfigFromEnv(t *testing.T) {
	t.Setenv("PHALA_CLOUD_API_KEY", "phak_env")
	t.Setenv("PHALA_CLOUD_API_PREFIX", "http://example.test/api/v1")
	cfg := ConfigFromEnv()
	if cfg.APIKey != "phak_env" || cfg.Prefix != "http://example.test/api/v1" {
		t.Errorf("ConfigFromEnv() = %+v", cfg)
	}
}

func TestRequestHeaders(t *testing.T) {
	versions := []struct {
		name, cfg, want string
	}{
		{"default", "", "2026-01-21"},
		{"configured", "2026-05-22", "2026-05-22"},
	}
	for _, v := range versions {
		for _, o := range allOps {
			t.Run(v.name+"/"+o.name, func(t *testing.T) {
				var got http.Header
				var method string
				srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
					got, method = r.Header.Clone(), r.Method
					okBody(w, r)
				})
				c := newClient(t, srv.URL, func(c *Config) { c.APIVersion = v.cfg })
				if err := o.call(context.Background(), c); err != nil {
					t.Fatal(err)
				}
				if method != o.method {
					t.Errorf("method = %s, want %s", method, o.method)
				}
				if k := got.Get("X-API-Key"); k != testKey {
					t.Errorf("X-API-Key = %q, want the key", k)
				}
				if pv := got.Get("X-Phala-Version"); pv != v.want {
					t.Errorf("X-Phala-Version = %q, want %q", pv, v.want)
				}
				if ua := got.Get("User-Agent"); !strings.HasPrefix(ua, "phala-rollout/") || ua != "phala-rollout/"+ToolVersion {
					t.Errorf("User-Agent = %q", ua)
				}
				if a := got.Get("Accept"); a != "application/json" {
					t.Errorf("Accept = %q", a)
				}
				if ct := got.Get("Content-Type"); (o.method == http.MethodPatch) != (ct == "application/json") {
					t.Errorf("Content-Type = %q for %s", ct, o.method)
				}
				if got.Get("Authorization") != "" {
					t.Errorf("an Authorization header was sent")
				}
			})
		}
	}
}

func TestPrefix(t *testing.T) {
	tests := []struct {
		name, prefix, wantBase string
	}{
		{"api v1", "/api/v1", "/api/v1"},
		{"trailing slash", "/api/v1/", "/api/v1"},
		{"proxy path", "/proxy/phala/api/v1", "/proxy/phala/api/v1"},
		{"bare host", "", ""},
	}
	for _, tt := range tests {
		for _, o := range allOps {
			t.Run(tt.name+"/"+o.name, func(t *testing.T) {
				var paths []string
				var mu sync.Mutex
				srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
					mu.Lock()
					paths = append(paths, r.URL.EscapedPath())
					mu.Unlock()
					okBody(w, r)
				})
				c := newClient(t, srv.URL, func(c *Config) { c.Prefix = srv.URL + tt.prefix })
				if err := o.call(context.Background(), c); err != nil {
					t.Fatal(err)
				}
				if len(paths) != 1 || paths[0] != tt.wantBase+o.path {
					t.Errorf("server saw %q, want [%q]", paths, tt.wantBase+o.path)
				}
			})
		}
	}
}

func TestListCVMsPaging(t *testing.T) {
	items := func(page, n int) []CVM {
		out := make([]CVM, n)
		for i := range out {
			out[i] = CVM{ID: fmt.Sprintf("cvm_p%d_%d", page, i), Name: "n", Status: "running"}
		}
		return out
	}
	tests := []struct {
		name      string
		pages     int   // what the server reports in "pages"
		perPage   []int // items on page i+1; beyond the slice the server answers 100 items
		wantCalls int
		wantItems int
	}{
		{name: "single page", pages: 1, perPage: []int{3}, wantCalls: 1, wantItems: 3},
		{name: "three pages stops at pages", pages: 3, perPage: []int{100, 100, 7}, wantCalls: 3, wantItems: 207},
		{name: "stops at pages though more would come", pages: 2, perPage: []int{100, 100, 100, 100}, wantCalls: 2, wantItems: 200},
		{name: "stops on an empty page", pages: 10, perPage: []int{100, 0}, wantCalls: 2, wantItems: 100},
		{name: "empty fleet", pages: 0, perPage: []int{0}, wantCalls: 1, wantItems: 0},
		{name: "pages zero with items", pages: 0, perPage: []int{5}, wantCalls: 1, wantItems: 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls atomic.Int32
			srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
				calls.Add(1)
				if r.URL.Path != "/api/v1/cvms/paginated" {
					t.Errorf("path = %s", r.URL.Path)
				}
				q := r.URL.Query()
				page, err := strconv.Atoi(q.Get("page"))
				if err != nil || page != int(calls.Load()) {
					t.Errorf("request %d asked page %q", calls.Load(), q.Get("page"))
				}
				if ps := q.Get("page_size"); ps != "100" {
					t.Errorf("page_size = %q, want 100", ps)
				}
				n := 100
				if page-1 < len(tt.perPage) {
					n = tt.perPage[page-1]
				}
				if page > 50 {
					n = 0 // never loop forever on a broken client
				}
				writeJSON(w, 200, Page{Items: items(page, n), Total: 999, Page: page, PageSize: 100, Pages: tt.pages})
			})
			got, err := newClient(t, srv.URL, nil).ListCVMs(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if int(calls.Load()) != tt.wantCalls {
				t.Errorf("requests = %d, want %d", calls.Load(), tt.wantCalls)
			}
			if len(got) != tt.wantItems {
				t.Errorf("items = %d, want %d", len(got), tt.wantItems)
			}
			seen := map[string]bool{}
			for _, c := range got {
				if seen[c.ID] {
					t.Fatalf("duplicate %s", c.ID)
				}
				seen[c.ID] = true
			}
		})
	}
}

func TestListCVMsErrorMidway(t *testing.T) {
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("page") == "2" {
			writeJSON(w, 403, map[string]any{"detail": "forbidden"})
			return
		}
		writeJSON(w, 200, Page{Items: []CVM{{ID: "cvm_1"}}, Pages: 3})
	})
	got, err := newClient(t, srv.URL, nil).ListCVMs(context.Background())
	if StatusOf(err) != 403 || got != nil {
		t.Fatalf("ListCVMs = %v, %v; want nil and a 403", got, err)
	}
}

func TestPathEscaping(t *testing.T) {
	ids := []string{"cvm_plain", "a/b", "a b", "../x", "q?x=1", "h#frag", "pct%2F", "a/b/network-config"}
	type call struct {
		name   string
		suffix string
		run    func(c *Client, id string) error
	}
	calls := []call{
		{"GetCVM", "", func(c *Client, id string) error { _, err := c.GetCVM(context.Background(), id); return err }},
		{"GetNetworkConfig", "/network-config", func(c *Client, id string) error {
			_, err := c.GetNetworkConfig(context.Background(), id)
			return err
		}},
		{"PatchNetworkConfig", "/network-config", func(c *Client, id string) error {
			_, err := c.PatchNetworkConfig(context.Background(), id, NetworkConfigUpdate{})
			return err
		}},
	}
	for _, id := range ids {
		for _, cl := range calls {
			t.Run(cl.name+"/"+id, func(t *testing.T) {
				var gotEscaped, gotID string
				mux := http.NewServeMux()
				h := func(w http.ResponseWriter, r *http.Request) {
					gotEscaped, gotID = r.URL.EscapedPath(), r.PathValue("id")
					okBody(w, r)
				}
				mux.HandleFunc("GET /api/v1/cvms/{id}", h)
				mux.HandleFunc("GET /api/v1/cvms/{id}/network-config", h)
				mux.HandleFunc("PATCH /api/v1/cvms/{id}/network-config", h)
				mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
					t.Errorf("unrouted %s %s", r.Method, r.URL.EscapedPath())
					http.NotFound(w, r)
				})
				srv := newServer(t, mux.ServeHTTP)
				c := newClient(t, srv.URL, nil)
				if err := cl.run(c, id); err != nil {
					t.Fatal(err)
				}
				want := "/api/v1/cvms/" + url.PathEscape(id) + cl.suffix
				if gotEscaped != want {
					t.Errorf("escaped path = %q, want %q", gotEscaped, want)
				}
				if gotID != id {
					t.Errorf("server routed id %q, want one segment %q", gotID, id)
				}
				if strings.Contains(id, "/") && !strings.Contains(gotEscaped, "%2F") {
					t.Errorf("slash not escaped: %q", gotEscaped)
				}
			})
		}
	}
}

func TestPatchBody(t *testing.T) {
	empty := []string{}
	var nilSlice []string
	kms := []string{"https://kms.a:8000", "https://kms.b:8000"}
	gw := []string{"https://gw.a:8000"}
	tests := []struct {
		name string
		upd  NetworkConfigUpdate
		want map[string]string // key -> raw JSON; a missing key must be absent
	}{
		{name: "nothing", upd: NetworkConfigUpdate{}, want: map[string]string{"restart": "false"}},
		{name: "restart only", upd: NetworkConfigUpdate{Restart: true}, want: map[string]string{"restart": "true"}},
		{name: "kms only", upd: NetworkConfigUpdate{KMSURLs: &kms}, want: map[string]string{"kms_urls": `["https://kms.a:8000","https://kms.b:8000"]`, "restart": "false"}},
		{name: "gateway only with restart", upd: NetworkConfigUpdate{GatewayURLs: &gw, Restart: true}, want: map[string]string{"gateway_urls": `["https://gw.a:8000"]`, "restart": "true"}},
		{name: "both", upd: NetworkConfigUpdate{KMSURLs: &kms, GatewayURLs: &gw}, want: map[string]string{"kms_urls": `["https://kms.a:8000","https://kms.b:8000"]`, "gateway_urls": `["https://gw.a:8000"]`, "restart": "false"}},
		{name: "empty kms clears", upd: NetworkConfigUpdate{KMSURLs: &empty}, want: map[string]string{"kms_urls": `[]`, "restart": "false"}},
		{name: "empty both", upd: NetworkConfigUpdate{KMSURLs: &empty, GatewayURLs: &empty, Restart: true}, want: map[string]string{"kms_urls": `[]`, "gateway_urls": `[]`, "restart": "true"}},
		// A pointer to a nil slice is null on the wire, which the API reads as "unchanged".
		{name: "pointer to nil slice is null", upd: NetworkConfigUpdate{GatewayURLs: &nilSlice}, want: map[string]string{"gateway_urls": `null`, "restart": "false"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var raw map[string]json.RawMessage
			srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
				if r.Method != http.MethodPatch {
					t.Errorf("method %s", r.Method)
				}
				b, _ := io.ReadAll(r.Body)
				if err := json.Unmarshal(b, &raw); err != nil {
					t.Errorf("body %q: %v", b, err)
				}
				writeJSON(w, 200, map[string]any{"kms_urls": []string{"https://k"}, "gateway_urls": []string{}, "ports": []any{map[string]any{"host_port": 1, "vm_port": 2}}})
			})
			nc, err := newClient(t, srv.URL, nil).PatchNetworkConfig(context.Background(), "cvm_abc", tt.upd)
			if err != nil {
				t.Fatal(err)
			}
			if len(nc.KMSURLs) != 1 || nc.GatewayURLs == nil || len(nc.GatewayURLs) != 0 || len(nc.Ports) != 1 || nc.Ports[0].VMPort != 2 {
				t.Errorf("decoded response = %+v", nc)
			}
			if len(raw) != len(tt.want) {
				t.Errorf("body keys = %v, want %v", keys(raw), tt.want)
			}
			for k, v := range tt.want {
				if got, ok := raw[k]; !ok || string(got) != v {
					t.Errorf("body[%s] = %s (present %v), want %s", k, got, ok, v)
				}
			}
		})
	}
}

func keys(m map[string]json.RawMessage) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestErrorParsing(t *testing.T) {
	future := time.Now().Add(30 * time.Second).UTC().Format(http.TimeFormat)
	past := time.Now().Add(-time.Hour).UTC().Format(http.TimeFormat)
	long := strings.Repeat("x", 500)
	tests := []struct {
		name         string
		status       int
		headers      map[string]string
		body         string
		wantCode     string
		wantMsg      string // exact unless wantMsgSub
		wantMsgSub   bool
		wantReqID    string
		wantRetryMin time.Duration
		wantRetryMax time.Duration
	}{
		{
			name: "structured", status: 404,
			body:     `{"error_code":"ERR-03-001","message":"CVM not found","request_id":"rid-body","details":[{"field":"id","value":1,"message":null}],"suggestions":["x"],"links":[]}`,
			wantCode: "ERR-03-001", wantMsg: "CVM not found", wantReqID: "rid-body",
		},
		{
			name: "structured body request_id beats header", status: 404, headers: map[string]string{"X-Request-ID": "rid-hdr"},
			body:     `{"error_code":"ERR-03-001","message":"gone","request_id":"rid-body"}`,
			wantCode: "ERR-03-001", wantMsg: "gone", wantReqID: "rid-body",
		},
		{
			name: "detail string", status: 403, headers: map[string]string{"X-Request-ID": "rid-1"},
			body:    `{"detail":"Network config update is not enabled for this workspace"}`,
			wantMsg: "Network config update is not enabled for this workspace", wantReqID: "rid-1",
		},
		{
			name: "FastAPI validation list", status: 422,
			body:    `{"detail":[{"loc":["body","kms_urls",0],"msg":"Input should be a valid URL","type":"url_parsing"},{"loc":["query","page_size"],"msg":"Input should be less than or equal to 100","type":"less_than_equal"}]}`,
			wantMsg: "body.kms_urls.0: Input should be a valid URL; query.page_size: Input should be less than or equal to 100",
		},
		{
			name: "structured nested under detail", status: 400, headers: map[string]string{"X-Request-ID": ""},
			body:     `{"detail":{"error_code":"ERR-02-007","message":"VMM too old","request_id":"rid-nested"}}`,
			wantCode: "ERR-02-007", wantMsg: "VMM too old", wantReqID: "rid-nested",
		},
		{
			name: "nested under detail, header request id kept", status: 400, headers: map[string]string{"X-Request-ID": "rid-hdr"},
			body:     `{"detail":{"error_code":"ERR-02-007","message":"VMM too old"}}`,
			wantCode: "ERR-02-007", wantMsg: "VMM too old", wantReqID: "rid-hdr",
		},
		{
			name: "non-JSON body", status: 502, headers: map[string]string{"X-Request-ID": "rid-gw"},
			body: "<html>502 Bad Gateway</html>\n", wantMsg: "502 Bad Gateway (an HTML page)", wantReqID: "rid-gw",
		},
		{name: "empty body uses status text", status: 409, body: "", wantMsg: "Conflict"},
		{name: "JSON without known fields", status: 400, body: `{"foo":1}`, wantMsg: `{"foo":1}`},
		{name: "detail null", status: 400, body: `{"detail":null}`, wantMsg: `{"detail":null}`},
		{name: "long body truncated", status: 500, body: long, wantMsg: long[:199] + "…"},
		{name: "Retry-After seconds", status: 429, headers: map[string]string{"Retry-After": "7"}, body: `{"detail":"Rate limit exceeded"}`,
			wantMsg: "Rate limit exceeded", wantRetryMin: 7 * time.Second, wantRetryMax: 7 * time.Second},
		{name: "Retry-After fractional", status: 503, headers: map[string]string{"Retry-After": "1.5"}, body: `{"detail":"x"}`,
			wantMsg: "x", wantRetryMin: 1500 * time.Millisecond, wantRetryMax: 1500 * time.Millisecond},
		{name: "Retry-After HTTP date", status: 429, headers: map[string]string{"Retry-After": future}, body: `{"detail":"slow down"}`,
			wantMsg: "slow down", wantRetryMin: 25 * time.Second, wantRetryMax: 31 * time.Second},
		{name: "Retry-After date in the past", status: 429, headers: map[string]string{"Retry-After": past}, body: `{"detail":"x"}`, wantMsg: "x"},
		{name: "Retry-After garbage", status: 429, headers: map[string]string{"Retry-After": "soon"}, body: `{"detail":"x"}`, wantMsg: "x"},
		{name: "Retry-After negative", status: 429, headers: map[string]string{"Retry-After": "-5"}, body: `{"detail":"x"}`, wantMsg: "x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
				for k, v := range tt.headers {
					w.Header().Set(k, v)
				}
				w.WriteHeader(tt.status)
				_, _ = io.WriteString(w, tt.body)
			})
			_, err := newClient(t, srv.URL, nil).PatchNetworkConfig(context.Background(), "cvm_abc", NetworkConfigUpdate{})
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("error %v (%T) is not an *Error", err, err)
			}
			if StatusOf(err) != tt.status || e.StatusCode != tt.status {
				t.Errorf("status = %d / %d, want %d", StatusOf(err), e.StatusCode, tt.status)
			}
			if e.Method != http.MethodPatch || e.Path != "/cvms/cvm_abc/network-config" {
				t.Errorf("Method, Path = %q, %q", e.Method, e.Path)
			}
			if e.ErrorCode != tt.wantCode {
				t.Errorf("ErrorCode = %q, want %q", e.ErrorCode, tt.wantCode)
			}
			if e.Message != tt.wantMsg {
				t.Errorf("Message = %q, want %q", e.Message, tt.wantMsg)
			}
			if e.RequestID != tt.wantReqID {
				t.Errorf("RequestID = %q, want %q", e.RequestID, tt.wantReqID)
			}
			if e.RetryAfter < tt.wantRetryMin || e.RetryAfter > tt.wantRetryMax {
				t.Errorf("RetryAfter = %v, want in [%v, %v]", e.RetryAfter, tt.wantRetryMin, tt.wantRetryMax)
			}
			s := e.Error()
			for _, part := range []string{"PATCH /cvms/cvm_abc/network-config", "HTTP " + strconv.Itoa(tt.status), tt.wantCode, tt.wantReqID} {
				if !strings.Contains(s, part) {
					t.Errorf("Error() = %q, missing %q", s, part)
				}
			}
		})
	}
}

func TestStatusOf(t *testing.T) {
	e := &Error{StatusCode: 429}
	tests := []struct {
		name string
		err  error
		want int
	}{
		{"nil", nil, 0},
		{"plain", errors.New("x"), 0},
		{"api error", e, 429},
		{"wrapped", fmt.Errorf("ctx: %w", e), 429},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := StatusOf(tt.err); got != tt.want {
				t.Errorf("StatusOf = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestTransient(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"429", &Error{StatusCode: 429}, true},
		{"500", &Error{StatusCode: 500}, true},
		{"503 wrapped", fmt.Errorf("x: %w", &Error{StatusCode: 503}), true},
		{"400", &Error{StatusCode: 400}, false},
		{"401", &Error{StatusCode: 401}, false},
		{"404", &Error{StatusCode: 404}, false},
		{"409", &Error{StatusCode: 409}, false},
		{"422", &Error{StatusCode: 422}, false},
		{"canceled", &url.Error{Op: "GET", URL: "/x", Err: context.Canceled}, false},
		{"deadline", &url.Error{Op: "GET", URL: "/x", Err: context.DeadlineExceeded}, true},
		{"EOF", &url.Error{Op: "GET", URL: "/x", Err: io.EOF}, true},
		{"bare unexpected EOF", io.ErrUnexpectedEOF, true},
		{"plain", errors.New("decoding response"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Transient(tt.err); got != tt.want {
				t.Errorf("Transient(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

// TestReadRetries runs every read against servers that fail in different ways.
func TestReadRetries(t *testing.T) {
	const tries = 3
	type answer func(t *testing.T, w http.ResponseWriter, r *http.Request)
	status := func(code int, hdr ...string) answer {
		return func(t *testing.T, w http.ResponseWriter, r *http.Request) {
			for i := 0; i+1 < len(hdr); i += 2 {
				w.Header().Set(hdr[i], hdr[i+1])
			}
			writeJSON(w, code, map[string]any{"detail": http.StatusText(code)})
		}
	}
	drop := func(t *testing.T, w http.ResponseWriter, r *http.Request) { dropConn(t, w) }
	ok := func(t *testing.T, w http.ResponseWriter, r *http.Request) { okBody(w, r) }
	tests := []struct {
		name       string
		answers    []answer // the last one repeats
		wantCalls  int
		wantStatus int  // 0: no *Error
		wantErr    bool // an error with no HTTP status
		wantRetry  time.Duration
	}{
		{name: "ok first time", answers: []answer{ok}, wantCalls: 1},
		{name: "503 always", answers: []answer{status(503)}, wantCalls: tries, wantStatus: 503},
		{name: "500 always", answers: []answer{status(500)}, wantCalls: tries, wantStatus: 500},
		{name: "502 then ok", answers: []answer{status(502), ok}, wantCalls: 2},
		{name: "500 503 then ok", answers: []answer{status(500), status(503), ok}, wantCalls: 3},
		{name: "429 Retry-After 1 always", answers: []answer{status(429, "Retry-After", "1")}, wantCalls: tries, wantStatus: 429, wantRetry: time.Second},
		{name: "429 Retry-After 0 then ok", answers: []answer{status(429, "Retry-After", "0"), ok}, wantCalls: 2},
		{name: "429 then ok", answers: []answer{status(429, "Retry-After", "1"), ok}, wantCalls: 2},
		{name: "dropped connection always", answers: []answer{drop}, wantCalls: tries, wantErr: true},
		{name: "dropped then ok", answers: []answer{drop, ok}, wantCalls: 2},
		{name: "400 not retried", answers: []answer{status(400)}, wantCalls: 1, wantStatus: 400},
		{name: "401 not retried", answers: []answer{status(401)}, wantCalls: 1, wantStatus: 401},
		{name: "403 not retried", answers: []answer{status(403)}, wantCalls: 1, wantStatus: 403},
		{name: "404 not retried", answers: []answer{status(404)}, wantCalls: 1, wantStatus: 404},
		{name: "409 not retried", answers: []answer{status(409)}, wantCalls: 1, wantStatus: 409},
		{name: "422 not retried", answers: []answer{status(422)}, wantCalls: 1, wantStatus: 422},
		{name: "bad JSON on 200 not retried", answers: []answer{func(t *testing.T, w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(200)
			_, _ = io.WriteString(w, "{not json")
		}}, wantCalls: 1, wantErr: true},
	}
	for _, tt := range tests {
		for _, o := range readOps {
			t.Run(tt.name+"/"+o.name, func(t *testing.T) {
				var calls atomic.Int32
				srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
					n := int(calls.Add(1))
					tt.answers[min(n, len(tt.answers))-1](t, w, r)
				})
				c := newClient(t, srv.URL, func(c *Config) { c.ReadTries = tries })
				start := time.Now()
				err := o.call(context.Background(), c)
				if el := time.Since(start); el > 2*time.Second {
					t.Errorf("took %v; Retry-After must be capped by MaxBackoff", el)
				}
				if got := int(calls.Load()); got != tt.wantCalls {
					t.Errorf("server saw %d requests, want %d", got, tt.wantCalls)
				}
				switch {
				case tt.wantStatus != 0:
					var e *Error
					if !errors.As(err, &e) || e.StatusCode != tt.wantStatus {
						t.Fatalf("err = %v, want an *Error with status %d", err, tt.wantStatus)
					}
					if e.RetryAfter != tt.wantRetry {
						t.Errorf("RetryAfter = %v, want %v", e.RetryAfter, tt.wantRetry)
					}
					if e.RequestID != "" {
						t.Errorf("RequestID = %q", e.RequestID)
					}
				case tt.wantErr:
					if err == nil || StatusOf(err) != 0 {
						t.Fatalf("err = %v, want a non-HTTP error", err)
					}
				default:
					if err != nil {
						t.Fatalf("err = %v, want success", err)
					}
				}
			})
		}
	}
}

func TestPatchTriedOnce(t *testing.T) {
	tests := []struct {
		name       string
		answer     func(t *testing.T, w http.ResponseWriter)
		wantStatus int
	}{
		{"503", func(t *testing.T, w http.ResponseWriter) { writeJSON(w, 503, map[string]any{"detail": "x"}) }, 503},
		{"500", func(t *testing.T, w http.ResponseWriter) { writeJSON(w, 500, map[string]any{"detail": "x"}) }, 500},
		{"429", func(t *testing.T, w http.ResponseWriter) {
			w.Header().Set("Retry-After", "0")
			writeJSON(w, 429, map[string]any{"detail": "x"})
		}, 429},
		{"409", func(t *testing.T, w http.ResponseWriter) { writeJSON(w, 409, map[string]any{"detail": "busy"}) }, 409},
		{"dropped", func(t *testing.T, w http.ResponseWriter) { dropConn(t, w) }, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls atomic.Int32
			srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
				calls.Add(1)
				tt.answer(t, w)
			})
			c := newClient(t, srv.URL, func(c *Config) { c.ReadTries = 5 })
			err := patchOp.call(context.Background(), c)
			if err == nil {
				t.Fatal("PATCH succeeded")
			}
			if StatusOf(err) != tt.wantStatus {
				t.Errorf("status = %d, want %d (%v)", StatusOf(err), tt.wantStatus, err)
			}
			if n := calls.Load(); n != 1 {
				t.Errorf("PATCH sent %d times, want exactly 1", n)
			}
		})
	}
}

// TestManyReadTries guards the backoff against overflowing its shift when
// ReadTries is large.
func TestManyReadTries(t *testing.T) {
	var calls atomic.Int32
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		writeJSON(w, 503, map[string]any{"detail": "x"})
	})
	c := newClient(t, srv.URL, func(c *Config) { c.ReadTries = 70; c.MaxBackoff = time.Microsecond })
	_, err := c.GetCVM(context.Background(), "cvm_abc")
	if StatusOf(err) != 503 || calls.Load() != 70 {
		t.Fatalf("err = %v after %d calls, want 503 after 70", err, calls.Load())
	}
	for attempt := 1; attempt <= 200; attempt++ {
		if d := c.backoff(attempt); d < 0 || d > c.cfg.MaxBackoff {
			t.Fatalf("backoff(%d) = %v, outside [0, %v]", attempt, d, c.cfg.MaxBackoff)
		}
	}
}

func TestReadStopsOnCancel(t *testing.T) {
	var calls atomic.Int32
	ctx, cancel := context.WithCancel(context.Background())
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 2 {
			cancel()
		}
		writeJSON(w, 503, map[string]any{"detail": "x"})
	})
	c := newClient(t, srv.URL, func(c *Config) { c.ReadTries = 50; c.MaxBackoff = time.Millisecond })
	_, err := c.GetCVM(ctx, "cvm_abc")
	if err == nil {
		t.Fatal("want an error")
	}
	if n := calls.Load(); n > 3 {
		t.Errorf("kept retrying after cancel: %d calls", n)
	}
}

func TestRequestTimeout(t *testing.T) {
	release := make(chan struct{})
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	defer srv.Close()
	defer close(release)
	// Each try must reach the handler before its timeout for calls to be 2:
	// 30ms (dial, accept, read the request) was within reach of a stall on
	// a loaded 2-core machine; 250ms is not, and still far below the 2s check.
	c := newClient(t, srv.URL, func(c *Config) { c.Timeout = 250 * time.Millisecond; c.ReadTries = 2 })
	start := time.Now()
	_, err := c.GetNetworkConfig(context.Background(), "cvm_abc")
	if err == nil || !Transient(err) || StatusOf(err) != 0 {
		t.Fatalf("err = %v, want a transient timeout", err)
	}
	if calls.Load() != 2 {
		t.Errorf("calls = %d, want 2", calls.Load())
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("took %v", el)
	}
	if strings.Contains(err.Error(), testKey) {
		t.Errorf("error leaks the key: %v", err)
	}
}

// TestErrorsNeverCarryKey checks every error path for the key.
func TestErrorsNeverCarryKey(t *testing.T) {
	closed := httptest.NewServer(http.NotFoundHandler())
	closedURL := closed.URL
	closed.Close()

	echo := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		k := r.Header.Get("X-API-Key")
		w.Header().Set("X-Request-ID", "rid-"+k)
		writeJSON(w, 401, map[string]any{"error_code": "ERR-" + k, "message": "invalid API key " + k, "request_id": "rid-" + k})
	})
	echoDetail := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 403, map[string]any{"detail": "key " + r.Header.Get("X-API-Key") + " is not allowed"})
	})
	echoText := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(400)
		fmt.Fprintf(w, "bad header X-API-Key: %s", r.Header.Get("X-API-Key"))
	})
	dropper := newServer(t, func(w http.ResponseWriter, r *http.Request) { dropConn(t, w) })
	badJSON := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(200)
		fmt.Fprintf(w, `{"id": %s`, r.Header.Get("X-API-Key"))
	})
	echoAtCut := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(500)
		io.WriteString(w, strings.Repeat("x", 180)+r.Header.Get("X-API-Key")) // the 200-char cut lands inside the key
	})
	servers := []struct{ name, url string }{
		{"echoes key where the message is cut", echoAtCut.URL},
		{"closed server", closedURL},
		{"echoes key in structured body", echo.URL},
		{"echoes key in detail", echoDetail.URL},
		{"echoes key in text body", echoText.URL},
		{"drops connection", dropper.URL},
		{"bad JSON with key", badJSON.URL},
	}
	for _, s := range servers {
		for _, o := range allOps {
			t.Run(s.name+"/"+o.name, func(t *testing.T) {
				c := newClient(t, s.url, func(c *Config) { c.ReadTries = 2 })
				err := o.call(context.Background(), c)
				if err == nil {
					t.Fatal("want an error")
				}
				if strings.Contains(err.Error(), testKey[:12]) {
					t.Errorf("Error() leaks the API key: %q", err.Error())
				}
				if strings.Contains(fmt.Sprintf("%+v", err), testKey) {
					t.Errorf("%%+v leaks the API key")
				}
				var e *Error
				if errors.As(err, &e) {
					for _, f := range []string{e.Message, e.ErrorCode, e.RequestID, e.Path} {
						if strings.Contains(f, testKey[:12]) {
							t.Errorf("*Error field leaks the key: %q", f)
						}
					}
				}
			})
		}
	}
}

// TestRedirectKeepsKeyHome: Go's client forwards custom headers on a
// redirect to another host; X-API-Key must not follow it.
func TestRedirectKeepsKeyHome(t *testing.T) {
	var foreignKey, homeKey atomic.Value
	foreign := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		foreignKey.Store(r.Header.Get("X-API-Key"))
		okBody(w, r)
	})
	var home *httptest.Server
	home = newServer(t, func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/moved") {
			homeKey.Store(r.Header.Get("X-API-Key"))
			okBody(w, r)
			return
		}
		target := foreign.URL + r.URL.Path
		if r.URL.Query().Get("home") != "" || strings.Contains(r.URL.Path, "cvm_home") {
			target = home.URL + "/moved" + r.URL.Path
		}
		http.Redirect(w, r, target, http.StatusTemporaryRedirect)
	})
	c := newClient(t, home.URL, nil)
	if _, err := c.GetCVM(context.Background(), "cvm_abc"); err != nil {
		t.Fatal(err)
	}
	if k, _ := foreignKey.Load().(string); k != "" {
		t.Errorf("redirect to another host received X-API-Key %q", k)
	}
	if _, err := c.GetCVM(context.Background(), "cvm_home"); err != nil {
		t.Fatal(err)
	}
	if k, _ := homeKey.Load().(string); k != testKey {
		t.Errorf("same-host redirect lost the key: %q", k)
	}
}

// TestRedirectCustomClient: a caller's CheckRedirect still decides.
func TestRedirectCustomClient(t *testing.T) {
	var calls atomic.Int32
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		http.Redirect(w, r, "/elsewhere", http.StatusTemporaryRedirect)
	})
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	c := newClient(t, srv.URL, func(c *Config) { c.HTTPClient = hc })
	_, err := c.GetCVM(context.Background(), "cvm_abc")
	if StatusOf(err) != http.StatusTemporaryRedirect || calls.Load() != 1 {
		t.Fatalf("err = %v after %d calls, want the 307 itself", err, calls.Load())
	}
}

func TestConcurrentUse(t *testing.T) {
	srv := newServer(t, func(w http.ResponseWriter, r *http.Request) { okBody(w, r) })
	c := newClient(t, srv.URL, nil)
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Go(func() {
			if err := allOps[i%len(allOps)].call(context.Background(), c); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
}

func TestCVMAccessors(t *testing.T) {
	tests := []struct {
		name                                   string
		body                                   string
		wantNode, wantRegion, wantVMM, wantApp string
	}{
		{"full", `{"id":"cvm_1","name":"a","app_id":"abc","status":"running","node_info":{"id":1,"name":"prod1","region":"us-east","version":"0.5.7"},"extra":{"x":1}}`, "prod1", "us-east", "0.5.7", "abc"},
		{"null node_info", `{"id":"cvm_1","name":"a","app_id":null,"status":"running","node_info":null}`, "", "", "", ""},
		{"no node_info", `{"id":"cvm_1","name":"a","status":"running"}`, "", "", "", ""},
		{"null fields", `{"id":"cvm_1","name":"a","status":"running","node_info":{"id":null,"name":null,"region":null,"version":null}}`, "", "", "", ""},
		{"absent fields", `{"id":"cvm_1","name":"a","status":"running","node_info":{"object_type":"node"}}`, "", "", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c CVM
			if err := json.Unmarshal([]byte(tt.body), &c); err != nil {
				t.Fatal(err)
			}
			if c.NodeName() != tt.wantNode || c.NodeRegion() != tt.wantRegion || c.VMMVersion() != tt.wantVMM || c.AppIDValue() != tt.wantApp {
				t.Errorf("got node %q region %q vmm %q app %q", c.NodeName(), c.NodeRegion(), c.VMMVersion(), c.AppIDValue())
			}
		})
	}
}
