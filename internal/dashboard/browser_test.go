package dashboard

import (
	"context"
	"flag"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/phalafleet/rollout/internal/plan"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/testutil"
)

// The dashboard in a real browser: Debian's chromium, headless, driven
// through the DevTools protocol (chromedp). `go test -run TestScreenshots
// ./internal/dashboard -args -screenshots docs` writes the README's
// pictures.

var screenshots = flag.String("screenshots", "", "write the dashboard's screenshots (PNG) into this directory (TestScreenshots)")

const chromium = "/usr/bin/chromium"

// browser starts a headless chromium for the test, or skips it.
func browser(t *testing.T) context.Context {
	t.Helper()
	if _, err := os.Stat(chromium); err != nil {
		t.Skip("no " + chromium + " (Debian package chromium; .ci/run installs it): browser test skipped")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromium), chromedp.NoSandbox,
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.WindowSize(1440, 1100),
		chromedp.UserDataDir(t.TempDir()))
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelC := chromedp.NewContext(actx)
	ctx, cancelT := context.WithTimeout(ctx, 60*time.Second)
	t.Cleanup(func() { cancelT(); cancelC(); cancelA() })
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		t.Fatalf("starting %s: %v", chromium, err)
	}
	return ctx
}

// until evaluates the JavaScript expression js in the page until it is
// true, or fails the test after d.
func until(t *testing.T, ctx context.Context, d time.Duration, what, js string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](js))
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			page, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.getElementById("app").innerText.slice(0, 1500)`))
			t.Fatalf("%s: not seen after %s (err %v); page:\n%s", what, d, err, page)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func text(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		t.Fatalf("%s: %v", sel, err)
	}
	return strings.TrimSpace(s)
}

// countsShown reads the page's per-state count cards, in one evaluation
// (the page redraws them every tick).
func countsShown(t *testing.T, ctx context.Context) map[store.CVMState]int {
	t.Helper()
	got, err := chromedp.Run(ctx, chromedp.Evaluate[map[store.CVMState]int](
		`Object.fromEntries([...document.querySelectorAll("[id^=count-]")].map((e) => [e.id.slice(6), Number(e.textContent)]))`))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(store.CVMStates) {
		t.Fatalf("count cards: %v", got)
	}
	return got
}

const browserFile = `name: browser
selector: {names: ["prod-*"]}
target:
  kms_urls: ["https://kms-new.example:8000"]
rate: {max_in_flight: 2}
stages: [{name: canary, count: 6, promote: manual}, "100%%"]
failure_budget: {max_failed: %d, min_executed: 4}
`

func TestBrowserDashboard(t *testing.T) {
	ctx := browser(t)
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 120, Seed: 11})
	b.Sim.SetFaults(sim.Faults{Latency: 30 * time.Millisecond})
	p := b.Apply(t, fmt.Sprintf(browserFile, 5))
	id := p.ID
	tick := 150 * time.Millisecond
	ro := httptest.NewServer(New(Config{RDB: b.RDB, Tick: tick}))
	defer ro.Close()
	rw := httptest.NewServer(New(Config{RDB: b.RDB, Tick: tick, Token: testToken}))
	defer rw.Close()
	bg := context.Background()

	// Read-only: the right counts, no button, no sign-in form.
	if err := chromedp.Do(ctx, chromedp.Navigate(ro.URL+"/rollouts/"+id), chromedp.WaitVisible(chromedp.CSS("#count-pending"))); err != nil {
		t.Fatal(err)
	}
	r, _ := b.Store.Get(bg, id)
	if got := countsShown(t, ctx); fmt.Sprint(got) != fmt.Sprint(r.Counts) {
		t.Fatalf("page counts %v, store %v", got, r.Counts)
	}
	buttons, _ := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("#actions button, #login").length`))
	if buttons != 0 || text(t, ctx, "#readonly") != "read-only" {
		t.Fatalf("read-only dashboard shows %d buttons or forms", buttons)
	}

	// Workers run the canary: the counts move with no reload.
	chromedp.Run(ctx, chromedp.Evaluate[int](`window.__sameDocument = 42`))
	b.Workers(t, 1, 4)
	until(t, ctx, 20*time.Second, "the canary's 6 CVMs done on the page",
		`Number(document.getElementById("count-succeeded").textContent) + Number(document.getElementById("count-failed").textContent) - `+
			strconv.Itoa(r.Counts[store.Succeeded]+r.Counts[store.Failed])+` >= 6`)
	same, _ := chromedp.Run(ctx, chromedp.Evaluate[int](`window.__sameDocument || 0`))
	if same != 42 {
		t.Fatal("the page was reloaded to show new counts")
	}
	until(t, ctx, 5*time.Second, "the manual gate", `document.getElementById("wait-text").textContent.includes("manual promote")`)
	r, _ = b.Store.Get(bg, id)
	if got := countsShown(t, ctx); fmt.Sprint(got) != fmt.Sprint(r.Counts) {
		t.Errorf("page counts %v at the gate, store %v", got, r.Counts)
	}

	// The rollouts list and the queue page, while the worker is up.
	if err := chromedp.Do(ctx, chromedp.Navigate(ro.URL+"/")); err != nil {
		t.Fatal(err)
	}
	until(t, ctx, 5*time.Second, "the rollout in the list", `!!document.querySelector('tr[data-id="`+id+`"]')`)
	if err := chromedp.Do(ctx, chromedp.Navigate(ro.URL+"/queue")); err != nil {
		t.Fatal(err)
	}
	until(t, ctx, 10*time.Second, "a live worker on the queue page", `!!document.querySelector("#worker-table tbody tr")`)
	if err := chromedp.Do(ctx, chromedp.Navigate(ro.URL+"/rollouts/"+id), chromedp.WaitVisible(chromedp.CSS("#cvm-q"))); err != nil {
		t.Fatal(err)
	}

	// The per-CVM search finds a CVM by name.
	want := p.Items[len(p.Items)-1]
	if err := chromedp.Do(ctx, chromedp.SendKeys(chromedp.CSS("#cvm-q"), want.Name)); err != nil {
		t.Fatal(err)
	}
	until(t, ctx, 5*time.Second, "search for "+want.Name,
		`(() => { const rows = document.querySelectorAll("#cvm-table tbody tr"); return rows.length === 1 && rows[0].dataset.cvm === "`+want.CVMID+`"; })()`)

	// A patched canary CVM's row has its before and applied URLs.
	var canary string
	for _, it := range p.Items {
		if it.Action == plan.Patch && it.Stage == 0 {
			if rec, _ := b.Store.Record(bg, id, it.CVMID); rec.State == store.Succeeded {
				canary = it.CVMID
				break
			}
		}
	}
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`(() => { const q = document.getElementById("cvm-q"); q.value = "`+canary+`"; return q.dispatchEvent(new Event("input")); })()`)); err != nil {
		t.Fatal(err)
	}
	until(t, ctx, 5*time.Second, "the before and applied URLs of "+canary,
		`(() => { const r = document.querySelector('#cvm-table tr[data-cvm="`+canary+`"]'); return !!r && r.textContent.includes("https://kms-new.example:8000") && r.textContent.includes("kms-old"); })()`)

	// Paging on the server: Next shows plan positions 51 to 100.
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`(() => { const q = document.getElementById("cvm-q"); q.value = ""; return q.dispatchEvent(new Event("input")); })()`)); err != nil {
		t.Fatal(err)
	}
	until(t, ctx, 5*time.Second, "the unfiltered first page", `document.querySelectorAll("#cvm-table tbody tr").length === 50`)
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS("#cvm-next"))); err != nil {
		t.Fatal(err)
	}
	until(t, ctx, 5*time.Second, "the second page", `document.querySelector("#cvm-table tbody tr").dataset.cvm === "`+p.Items[50].CVMID+`"`)

	// With the token: sign in, Pause; Redis says paused, the trail says who.
	if err := chromedp.Do(ctx, chromedp.Navigate(rw.URL+"/rollouts/"+id), chromedp.WaitVisible(chromedp.CSS("#login-token"))); err != nil {
		t.Fatal(err)
	}
	buttons, _ = chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("#actions button").length`))
	if buttons != 0 {
		t.Fatalf("%d buttons before signing in", buttons)
	}
	if err := chromedp.Do(ctx,
		chromedp.SetValue(chromedp.CSS("#login-name"), "alice"),
		chromedp.SendKeys(chromedp.CSS("#login-token"), testToken),
		chromedp.Click(chromedp.CSS("#login-submit")),
		chromedp.WaitVisible(chromedp.CSS("#btn-pause")),
		chromedp.SendKeys(chromedp.CSS("#action-reason"), "checking the canary"),
		chromedp.Click(chromedp.CSS("#btn-pause")),
	); err != nil {
		t.Fatal(err)
	}
	b.WaitState(t, id, 5*time.Second, store.RolloutPaused)
	ev, _ := b.Store.Events(bg, id, 1)
	if len(ev) != 1 || ev[0].By != "dashboard:alice" || !strings.Contains(ev[0].What, "checking the canary") {
		t.Errorf("last event %+v", ev)
	}
	until(t, ctx, 5*time.Second, "the pause in the audit trail and the state",
		`document.getElementById("event-table").textContent.includes("dashboard:alice") && !!document.getElementById("btn-resume")`)
}

// TestScreenshots writes docs/dashboard-rollout.png (a rollout in
// progress) and docs/dashboard-paused.png (paused by its failure budget)
// when run with -args -screenshots DIR.
func TestScreenshots(t *testing.T) {
	if *screenshots == "" {
		t.Skip("no -screenshots DIR: nothing to write")
	}
	ctx := browser(t)
	dir, _ := filepath.Abs(*screenshots)
	shoot := func(url, file string) { t.Helper(); shootPage(t, ctx, url, "#count-pending", filepath.Join(dir, file)) }
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 1500, Seed: 5})
	b.Sim.SetFaults(sim.Faults{Latency: 60 * time.Millisecond, RateLimit: 110}) // 429s: the adaptive rate comes down
	srv := httptest.NewServer(New(Config{RDB: b.RDB, Tick: 250 * time.Millisecond}))
	defer srv.Close()

	// In progress: the canary promoted, the second stage at work.
	p := b.Apply(t, strings.Replace(strings.Replace(fmt.Sprintf(browserFile, 50), "max_in_flight: 2", "max_in_flight: 16, per_second: 150", 1), "count: 6", "count: 20", 1))
	for _, n := range []int{3, 9} { // two CVMs the API refuses, to show failures
		b.Sim.FailPatch(p.Items[n].CVMID, 422)
	}
	stop := b.Workers(t, 2, 16)
	b.WaitState(t, p.ID, 20*time.Second, store.RolloutRunning)
	waitStageDone(t, b, p.ID, 0)
	if _, err := b.Control().Promote(context.Background(), p.ID, "alice@ops", time.Now()); err != nil {
		t.Fatal(err)
	}
	waitDone(t, b, p.ID, 300)
	shoot(srv.URL+"/rollouts/"+p.ID, "dashboard-rollout.png")
	if os.Getenv("DASHBOARD_MORE_SHOTS") != "" { // the other pages, to look at; not committed
		shootPage(t, ctx, srv.URL+"/queue", "#q-pending", filepath.Join(dir, "dashboard-queue.png"))
		shootPage(t, ctx, srv.URL+"/", "#list tr", filepath.Join(dir, "dashboard-list.png"))
	}
	stop()

	// Paused by the budget: a second rollout whose PATCHes fail often.
	b2 := testutil.Setup(t, sim.FleetOptions{CVMs: 600, Seed: 6})
	b2.Sim.SetFaults(sim.Faults{Latency: 20 * time.Millisecond})
	p2 := b2.Apply(t, strings.Replace(strings.Replace(fmt.Sprintf(browserFile, 3), "count: 6, promote: manual", "count: 60", 1), "max_in_flight: 2", "max_in_flight: 4, per_second: 40", 1))
	for i := 0; i < len(p2.Items); i += 9 {
		b2.Sim.FailPatch(p2.Items[i].CVMID, 422)
	}
	srv2 := httptest.NewServer(New(Config{RDB: b2.RDB, Tick: 250 * time.Millisecond}))
	defer srv2.Close()
	b2.Workers(t, 1, 8)
	b2.WaitState(t, p2.ID, 20*time.Second, store.RolloutPaused)
	time.Sleep(time.Second) // the in-flight CVMs finish
	shoot(srv2.URL+"/rollouts/"+p2.ID, "dashboard-paused.png")
}

// shootPage writes a PNG of the browser window once sel shows on url.
func shootPage(t *testing.T, ctx context.Context, url, sel, path string) {
	t.Helper()
	if err := chromedp.Do(ctx, chromedp.Navigate(url), chromedp.WaitVisible(chromedp.CSS(sel)), chromedp.Sleep(700*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot()) // the window: what a person sees first
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s (%d bytes)", path, len(png))
}

func waitStageDone(t *testing.T, b *testutil.Bundle, id string, stage int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		r, err := b.Store.Get(context.Background(), id)
		if err == nil && r.Stages[stage].Left() == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("stage %d of %s not done", stage, id)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitDone waits until at least n CVMs of id are done.
func waitDone(t *testing.T, b *testutil.Bundle, id string, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		r, err := b.Store.Get(context.Background(), id)
		if err == nil && store.DoneOf(r.Counts) >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: fewer than %d CVMs done", id, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
