package dashboard

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/phalafleet/rollout/internal/plan"
	"github.com/phalafleet/rollout/internal/store"
)

// seedFile is the rollout the unit tests record directly in the store
// (no API, no queue): two stages, a budget, a rate.
const seedFile = `name: dash-test
selector: {all: true}
target:
  kms_urls: ["https://kms-new.example:8000"]
rate: {per_second: 20, max_in_flight: 10}
stages: [{name: canary, count: 10, promote: manual}, "100%"]
failure_budget: {max_failed: 5, min_executed: 10}
`

// seed records a running rollout of n pending CVMs (ids cvm_%08d, names
// prod-web-%06d) and returns its id.
func seed(t testing.TB, st *store.Store, n int, at time.Time) string {
	t.Helper()
	f, err := plan.Parse("seed.yaml", []byte(seedFile))
	if err != nil {
		t.Fatal(err)
	}
	spec, _ := json.Marshal(f)
	id := fmt.Sprintf("dash-test-%08x", n)
	nr := store.NewRollout{ID: id, Name: f.Name, Spec: string(spec), SpecHash: f.Hash(), CreatedBy: "test", State: store.RolloutRunning,
		Stages: []store.NewStage{{Name: "canary", Manual: true}, {Name: "stage-2"}}, Event: "applied (running)",
		Budget:       &store.Budget{MaxFailed: 5, MinExecuted: 10, Action: store.RolloutPaused},
		AllowOverlap: true} // a second seed in one Redis skips the CVMs the first holds
	for i := range n {
		stage := 1
		if i < 10 {
			stage = 0
		}
		nr.CVMs = append(nr.CVMs, store.NewCVM{ID: fmt.Sprintf("cvm_%08d", i+1), Name: fmt.Sprintf("prod-web-%06d", i+1), Stage: stage, State: store.Pending})
	}
	if _, err := st.Create(context.Background(), nr, at); err != nil {
		t.Fatal(err)
	}
	return id
}

// fakeClock is a settable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (f *fakeClock) Now() time.Time { f.mu.Lock(); defer f.mu.Unlock(); return f.t }
func (f *fakeClock) Add(d time.Duration) {
	f.mu.Lock()
	f.t = f.t.Add(d)
	f.mu.Unlock()
}

// client is a browser-like client of a test server: it keeps cookies and
// sends Sec-Fetch-Site: same-origin unless told otherwise.
type client struct {
	t    testing.TB
	base string
	hc   *http.Client
	csrf string
}

func newClient(t testing.TB, srv *httptest.Server) *client {
	hc := *srv.Client() // its own cookie jar
	c := &client{t: t, base: srv.URL, hc: &hc}
	c.hc.Jar, _ = cookiejar.New(nil)
	return c
}

func (c *client) do(method, path string, form url.Values, hdr map[string]string) (int, map[string]any) {
	c.t.Helper()
	var body *strings.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	} else {
		body = strings.NewReader("")
	}
	req, err := http.NewRequest(method, c.base+path, body)
	if err != nil {
		c.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	for k, v := range hdr {
		if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func (c *client) login(token, name string) int {
	c.t.Helper()
	code, v := c.do("POST", "/api/login", url.Values{"token": {token}, "name": {name}}, nil)
	if s, ok := v["csrf"].(string); ok {
		c.csrf = s
	}
	return code
}
