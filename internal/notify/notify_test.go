package notify_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/phalafleet/rollout/internal/control"
	"github.com/phalafleet/rollout/internal/notify"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/testutil"
)

type got struct {
	id, event, sig string
	body           []byte
	code           int
}

// receiver records every POST; fail says which event ids to refuse (once each).
func receiver(t *testing.T, fail map[string]bool) (*httptest.Server, func() []got) {
	var mu sync.Mutex
	var all []got
	failed := map[string]bool{}
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		g := got{id: r.Header.Get("X-Rollout-Event-Id"), event: r.Header.Get("X-Rollout-Event"), sig: r.Header.Get("X-Rollout-Signature"), body: b, code: 200}
		mu.Lock()
		defer mu.Unlock()
		if fail[g.event] && !failed[g.event] {
			failed[g.event], g.code = true, 500
		}
		all = append(all, g)
		w.WriteHeader(g.code)
	}))
	t.Cleanup(hs.Close)
	return hs, func() []got { mu.Lock(); defer mu.Unlock(); return slices.Clone(all) }
}

// TestOutboxDelivery: the operator's moves each write one notification in
// their own step; a delivery is signed, a refused one is retried under the
// same event id, and the outcome shows per notification.
func TestOutboxDelivery(t *testing.T) {
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 6, Seed: 3, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9})
	hs, seen := receiver(t, map[string]bool{"paused": true})
	p := b.Apply(t, "name: n\nselector: {all: true}\ntarget: {kms_urls: [\"https://kms-new.example:8000\"]}\nstages: [2, \"100%\"]\n"+
		"notify:\n  - url: "+hs.URL+"/hook/s3cr3tpath\n    secret_env: TEST_HOOK_SECRET\n  - url: "+hs.URL+"/only-cancel\n    events: [cancelled]\n    format: slack\n")
	ctx, now := context.Background(), time.Now()
	c := b.Control()
	if _, err := c.Pause(ctx, p.ID, "alice", "", now); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Resume(ctx, p.ID, "alice", -1, now); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Cancel(ctx, p.ID, "alice", "enough", now); err != nil {
		t.Fatal(err)
	}
	var observed []string
	var mu sync.Mutex
	d := &notify.Deliverer{Store: b.Store, Worker: "w1", Options: notify.Options{Lease: time.Second, Backoff: 20 * time.Millisecond,
		Getenv: func(k string) string { return map[string]string{"TEST_HOOK_SECRET": "topsecret"}[k] }},
		Observe: func(r string) { mu.Lock(); observed = append(observed, r); mu.Unlock() }}
	for end := time.Now().Add(10 * time.Second); len(seen()) < 6 && time.Now().Before(end); time.Sleep(30 * time.Millisecond) {
		if err := d.Once(ctx, time.Now()); err != nil {
			t.Fatal(err)
		}
		d.Wait()
	}
	all := seen()
	var kinds []string
	byID := map[string][]got{}
	for _, g := range all {
		byID[g.id] = append(byID[g.id], g)
		if g.code == 200 {
			kinds = append(kinds, g.event)
		}
	}
	// Deliveries run side by side: no order among them (the ids and "at" give it).
	slices.Sort(kinds)
	want := []string{"applied", "cancelled", "cancelled", "paused", "resumed"}
	if len(all) != 6 || !slices.Equal(kinds, want) {
		t.Fatalf("received %d: delivered %v, want %v (the refused paused once more)", len(all), kinds, want)
	}
	for id, gs := range byID {
		if gs[0].event == "paused" && (len(gs) != 2 || string(gs[0].body) != string(gs[1].body)) {
			t.Errorf("%s: the retry must resend the same body under the same id: %d tries", id, len(gs))
		}
	}
	for _, g := range all {
		var pl notify.Payload
		if strings.Contains(string(g.body), `"text"`) { // the slack target: unsigned
			if g.sig != "" || g.event != "cancelled" || !strings.Contains(string(g.body), "cancelled") {
				t.Errorf("slack target got %s %s sig %q", g.event, g.body, g.sig)
			}
			continue
		}
		if err := notify.Verify("topsecret", g.sig, g.body, time.Now(), 5*time.Minute); err != nil {
			t.Errorf("%s: %v", g.event, err)
		}
		if err := notify.Verify("other", g.sig, g.body, time.Now(), 5*time.Minute); err == nil {
			t.Errorf("a wrong secret verified")
		}
		if err := json.Unmarshal(g.body, &pl); err != nil || pl.ID != g.id || pl.Rollout != p.ID || pl.Total != 6 || pl.Stages != 2 {
			t.Errorf("body %s: %+v %v", g.body, pl, err)
		}
		if g.event == "paused" && pl.Cause != "operator" {
			t.Errorf("paused cause %q", pl.Cause)
		}
		if strings.Contains(string(g.body), "topsecret") {
			t.Errorf("the secret is in a body")
		}
	}
	ns, err := b.Store.Notifications(ctx, p.ID)
	if err != nil || len(ns) != 5 {
		t.Fatalf("%d notifications recorded, %v", len(ns), err)
	}
	for _, n := range ns {
		if n.DeliveredAt == "" || n.LastError != "" || (n.Event == "paused") != (n.Attempts == 2) {
			t.Errorf("%s %s: delivered %q attempts %d last error %q", n.ID, n.Event, n.DeliveredAt, n.Attempts, n.LastError)
		}
	}
	mu.Lock()
	if slices.Index(observed, "failed") < 0 || len(observed) != 6 {
		t.Errorf("observed %v", observed)
	}
	mu.Unlock()
	raw, _ := b.RDB.HGetAll(ctx, store.OutboxKey(p.ID)).Result()
	for _, v := range raw {
		if strings.Contains(v, "topsecret") {
			t.Fatal("the secret reached Redis")
		}
	}
}

// TestLeaseRunsOut: an entry claimed by a worker that never answers is
// claimed again once its lease runs out, under the same id; the dead
// claim's late word does not undo the delivery.
func TestLeaseRunsOut(t *testing.T) {
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 2, Seed: 3, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9})
	p := b.Apply(t, "name: l\nselector: {all: true}\ntarget: {kms_urls: [\"https://kms-new.example:8000\"]}\nnotify: [{url: \"http://127.0.0.1:1/x\", events: [applied]}]\n")
	ctx, now := context.Background(), time.Now()
	first, err := b.Store.Claim(ctx, p.ID, "dead", 10, 300*time.Millisecond, now)
	if err != nil || len(first) != 1 || first[0].Event != "applied" {
		t.Fatalf("claim: %v %v", first, err)
	}
	if again, _ := b.Store.Claim(ctx, p.ID, "other", 10, time.Second, now.Add(100*time.Millisecond)); len(again) != 0 {
		t.Fatalf("claimed again under a live lease: %v", again)
	}
	again, err := b.Store.Claim(ctx, p.ID, "other", 10, time.Second, now.Add(400*time.Millisecond))
	if err != nil || len(again) != 1 || again[0].ID != first[0].ID || again[0].Attempts != 2 {
		t.Fatalf("after the lease: %+v %v", again, err)
	}
	if ok, _ := b.Store.SettleNotification(ctx, again[0], store.Delivered, "", time.Time{}, now); !ok {
		t.Fatal("delivery not recorded")
	}
	if ok, _ := b.Store.SettleNotification(ctx, first[0], store.Retry, "late", now, now); ok {
		t.Fatal("the dead claim's retry undid a delivery")
	}
	ns, _ := b.Store.Notifications(ctx, p.ID)
	if len(ns) != 1 || ns[0].DeliveredAt == "" {
		t.Fatalf("%+v", ns)
	}
}

// TestGiveUpAndMissingSecret: a target that keeps refusing is given up once
// the event is older than MaxAge (and leaves the due set); a worker without
// the named secret sends nothing unsigned and says why.
func TestGiveUpAndMissingSecret(t *testing.T) {
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 2, Seed: 3, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9})
	hs, seen := receiver(t, nil)
	refuse := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(503) }))
	t.Cleanup(refuse.Close)
	p := b.Apply(t, "name: g\nselector: {all: true}\ntarget: {kms_urls: [\"https://kms-new.example:8000\"]}\n"+
		"notify:\n  - url: "+refuse.URL+"/x\n    events: [applied]\n  - url: "+hs.URL+"/signed\n    events: [applied]\n    secret_env: NOT_SET_HERE\n")
	ctx := context.Background()
	d := &notify.Deliverer{Store: b.Store, Worker: "w1", Options: notify.Options{Lease: time.Second, Backoff: time.Millisecond, MaxAge: time.Millisecond,
		Getenv: func(string) string { return "" }}}
	time.Sleep(5 * time.Millisecond) // the event is older than MaxAge
	if err := d.Once(ctx, time.Now()); err != nil {
		t.Fatal(err)
	}
	d.Wait()
	if len(seen()) != 0 {
		t.Fatalf("sent unsigned: %d requests", len(seen()))
	}
	ns, _ := b.Store.Notifications(ctx, p.ID)
	if len(ns) != 2 {
		t.Fatalf("%+v", ns)
	}
	for _, n := range ns {
		if n.FailedAt == "" || n.DeliveredAt != "" {
			t.Errorf("%s: not given up: %+v", n.URL, n)
		}
	}
	if !strings.Contains(ns[0].LastError, "HTTP 503") || !strings.Contains(ns[1].LastError, "NOT_SET_HERE") || strings.Contains(ns[0].LastError, refuse.URL) {
		t.Errorf("last errors %q, %q", ns[0].LastError, ns[1].LastError)
	}
	if n, _ := b.RDB.ZCard(ctx, store.OutboxDueKey(p.ID)).Result(); n != 0 {
		t.Fatalf("%d given-up entries still due", n)
	}
}

// TestSettledFamilyStillDelivers: a rollout that left the active set with a
// notification still due (its receiver was down) is still found and
// delivered, and its family leaves the outbox set once nothing is due.
func TestSettledFamilyStillDelivers(t *testing.T) {
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 2, Seed: 3, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9})
	hs, seen := receiver(t, map[string]bool{"cancelled": true})
	p := b.Apply(t, "name: s\nselector: {all: true}\ntarget: {kms_urls: [\"https://kms-new.example:8000\"]}\nnotify: [{url: \""+hs.URL+"\", events: [cancelled]}]\n")
	ctx, now := context.Background(), time.Now()
	c := b.Control()
	if _, err := c.Cancel(ctx, p.ID, "alice", "", now); err != nil {
		t.Fatal(err)
	}
	d := &notify.Deliverer{Store: b.Store, Worker: "w1", Options: notify.Options{Lease: time.Second, Backoff: 50 * time.Millisecond}}
	d.Once(ctx, time.Now()) // refused once: due again later
	d.Wait()
	ctl := &control.Controller{Control: c}
	for range 2 { // marks the CVMs cancelled, then settles
		if err := ctl.Step(ctx, p.ID, now); err != nil {
			t.Fatal(err)
		}
	}
	if active, _ := b.RDB.HExists(ctx, store.ActiveKey, p.ID).Result(); active {
		t.Fatal("not settled")
	}
	for end := time.Now().Add(5 * time.Second); len(seen()) < 2 && time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		d.Once(ctx, time.Now())
		d.Wait()
	}
	if g := seen(); len(g) != 2 || g[1].code != 200 || g[0].id != g[1].id {
		t.Fatalf("deliveries %+v", g)
	}
	d.Once(ctx, time.Now())
	if n, _ := b.RDB.SCard(ctx, store.OutboxFamiliesKey).Result(); n != 0 {
		t.Fatalf("the family stays listed with nothing due")
	}
}

// TestWorkerDefaultTarget: a rollout recorded while a worker publishes
// --notify-url gets it as one more target, for every event.
func TestWorkerDefaultTarget(t *testing.T) {
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 2, Seed: 3, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9})
	ctx := context.Background()
	if err := b.Store.PublishNotifyDefault(ctx, store.NotifyTarget{URL: "http://127.0.0.1:1/default", SecretEnv: "DEF"}, time.Minute); err != nil {
		t.Fatal(err)
	}
	p := b.Apply(t, "name: d\nselector: {all: true}\ntarget: {kms_urls: [\"https://kms-new.example:8000\"]}\n")
	if _, err := b.Control().Pause(ctx, p.ID, "alice", "", time.Now()); err != nil {
		t.Fatal(err)
	}
	ns, _ := b.Store.Notifications(ctx, p.ID)
	if len(ns) != 2 || ns[0].Event != "applied" || ns[1].Event != "paused" || ns[1].URL != "http://127.0.0.1:1/default" || ns[1].SecretEnv != "DEF" {
		t.Fatalf("%+v", ns)
	}
}
