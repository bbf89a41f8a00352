package dashboard

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/testutil"
	"github.com/phalafleet/rollout/internal/worker"
)

const testToken = "0123456789abcdef0123"

type rig struct {
	st    *store.Store
	h     *Handler
	srv   *httptest.Server
	clock *fakeClock
	count *testutil.Counter
	id    string
}

// newRig records a rollout of n CVMs and serves a dashboard on it (token
// "" for read-only) with a fake clock and a command counter.
func newRig(t *testing.T, n int, token string) *rig {
	t.Helper()
	rdb, _ := testutil.Redis(t)
	r := &rig{st: store.New(rdb), clock: &fakeClock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}, count: &testutil.Counter{}}
	r.id = seed(t, r.st, n, r.clock.Now())
	rdb.AddHook(r.count)
	r.h = New(Config{RDB: rdb, Token: token, Now: r.clock.Now, Tick: time.Second})
	r.srv = httptest.NewServer(r.h)
	t.Cleanup(r.srv.Close)
	return r
}

func (r *rig) state(t *testing.T) (store.RolloutState, int) {
	t.Helper()
	ro, err := r.st.Get(context.Background(), r.id)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := r.st.Events(context.Background(), r.id, 0)
	if err != nil {
		t.Fatal(err)
	}
	return ro.State, len(ev)
}

func TestReadOnlyRefusesActions(t *testing.T) {
	r := newRig(t, 20, "")
	c := newClient(t, r.srv)
	if _, v := c.do("GET", "/api/session", nil, nil); v["writable"] != false {
		t.Fatalf("session %v: want writable false", v)
	}
	if code := c.login(testToken, "alice"); code != http.StatusForbidden {
		t.Errorf("login on a read-only dashboard: %d, want 403", code)
	}
	code, _ := c.do("POST", "/api/rollouts/"+r.id+"/pause", url.Values{}, map[string]string{"Authorization": "Bearer " + testToken, "X-Operator": "x"})
	if code != http.StatusForbidden {
		t.Errorf("pause on a read-only dashboard: %d, want 403", code)
	}
	if st, _ := r.state(t); st != store.RolloutRunning {
		t.Errorf("state %s after refused pause", st)
	}
}

func TestWrongTokenIs401AndChangesNothing(t *testing.T) {
	r := newRig(t, 20, testToken)
	var logs bytes.Buffer
	r.h.cfg.Log = slog.New(slog.NewTextHandler(&logs, nil))
	before, events := r.state(t)
	c := newClient(t, r.srv)
	if code := c.login("wrong-token-0000000000", "mallory"); code != http.StatusUnauthorized {
		t.Errorf("login with a wrong token: %d, want 401", code)
	}
	for _, hdr := range []map[string]string{
		{"Authorization": "Bearer wrong-token-0000000000", "X-Operator": "mallory"},
		{}, // no session at all
	} {
		for _, a := range []string{"pause", "cancel", "promote", "retry"} {
			if code, _ := c.do("POST", "/api/rollouts/"+r.id+"/"+a, url.Values{"reason": {"x"}}, hdr); code != http.StatusUnauthorized {
				t.Errorf("%s with %v: %d, want 401", a, hdr, code)
			}
		}
	}
	after, eventsAfter := r.state(t)
	if after != before || eventsAfter != events {
		t.Errorf("after 401s: state %s (was %s), %d events (was %d)", after, before, eventsAfter, events)
	}
	// Refusals are logged, tokens never.
	if l := logs.String(); !strings.Contains(l, "sign-in refused") || strings.Contains(l, "wrong-token") || strings.Contains(l, testToken) {
		t.Errorf("logs:\n%s", l)
	}
}

func TestCSRFAndCrossSiteRefused(t *testing.T) {
	r := newRig(t, 20, testToken)
	c := newClient(t, r.srv)
	if code := c.login(testToken, "alice"); code != http.StatusOK || c.csrf == "" {
		t.Fatalf("login: %d, csrf %q", code, c.csrf)
	}
	path := "/api/rollouts/" + r.id + "/pause"
	cases := []struct {
		name string
		hdr  map[string]string
	}{
		{"no CSRF token", nil},
		{"wrong CSRF token", map[string]string{"X-CSRF-Token": "nope"}},
		{"cross-site fetch", map[string]string{"X-CSRF-Token": c.csrf, "Sec-Fetch-Site": "cross-site"}},
		{"foreign Origin", map[string]string{"X-CSRF-Token": c.csrf, "Sec-Fetch-Site": "", "Origin": "https://evil.example"}},
	}
	for _, tc := range cases {
		if code, v := c.do("POST", path, url.Values{}, tc.hdr); code != http.StatusForbidden {
			t.Errorf("%s: %d %v, want 403", tc.name, code, v)
		}
	}
	if st, _ := r.state(t); st != store.RolloutRunning {
		t.Fatalf("state %s after refused pauses", st)
	}
	// Cross-site sign-in is refused too (login CSRF).
	if code, _ := c.do("POST", "/api/login", url.Values{"token": {testToken}, "name": {"x"}}, map[string]string{"Sec-Fetch-Site": "cross-site"}); code != http.StatusForbidden {
		t.Errorf("cross-site login: %d, want 403", code)
	}
	code, v := c.do("POST", path, url.Values{"reason": {"looks wrong"}}, map[string]string{"X-CSRF-Token": c.csrf})
	if code != http.StatusOK {
		t.Fatalf("pause with session and CSRF token: %d %v", code, v)
	}
	ro, _ := r.st.Get(context.Background(), r.id)
	ev, _ := r.st.Events(context.Background(), r.id, 1)
	if ro.State != store.RolloutPaused || ro.Reason != "looks wrong" || len(ev) != 1 || ev[0].By != "dashboard:alice" {
		t.Errorf("after pause: state %s reason %q, last event %+v", ro.State, ro.Reason, ev)
	}
	// A script: bearer token and X-Operator, no cookie, no CSRF token.
	s := newClient(t, r.srv)
	code, v = s.do("POST", "/api/rollouts/"+r.id+"/resume", url.Values{}, map[string]string{"Authorization": "Bearer " + testToken, "X-Operator": "ci-bot", "Sec-Fetch-Site": ""})
	if code != http.StatusOK {
		t.Fatalf("resume with bearer: %d %v", code, v)
	}
	if ev, _ := r.st.Events(context.Background(), r.id, 1); ev[0].By != "dashboard:ci-bot" {
		t.Errorf("resume event by %q, want dashboard:ci-bot", ev[0].By)
	}
	// A refused operation is a 409 with control's reason.
	if code, v := c.do("POST", "/api/rollouts/"+r.id+"/promote", url.Values{}, map[string]string{"X-CSRF-Token": c.csrf}); code != http.StatusConflict {
		t.Errorf("promote of an unfinished stage: %d %v, want 409", code, v)
	}
}

func TestLoadTokenChecksMode(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode) // the umask may have cut it
		return p
	}
	if tok, err := LoadToken(write("ok", testToken+"\n", 0o600)); err != nil || tok != testToken {
		t.Errorf("0600: %q, %v", tok, err)
	}
	if _, err := LoadToken(write("ro", testToken, 0o400)); err != nil {
		t.Errorf("0400: %v", err)
	}
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604} {
		p := write(fmt.Sprintf("m%o", mode), testToken, mode)
		_, err := LoadToken(p)
		if err == nil || !strings.Contains(err.Error(), "chmod 600") || strings.Contains(err.Error(), testToken) || strings.Contains(err.Error(), "\n") {
			t.Errorf("mode %o: %v", mode, err)
		}
	}
	if _, err := LoadToken(write("short", "abc", 0o600)); err == nil {
		t.Error("a 3-character token was accepted")
	}
	if _, err := LoadToken(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing file: %v", err)
	}
}

func TestCVMTablePagesAndSearches(t *testing.T) {
	r := newRig(t, 1200, "")
	ctx := context.Background()
	// Fail three CVMs so the state filter has something to find.
	for _, n := range []int{7, 640, 1111} {
		cvm := fmt.Sprintf("cvm_%08d", n)
		if _, err := r.st.Move(ctx, r.id, cvm, store.Running, store.ModeBegin, r.clock.Now()); err != nil {
			t.Fatal(err)
		}
		if _, err := r.st.Move(ctx, r.id, cvm, store.Failed, store.ModeFinish, r.clock.Now(), "reason", "PATCH answered 422: bad gateway url (request_id req-"+cvm+")"); err != nil {
			t.Fatal(err)
		}
	}
	c := newClient(t, r.srv)
	get := func(q string) map[string]any {
		t.Helper()
		r.clock.Add(time.Second) // a fresh snapshot
		code, v := c.do("GET", "/api/rollouts/"+r.id+"/cvms?"+q, nil, nil)
		if code != 200 {
			t.Fatalf("%s: %d %v", q, code, v)
		}
		return v
	}
	ids := func(v map[string]any) []string {
		var out []string
		for _, row := range v["rows"].([]any) {
			out = append(out, row.(map[string]any)["cvm_id"].(string))
		}
		return out
	}
	v := get("limit=50")
	if got := ids(v); len(got) != 50 || got[0] != "cvm_00000001" || got[49] != "cvm_00000050" || v["next"] != 50.0 || v["total"] != 1200.0 {
		t.Errorf("first page: %d rows %v..., next %v total %v", len(got), got[:min(2, len(got))], v["next"], v["total"])
	}
	v = get("from=1180&limit=50")
	if got := ids(v); len(got) != 20 || got[19] != "cvm_00001200" || v["next"] != -1.0 {
		t.Errorf("last page: %d rows, next %v", len(got), v["next"])
	}
	if got := ids(get("state=failed")); strings.Join(got, ",") != "cvm_00000007,cvm_00000640,cvm_00001111" {
		t.Errorf("state=failed: %v", got)
	}
	if got := ids(get("q=PROD-WEB-000640")); strings.Join(got, ",") != "cvm_00000640" {
		t.Errorf("name search: %v", got)
	}
	if got := ids(get("q=cvm_00001111")); strings.Join(got, ",") != "cvm_00001111" {
		t.Errorf("id lookup: %v", got)
	}
	if got := ids(get("q=request_id+req-cvm_00000007")); strings.Join(got, ",") != "cvm_00000007" {
		t.Errorf("reason search: %v", got)
	}
	row := get("q=cvm_00000007")["rows"].([]any)[0].(map[string]any)
	if row["state"] != "failed" || !strings.Contains(row["reason"].(string), "422") {
		t.Errorf("row %v", row)
	}
	if code, _ := c.do("GET", "/api/rollouts/"+r.id+"/cvms?limit=100000", nil, nil); code != 400 {
		t.Errorf("limit=100000: %d, want 400", code)
	}
	if code, _ := c.do("GET", "/api/rollouts/no-such-00000000/cvms", nil, nil); code != 404 {
		t.Errorf("unknown rollout: %d, want 404", code)
	}
}

// A filter that matches rarely reads at most ScanBudget records per page
// and says where to go on, instead of reading the whole rollout.
func TestFilteredPageIsBounded(t *testing.T) {
	r := newRig(t, store.ScanBudget+600, "")
	ctx := context.Background()
	rare := fmt.Sprintf("prod-web-%06d", store.ScanBudget+300)
	p, err := r.st.CVMs(ctx, r.id, store.CVMQuery{Limit: 50, Match: rare})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Rows) != 0 || p.Scanned != store.ScanBudget || p.Next != store.ScanBudget {
		t.Fatalf("first filtered page: %d rows, scanned %d, next %d", len(p.Rows), p.Scanned, p.Next)
	}
	p, err = r.st.CVMs(ctx, r.id, store.CVMQuery{From: p.Next, Limit: 50, Match: rare})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Rows) != 1 || p.Rows[0].Name != rare || p.Next != -1 {
		t.Fatalf("second filtered page: %+v next %d", p.Rows, p.Next)
	}
}

// Many viewers of a page cost one Redis read per tick between them.
func TestOneReadPerTickForAllViewers(t *testing.T) {
	r := newRig(t, 50, "")
	c := newClient(t, r.srv)
	for _, path := range []string{"/api/rollouts/" + r.id, "/api/rollouts", "/api/queue", "/api/rollouts/" + r.id + "/cvms?limit=20"} {
		r.clock.Add(time.Second)
		r.count.Reset()
		var wg sync.WaitGroup
		for range 20 {
			wg.Go(func() {
				if code, v := c.do("GET", path, nil, nil); code != 200 {
					t.Errorf("%s: %d %v", path, code, v)
				}
			})
		}
		wg.Wait()
		first := r.count.Trips()
		if first == 0 {
			t.Fatalf("%s: no Redis read at all", path)
		}
		for range 5 {
			c.do("GET", path, nil, nil)
		}
		if n := r.count.Trips(); n != first {
			t.Errorf("%s: 25 viewers in one tick made %d round trips, the first refresh %d", path, n, first)
		}
		r.clock.Add(time.Second)
		c.do("GET", path, nil, nil)
		// (asynq's inspector may skip a read the second time.)
		if n := r.count.Trips() - first; n == 0 || n > first {
			t.Errorf("%s: next tick: %d round trips, want 1 to %d", path, n, first)
		}
		t.Logf("%s: %d round trips per tick", path, first)
	}
}

// renderCost is what one render of the rollout page asks Redis: its
// snapshot and the first page of its CVM table.
func renderCost(t testing.TB, r *rig, id string) (trips, cmds int64) {
	r.clock.Add(time.Second)
	r.count.Reset()
	for _, p := range []string{"/api/rollouts/" + id, "/api/rollouts/" + id + "/cvms?limit=50"} {
		resp, err := r.srv.Client().Get(r.srv.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d", p, resp.StatusCode)
		}
	}
	return r.count.Trips(), r.count.Cmds()
}

func TestCommandsPerRenderConstantInFleetSize(t *testing.T) {
	r := newRig(t, 100, "")
	big := seed(t, r.st, 5000, r.clock.Now())
	st, sc := renderCost(t, r, r.id)
	bt, bc := renderCost(t, r, big)
	if st != bt || sc != bc {
		t.Errorf("rollout page: %d round trips / %d commands at 100 CVMs, %d / %d at 5000", st, sc, bt, bc)
	}
	t.Logf("rollout page render: %d round trips, %d commands, at 100 and at 5000 CVMs", st, sc)
}

func TestRolloutViewWaitBudgetRate(t *testing.T) {
	r := newRig(t, 30, "")
	ctx := context.Background()
	now := r.clock.Now()
	if v, err := r.h.rollout(ctx, r.id); err != nil || strings.Join(v.Actions, ",") != "pause,cancel" || v.Wait.Kind != "" {
		t.Fatalf("a fresh rollout: actions %v, wait %+v, err %v", v.Actions, v.Wait, err)
	}
	// Finish the canary: 9 succeeded, 1 failed.
	for i := 1; i <= 10; i++ {
		cvm := fmt.Sprintf("cvm_%08d", i)
		r.st.Move(ctx, r.id, cvm, store.Running, store.ModeBegin, now)
		to, extra := store.Succeeded, []string{}
		if i == 3 {
			to, extra = store.Failed, []string{"reason", "PATCH answered 500: boom (request_id rq-42)"}
		}
		if _, err := r.st.Move(ctx, r.id, cvm, to, store.ModeFinish, now, extra...); err != nil {
			t.Fatal(err)
		}
	}
	v, err := r.h.rollout(ctx, r.id)
	if err != nil {
		t.Fatal(err)
	}
	if v.Wait.Kind != "promote" || v.Done != 10 || v.Counts[store.Succeeded] != 9 || v.Stages[0].Done != 10 || !v.Stages[0].Current {
		t.Errorf("wait %+v done %d counts %v stage0 %+v", v.Wait, v.Done, v.Counts, v.Stages[0])
	}
	if b := v.Budget; b == nil || b.Failed != 1 || b.Left != 4 || b.Executed != 10 {
		t.Errorf("budget %+v", v.Budget)
	}
	if len(v.Failures) != 1 || v.Failures[0].CVM != "cvm_00000003" || v.Failures[0].RequestID != "rq-42" || v.Failures[0].Message != "PATCH answered 500: boom" {
		t.Errorf("failures %+v", v.Failures)
	}
	if v.Rate.LimitPerSec != 20 || v.Rate.MaxInFlight != 10 || v.Rate.AdaptiveRate != nil {
		t.Errorf("rate %+v", v.Rate)
	}
	if strings.Join(v.Actions, ",") != "pause,cancel,promote,retry" {
		t.Errorf("actions %v", v.Actions)
	}
	// CVMs/s from the snapshots over time: from 0 done at the first
	// snapshot to 20 done 10 s later, 10 left.
	r.clock.Add(10 * time.Second)
	for i := 11; i <= 30; i++ {
		cvm := fmt.Sprintf("cvm_%08d", i)
		r.st.Move(ctx, r.id, cvm, store.Running, store.ModeBegin, now)
		if i <= 20 {
			r.st.Move(ctx, r.id, cvm, store.Succeeded, store.ModeFinish, now)
		}
	}
	v, _ = r.h.rollout(ctx, r.id)
	if v.Rate.CVMsPerSecond != 2 || v.Rate.ETASeconds == nil || *v.Rate.ETASeconds != 5 {
		t.Errorf("speed %v eta %v, want 2 CVMs/s and 5s", v.Rate.CVMsPerSecond, v.Rate.ETASeconds)
	}
	// A bake: a stage done at T with bake 30s waits until T+30s.
	bake := wait(&store.Rollout{State: store.RolloutRunning, Promoted: -1, Stages: []store.Stage{
		{Counts: map[store.CVMState]int{store.Succeeded: 3}, Bake: 30 * time.Second, DoneAt: now}, {}}}, now.Add(10*time.Second))
	if bake.Kind != "bake" || bake.Until == nil || !bake.Until.Equal(now.Add(30*time.Second)) {
		t.Errorf("bake wait %+v", bake)
	}
	if w := wait(&store.Rollout{State: store.RolloutPaused, Reason: "failure budget exceeded"}, now); w.Kind != "paused" || w.Text != "failure budget exceeded" {
		t.Errorf("paused wait %+v", w)
	}
}

func TestWorkerServesDashboard(t *testing.T) {
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 10, Seed: 3})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		worker.Run(ctx, b.RDB, worker.Config{Concurrency: 2, API: b.API, HTTPAddr: addr, ControllerInterval: 50 * time.Millisecond,
			Root: New(Config{RDB: b.RDB})})
	}()
	defer func() { cancel(); <-done }()
	get := func(p string) (int, string) {
		for range 100 {
			resp, err := http.Get("http://" + addr + p)
			if err != nil {
				time.Sleep(20 * time.Millisecond)
				continue
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return resp.StatusCode, string(body)
		}
		t.Fatalf("%s: the worker's listener never answered", p)
		return 0, ""
	}
	if code, body := get("/metrics"); code != 200 || !strings.Contains(body, "go_goroutines") {
		t.Errorf("/metrics: %d", code)
	}
	if code, body := get("/"); code != 200 || !strings.Contains(body, "/static/app.js") {
		t.Errorf("/: %d %.80q", code, body)
	}
	if code, body := get("/api/queue"); code != 200 || !strings.Contains(body, `"queue":"rollout"`) {
		t.Errorf("/api/queue: %d %.200s", code, body)
	}
}

// Every button is one control operation, recorded as dashboard:NAME.
func TestActionsGoThroughControl(t *testing.T) {
	r := newRig(t, 30, testToken)
	ctx := context.Background()
	now := r.clock.Now()
	for i := 1; i <= 10; i++ { // the canary: done, one failed
		cvm := fmt.Sprintf("cvm_%08d", i)
		r.st.Move(ctx, r.id, cvm, store.Running, store.ModeBegin, now)
		to := store.Succeeded
		if i == 4 {
			to = store.Failed
		}
		if _, err := r.st.Move(ctx, r.id, cvm, to, store.ModeFinish, now); err != nil {
			t.Fatal(err)
		}
	}
	c := newClient(t, r.srv)
	if code := c.login(testToken, "bob"); code != 200 {
		t.Fatalf("login: %d", code)
	}
	act := func(a string) string {
		t.Helper()
		code, v := c.do("POST", "/api/rollouts/"+r.id+"/"+a, url.Values{"reason": {"by the book"}}, map[string]string{"X-CSRF-Token": c.csrf})
		if code != 200 {
			t.Fatalf("%s: %d %v", a, code, v)
		}
		ev, _ := r.st.Events(ctx, r.id, 1)
		if len(ev) != 1 || ev[0].By != "dashboard:bob" {
			t.Fatalf("%s: last event %+v", a, ev)
		}
		return v["message"].(string) + " | " + ev[0].What
	}
	if got := act("promote"); !strings.Contains(got, "stage 1 (canary) promoted") {
		t.Errorf("promote: %s", got)
	}
	if got := act("retry"); !strings.Contains(got, "1 failed CVMs queued again") {
		t.Errorf("retry: %s", got)
	}
	if ro, _ := r.st.Get(ctx, r.id); ro.Counts[store.Failed] != 0 || ro.Promoted != 0 {
		t.Errorf("after promote and retry: failed %d, promoted %d", ro.Counts[store.Failed], ro.Promoted)
	}
	act("pause")
	if got := act("resume"); !strings.Contains(got, "paused -> running") {
		t.Errorf("resume: %s", got)
	}
	if got := act("cancel"); !strings.Contains(got, "running -> cancelled") || !strings.Contains(got, "by the book") {
		t.Errorf("cancel: %s", got)
	}
	if st, _ := r.state(t); st != store.RolloutCancelled {
		t.Errorf("state %s after cancel", st)
	}
	if code, _ := c.do("POST", "/api/rollouts/"+r.id+"/explode", url.Values{}, map[string]string{"X-CSRF-Token": c.csrf}); code != 404 {
		t.Errorf("unknown action: %d, want 404", code)
	}
}

// The session cookie cannot be read by scripts or sent cross-site, and the
// page forbids what it does not need.
func TestCookieAndHeaders(t *testing.T) {
	r := newRig(t, 5, testToken)
	req, _ := http.NewRequest("POST", r.srv.URL+"/api/login", strings.NewReader(url.Values{"token": {testToken}, "name": {"eve"}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := r.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	ck := resp.Header.Get("Set-Cookie")
	if !strings.Contains(ck, "HttpOnly") || !strings.Contains(ck, "SameSite=Strict") || strings.Contains(ck, testToken) {
		t.Errorf("Set-Cookie %q", ck)
	}
	resp, err = r.srv.Client().Get(r.srv.URL + "/rollouts/" + r.id)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") || !strings.Contains(csp, "frame-ancestors 'none'") {
		t.Errorf("CSP %q", csp)
	}
	if strings.Contains(string(body), "http://") || strings.Contains(string(body), "https://") {
		t.Errorf("the page loads something from elsewhere:\n%s", body)
	}
	for _, asset := range []string{"/static/app.js", "/static/style.css"} {
		resp, err := r.srv.Client().Get(r.srv.URL + asset)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || len(b) < 1000 || strings.Contains(string(b), "https://") {
			t.Errorf("%s: %d, %d bytes", asset, resp.StatusCode, len(b))
		}
	}
}
