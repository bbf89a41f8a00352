package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/phalafleet/rollout/internal/notify"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/testutil"
)

// hook is the test's notification receiver: it checks each signature,
// records each delivery, and holds the very first one until the test has
// killed the worker sending it.
type hook struct {
	t       *testing.T
	mu      sync.Mutex
	got     map[string][]notify.Payload // event id -> deliveries
	from    map[string][]string         // event id -> the senders' User-Agent
	first   chan string                 // the first sender's User-Agent
	held    string                      // the event id held
	release chan struct{}
	once    sync.Once
}

func (h *hook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	if err := notify.Verify("s3cret", r.Header.Get("X-Rollout-Signature"), body, time.Now(), time.Minute); err != nil {
		h.t.Errorf("event %s: %v", r.Header.Get("X-Rollout-Event-Id"), err)
		w.WriteHeader(400)
		return
	}
	var p notify.Payload
	if err := json.Unmarshal(body, &p); err != nil || p.ID != r.Header.Get("X-Rollout-Event-Id") {
		h.t.Errorf("body %s: %v", body, err)
	}
	h.mu.Lock()
	h.got[p.ID] = append(h.got[p.ID], p)
	h.from[p.ID] = append(h.from[p.ID], r.Header.Get("User-Agent"))
	h.mu.Unlock()
	blocked := false
	h.once.Do(func() { blocked = true; h.mu.Lock(); h.held = p.ID; h.mu.Unlock() })
	if blocked {
		h.first <- r.Header.Get("User-Agent")
		<-h.release // the sender is dead by now: this answer goes nowhere
	}
	w.WriteHeader(204)
}

func (h *hook) ids() map[string][]notify.Payload {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[string][]notify.Payload{}
	for k, v := range h.got {
		out[k] = slices.Clone(v)
	}
	return out
}

// TestNotificationsExactlyOnce is issue 10's done-when: three worker
// processes deliver every event of a staged rollout with an operator
// pause, a failure-budget trip and resumes, each once and signed, although
// the worker delivering the first event is SIGKILLed mid-delivery (its
// event comes again, same id, from another worker once the 2s lease runs
// out).
func TestNotificationsExactlyOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("runs three worker processes for about 15s")
	}
	alongside(t, false)
	bin := buildWorker(t)
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 16, Seed: 5, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9})
	h := &hook{t: t, got: map[string][]notify.Payload{}, from: map[string][]string{}, first: make(chan string, 1), release: make(chan struct{})}
	hs := httptest.NewServer(h)
	defer hs.Close()
	defer func() {
		h.once.Do(func() {})
		select {
		case <-h.release:
		default:
			close(h.release)
		}
	}()

	workers := map[int]*exec.Cmd{}
	for range 3 {
		cmd := exec.Command(bin, "--concurrency", "4", "--shutdown-timeout", "5s", "--notify-lease", "2s", "--notify-timeout", "1s")
		cmd.Env = append(os.Environ(), "PHALA_CLOUD_API_KEY="+b.Key, "PHALA_CLOUD_API_PREFIX="+b.SimURL, "REDIS_URL="+b.RedisURL, "TEST_HOOK_SECRET=s3cret")
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		workers[cmd.Process.Pid] = cmd
	}
	b.Sim.SetFaults(sim.Faults{GateOff: true, Latency: 20 * time.Millisecond}) // every PATCH 403: the budget trips
	start := time.Now().Add(2 * time.Second).UTC().Format(time.RFC3339)
	p := b.Apply(t, "name: hooks\nselector: {all: true}\ntarget: {kms_urls: [\"https://kms-new.example:8000\"]}\n"+
		"stages: [6, \"100%\"]\nfailure_budget: {max_failed: 0, min_executed: 1}\nschedule: {start_at: \""+start+"\"}\n"+
		"retry: {max_attempts: 1}\nnotify:\n  - url: "+hs.URL+"/hook\n    secret_env: TEST_HOOK_SECRET\n")
	ctx, c := context.Background(), b.Control()
	if _, err := c.Pause(ctx, p.ID, "alice", "", time.Now()); err != nil { // scheduled -> paused: no task queued yet
		t.Fatal(err)
	}
	// The first delivery is held: kill its sender.
	var ua string
	select {
	case ua = <-h.first:
	case <-time.After(20 * time.Second):
		t.Fatal("no notification arrived")
	}
	pid, _ := strconv.Atoi(ua[strings.LastIndex(ua, "/")+1 : len(ua)-1])
	killed := workers[pid]
	if killed == nil {
		t.Fatalf("User-Agent %q names none of the workers", ua)
	}
	killed.Process.Signal(syscall.SIGKILL)
	killed.Wait()
	close(h.release)

	if _, err := c.Resume(ctx, p.ID, "alice", -1, time.Now()); err != nil {
		t.Fatal(err)
	}
	waitCounts(t, b, p.ID, 20*time.Second, func(r *store.Rollout) bool {
		return r.State == store.RolloutPaused && strings.Contains(r.Reason, "failure budget")
	})
	b.Sim.SetFaults(sim.Faults{Latency: 20 * time.Millisecond})
	if _, err := c.Resume(ctx, p.ID, "alice", 100, time.Now()); err != nil {
		t.Fatal(err)
	}
	waitCounts(t, b, p.ID, 20*time.Second, func(r *store.Rollout) bool { return r.State == store.RolloutCompleted })

	want := []string{"applied", "paused", "resumed", "budget_tripped", "paused", "resumed", "stage_completed", "stage_started", "stage_completed", "completed"}
	var recorded []store.Notification
	for end := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		recorded, _ = b.Store.Notifications(ctx, p.ID)
		delivered := 0
		for _, n := range recorded {
			if n.DeliveredAt != "" {
				delivered++
			}
		}
		if delivered == len(want) && len(h.ids()) == len(want) || time.Now().After(end) {
			break
		}
	}
	var kinds []string
	for _, n := range recorded {
		kinds = append(kinds, n.Event)
		if n.DeliveredAt == "" {
			t.Errorf("%s (%s) not delivered: attempts %d, last error %q", n.ID, n.Event, n.Attempts, n.LastError)
		}
	}
	if !slices.Equal(kinds, want) {
		t.Fatalf("events recorded %v, want %v", kinds, want)
	}
	got := h.ids()
	dups := 0
	for _, n := range recorded {
		ds := got[n.ID]
		switch {
		case len(ds) == 0:
			t.Errorf("event %s (%s) never arrived", n.ID, n.Event)
		case len(ds) > 2 || len(ds) == 2 && h.from[n.ID][0] != ua:
			t.Errorf("event %s (%s) arrived %d times (from %v); only a delivery the killed worker had under way may come twice", n.ID, n.Event, len(ds), h.from[n.ID])
		case len(ds) > 1:
			dups++
		}
		for _, d := range ds {
			if d.Event != n.Event || d.Rollout != p.ID {
				t.Errorf("event %s: body %+v", n.ID, d)
			}
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d distinct event ids arrived, want %d", len(got), len(want))
	}
	if len(got[h.held]) != 2 || dups < 1 {
		t.Errorf("the held delivery %s arrived %d times, want it again from another worker", h.held, len(got[h.held]))
	}
	for _, n := range recorded {
		if n.Event == "paused" && n.Cause == "failure_budget" && !strings.Contains(n.Reason, "failure budget exceeded") {
			t.Errorf("budget pause reason %q", n.Reason)
		}
	}
}
