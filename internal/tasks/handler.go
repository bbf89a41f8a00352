package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/phalafleet/rollout/internal/api"
	"github.com/phalafleet/rollout/internal/plan"
	"github.com/phalafleet/rollout/internal/store"
	"golang.org/x/sync/singleflight"
)

// API is the part of the Phala client a worker uses.
type API interface {
	GetCVM(ctx context.Context, id string) (*api.CVM, error)
	GetNetworkConfig(ctx context.Context, id string) (*api.NetworkConfig, error)
	PatchNetworkConfig(ctx context.Context, id string, upd api.NetworkConfigUpdate) (*api.NetworkConfig, error)
}

// Handler processes TypeCVM tasks.
type Handler struct {
	Store  *store.Store
	API    API
	Worker string // recorded on each CVM: host/pid
	Pacer  *Pacer // nil: no pacing
	// Observer, when set, hears of every finished CVM and every snooze
	// (the worker's Prometheus metrics).
	Observer interface {
		Outcome(rollout, state string)
		Snoozed(rollout string)
	}
	Log *slog.Logger
	// PausedRecheck is how often a task of a paused or scheduled rollout
	// looks again (default 5s).
	PausedRecheck time.Duration

	specs  sync.Map // rollout id -> *rolloutSpec; a rollout's spec never changes
	states states   // rollout id -> its state as last read, for a moment
}

// The plan's VMM gate is not read again before a PATCH. The API enforces
// VMM >= 0.5.7 itself (a PATCH to an older host answers 400 naming the VMM,
// recorded as skipped, Decide), so a second read per CVM would only pre-empt
// that answer, and at a rate-bound API it cost a third of the budget of
// every CVM reached minutes after its plan (BENCHMARKS.md, issue 12).
type rolloutSpec struct {
	file *plan.File
	own  bool // the CVMs carry targets of their own (a rollback)
}

// A try's Redis steps. A CVM costs two script calls on the Redis every
// worker shares: Start, after the GET and just before the PATCH (the begin
// move and the pre-PATCH mark in one), and the move that records the
// result. So a CVM shows running from its PATCH on, not during its GET.
//
// Before the GET, a try reads only the rollout's state, cached for
// StateTTL in each process (one read per rollout and process, whatever
// the concurrency): a paused rollout's re-delivered task goes back to
// sleep without spending a GET. That read is a hint. What decides is
// Start, which reads the state in the same step that marks the PATCH
// sent: no PATCH goes out once a pause, a cancel or a tripped budget is
// recorded. A task whose rollout is not running as last read makes the
// begin move instead (it turns a cancelled rollout's CVM cancelled, and
// puts back a CVM a dead try left running), then MarkPatching if the
// rollout runs after all.
const StateTTL = 250 * time.Millisecond

// ProcessTask implements asynq.Handler.
func (h *Handler) ProcessTask(ctx context.Context, task *asynq.Task) error {
	var p Payload
	if err := json.Unmarshal(task.Payload(), &p); err != nil || p.Rollout == "" || p.CVM == "" {
		return fmt.Errorf("bad payload %q: %w", task.Payload(), asynq.SkipRetry)
	}
	rs, err := h.spec(ctx, p.Rollout)
	if errors.Is(err, store.ErrNotFound) {
		return nil // the rollout was deleted: nothing to record
	} else if err != nil {
		return err
	}
	spec := rs.file
	// Outside the schedule (before start_at, between windows, in a cutoff):
	// sleep until it opens, without touching the record or the retries.
	// end_at is the controller's: it changes the rollout's state.
	if wait, why, _ := spec.Schedule.Gate(time.Now()); wait > 0 {
		return h.snooze(p, wait, why)
	}
	// Take an in-flight slot before the GET, so that a CVM running (from
	// its Start on) always holds one, and a CVM waiting for one is still
	// pending (a pause or cancel catches it).
	client := h.API
	if h.Pacer != nil {
		release, wait, err := h.Pacer.slot(ctx, p.Rollout, p.CVM, spec)
		if err != nil {
			return h.snooze(p, time.Second, "in-flight limiter: "+err.Error())
		}
		if wait > 0 {
			return h.snooze(p, wait, "max_in_flight reached")
		}
		defer release()
		client = h.Pacer.wrap(client, p.Rollout, spec)
	}
	t := &try{p: p, spec: spec, rp: spec.Retry.WithDefaults(), target: spec.Target}
	st, err := h.states.get(ctx, h.Store, p.Rollout)
	if err != nil {
		return err
	}
	if st != store.RolloutRunning {
		tr, err := h.Store.Move(ctx, p.Rollout, p.CVM, store.Running, store.ModeBegin, time.Now(),
			"worker", h.Worker, "started_at", now())
		switch {
		case err != nil:
			return err
		case tr.From == "" || tr.To.Terminal():
			return nil // no record, already finished, or cancelled just now
		case tr.To != store.Running || tr.RolloutState != store.RolloutRunning:
			return h.snooze(p, h.recheck(), "rollout "+string(tr.RolloutState))
		}
		h.states.forget(p.Rollout) // it runs after all
		t.begun, t.attempts = true, tr.Attempts
		if err := t.ownTarget(tr.Target); err != nil {
			return h.record(ctx, t, Next{Mode: store.ModeFinish, State: store.Failed, Reason: err.Error()})
		}
	} else if rs.own {
		target, attempts, err := h.Store.TryInfo(ctx, p.Rollout, p.CVM)
		if err != nil {
			return err
		}
		t.attempts = attempts
		if err := t.ownTarget(target); err != nil {
			return h.record(ctx, t, Next{Mode: store.ModeFinish, State: store.Failed, Reason: err.Error()})
		}
	}
	o := h.apply(ctx, client, t)
	if o.drop {
		return nil
	}
	if !t.begun && o.Err != nil && Classify(o.Err).Kind == Retry && !rs.own {
		// Whether attempts remain: the one try that reads them (rare: a
		// GET that failed before Start).
		_, attempts, err := h.Store.TryInfo(context.WithoutCancel(ctx), p.Rollout, p.CVM)
		if err != nil {
			return err
		}
		t.attempts = attempts
	}
	return h.record(ctx, t, Decide(o, t.attempts+1, t.rp))
}

// try is one try of one CVM.
type try struct {
	p      Payload
	spec   *plan.File
	rp     plan.Retry
	target plan.Target
	// begun: the CVM is running under this try (Start, or the begin move);
	// attempts: its finished attempts before this try, as last read.
	begun    bool
	attempts int
}

// ownTarget takes the CVM's own target (JSON) if it has one. A fresh
// value: decoding into t.target would write through the pointers it
// shares with the cached spec.
func (t *try) ownTarget(raw string) error {
	if raw == "" {
		return nil
	}
	var own plan.Target
	if err := json.Unmarshal([]byte(raw), &own); err != nil {
		return fmt.Errorf("stored target: %w", err)
	}
	t.target = own
	return nil
}

// apply is one try of one CVM: read, PATCH what differs, verify. It
// reports what it found; Decide says what follows.
func (h *Handler) apply(ctx context.Context, client API, t *try) Outcome {
	p, rp, target := t.p, t.rp, t.target
	ctx, cancel := context.WithTimeout(ctx, rp.Deadline)
	defer cancel()
	client = timed{client, rp.AttemptTimeout}
	cur, err := client.GetNetworkConfig(ctx, p.CVM)
	if err != nil {
		return Outcome{Err: err}
	}
	upd, changed := target.Diff(cur)
	if !changed {
		sent, err := h.Store.PatchSent(ctx, p.Rollout, p.CVM)
		if err != nil {
			return Outcome{Err: err}
		}
		if sent { // an earlier try's PATCH landed but was not recorded
			return Outcome{State: store.Succeeded, Reason: "applied by an earlier attempt",
				Fields: []string{"applied_kms", store.JSONList(cur.KMSURLs), "applied_gw", store.JSONList(cur.GatewayURLs), "patched", "1"}}
		}
		return Outcome{State: store.Unchanged, Reason: "already at target"}
	}
	// A pause, cancel or tripped budget since this try began stops it
	// here: no new PATCH goes out once the rollout is not running.
	var newlySent bool
	if t.begun {
		// outOfAttempts: earlier tries used every attempt (the last one
		// died mid-way, maybe after its PATCH); this try may still record
		// what it finds, but sends no PATCH.
		if t.attempts >= rp.MaxAttempts {
			return outOfAttempts(rp)
		}
		st, sent, err := h.Store.MarkPatching(ctx, p.Rollout, p.CVM, cur.KMSURLs, cur.GatewayURLs)
		if err != nil {
			return Outcome{Err: err}
		} else if st != store.RolloutRunning {
			return Outcome{Err: &Snooze{After: h.recheck(), Reason: "rollout " + string(st)}}
		}
		newlySent = sent
	} else {
		tr, err := h.Store.Start(ctx, p.Rollout, p.CVM, time.Now(), rp.MaxAttempts, cur.KMSURLs, cur.GatewayURLs,
			"worker", h.Worker, "started_at", now())
		switch {
		case err != nil:
			return Outcome{Err: err}
		case tr.From == "" || tr.To.Terminal():
			return Outcome{drop: true} // no record, already finished, or cancelled just now
		case tr.To != store.Running || tr.RolloutState != store.RolloutRunning:
			h.states.forget(p.Rollout)
			return Outcome{Err: &Snooze{After: h.recheck(), Reason: "rollout " + string(tr.RolloutState)}}
		}
		t.begun, t.attempts = true, tr.Attempts
		if tr.OutOfAttempts {
			return outOfAttempts(rp)
		}
		newlySent = tr.NewlySent
	}
	got, err := client.PatchNetworkConfig(ctx, p.CVM, upd)
	var sn *Snooze
	if errors.As(err, &sn) && newlySent {
		// Our own rate limit held the PATCH back: it was not sent.
		if uerr := h.Store.UnmarkPatching(context.WithoutCancel(ctx), p.Rollout, p.CVM); uerr != nil {
			return Outcome{Err: uerr}
		}
	}
	if err != nil {
		return Outcome{Err: err}
	}
	if !target.Reached(got) {
		return Outcome{Err: fmt.Errorf("PATCH answered 200 but the config does not show the target (kms %v, gateway %v)", got.KMSURLs, got.GatewayURLs)}
	}
	if target.Restart {
		// The VMM applies the URLs at boot: success means the CVM is back
		// up and still reports them.
		if err := waitRunning(ctx, client, p.CVM); err != nil {
			if ctx.Err() != nil {
				return Outcome{State: store.Failed, Reason: fmt.Sprintf("patched, but the CVM was not running again within %s: %v", rp.Deadline, err),
					Fields: []string{"patched", "1"}}
			}
			return Outcome{Err: err}
		}
		if got, err = client.GetNetworkConfig(ctx, p.CVM); err != nil {
			return Outcome{Err: err}
		}
		if !target.Reached(got) {
			return Outcome{Err: fmt.Errorf("after the restart the config does not show the target (kms %v, gateway %v)", got.KMSURLs, got.GatewayURLs)}
		}
	}
	return Outcome{State: store.Succeeded, Fields: []string{"applied_kms", store.JSONList(got.KMSURLs),
		"applied_gw", store.JSONList(got.GatewayURLs), "patched", "1", "http_status", "200"}}
}

func outOfAttempts(rp plan.Retry) Outcome {
	return Outcome{State: store.Failed, Reason: fmt.Sprintf("no attempt left: %d tries used, the last one died mid-way", rp.MaxAttempts)}
}

// record makes the move Decide chose and tells asynq what to do: nil
// (recorded, done), a Snooze, or an error to retry after n.Wait.
//
// Attempts are counted in the CVM's record, not by asynq: asynq archives a
// task whose retry count is used up even when the error is not a failure,
// so a throttled last try would be lost. asynq's MaxRetry is only a
// backstop (see SafetyMaxRetry).
func (h *Handler) record(ctx context.Context, t *try, n Next) error {
	p := t.p
	fields := n.Fields
	if n.HTTP != 0 {
		fields = append(fields, "http_status", strconv.Itoa(n.HTTP))
	}
	if n.Reason != "" || n.Mode == store.ModeFinish {
		fields = append(fields, "reason", n.Reason)
	}
	if n.Mode == store.ModeFinish {
		fields = append(fields, "finished_at", now())
	}
	mode := n.Mode
	if !t.begun {
		switch mode {
		case store.ModeFinish, store.ModeRequeue:
			mode = store.ModeTried
		case store.ModeSnooze:
			mode = store.ModePark
		}
	}
	tr, err := h.Store.Move(context.WithoutCancel(ctx), p.Rollout, p.CVM, n.State, mode, time.Now(), fields...)
	if err != nil {
		return err
	}
	if !t.begun {
		n.Attempt = tr.Attempts // for the logs: this try, counted
	}
	switch n.Mode {
	case store.ModeSnooze:
		if h.Observer != nil {
			h.Observer.Snoozed(p.Rollout)
		}
		return &Snooze{After: n.Wait, Reason: n.Reason}
	case store.ModeRequeue:
		if tr.Changed() { // not when a cancel took the CVM meanwhile
			h.log().Info("cvm retry", h.logFields(p, n, "retry_in", n.Wait.String())...)
		}
		return &retryAfter{err: errors.New(n.Reason), after: n.Wait}
	}
	if h.Observer != nil && tr.Changed() {
		h.Observer.Outcome(p.Rollout, string(n.State))
	}
	if n.State == store.Failed && tr.Changed() {
		h.log().Warn("cvm failed", h.logFields(p, n)...)
	} else {
		h.log().Debug("cvm finished", h.logFields(p, n, "state", string(n.State))...)
	}
	if tr.Tripped != "" {
		h.log().Warn("failure budget tripped", "rollout_id", p.Rollout, "cvm_id", p.CVM, "action", string(tr.Tripped))
	}
	return nil
}

// logFields are a CVM try's log fields, each its own: an on-call filters
// on rollout_id, cvm_id or http_status and quotes request_id to the API's
// support. The reason is the API's error line, which never holds the key.
func (h *Handler) logFields(p Payload, n Next, more ...any) []any {
	return append([]any{"rollout_id", p.Rollout, "cvm_id", p.CVM, "http_status", n.HTTP, "request_id", n.RequestID,
		"attempt", n.Attempt, "reason", n.Reason}, more...)
}

// waitRunning polls GET /cvms/{id} with backoff (0.5s doubling to 10s)
// until the CVM is running with no operation in progress, or ctx (the
// CVM's deadline) ends.
func waitRunning(ctx context.Context, client API, id string) error {
	wait := 500 * time.Millisecond
	for {
		c, err := client.GetCVM(ctx, id)
		if err != nil && !api.Transient(err) {
			return err
		}
		if err == nil && c.Status == "running" && !c.InProgress {
			return nil
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			if err == nil {
				err = fmt.Errorf("status %s", c.Status)
			}
			return err
		case <-t.C:
		}
		wait = min(2*wait, 10*time.Second)
	}
}

func (h *Handler) spec(ctx context.Context, id string) (*rolloutSpec, error) {
	if f, ok := h.specs.Load(id); ok {
		return f.(*rolloutSpec), nil
	}
	raw, _, own, err := h.Store.TaskSpec(ctx, id)
	if err != nil {
		return nil, err
	}
	var f plan.File
	if err := json.Unmarshal([]byte(raw), &f); err != nil {
		return nil, fmt.Errorf("rollout %s: stored spec: %w", id, err)
	}
	rs := &rolloutSpec{file: &f, own: own}
	h.specs.Store(id, rs)
	return rs, nil
}

// snooze puts a task back for later without starting the CVM.
func (h *Handler) snooze(p Payload, after time.Duration, why string) error {
	if h.Observer != nil {
		h.Observer.Snoozed(p.Rollout)
	}
	return &Snooze{After: after, Reason: why}
}

func (h *Handler) recheck() time.Duration {
	if h.PausedRecheck > 0 {
		return h.PausedRecheck
	}
	return 5 * time.Second
}

func (h *Handler) log() *slog.Logger {
	if h.Log != nil {
		return h.Log
	}
	return slog.Default()
}

func now() string { return time.Now().UTC().Format(time.RFC3339Nano) }

// RetryDelay is the worker's asynq RetryDelayFunc: the rollout's own
// backoff policy, or what a Snooze or Retry-After asks for.
func (h *Handler) RetryDelay(n int, err error, t *asynq.Task) time.Duration {
	backoff := plan.Backoff{Base: plan.DefaultBackoffBase, Max: plan.DefaultBackoffMax}
	var p Payload
	if json.Unmarshal(t.Payload(), &p) == nil {
		if f, ok := h.specs.Load(p.Rollout); ok {
			backoff = f.(*rolloutSpec).file.Retry.WithDefaults().Backoff
		}
	}
	return RetryDelay(n, err, backoff.Delay)
}

// timed bounds each API call of a try by the file's attempt_timeout (a hung
// request ends there and is retried), inside the try's overall deadline.
type timed struct {
	API
	d time.Duration
}

func (t timed) GetCVM(ctx context.Context, id string) (*api.CVM, error) {
	ctx, cancel := context.WithTimeout(ctx, t.d)
	defer cancel()
	return t.API.GetCVM(ctx, id)
}

func (t timed) GetNetworkConfig(ctx context.Context, id string) (*api.NetworkConfig, error) {
	ctx, cancel := context.WithTimeout(ctx, t.d)
	defer cancel()
	return t.API.GetNetworkConfig(ctx, id)
}

func (t timed) PatchNetworkConfig(ctx context.Context, id string, upd api.NetworkConfigUpdate) (*api.NetworkConfig, error) {
	ctx, cancel := context.WithTimeout(ctx, t.d)
	defer cancel()
	return t.API.PatchNetworkConfig(ctx, id, upd)
}

// states caches each rollout's state for StateTTL (see there): the hint a
// try reads before its GET. Concurrent tries of one rollout share one read.
type states struct {
	mu sync.Mutex
	m  map[string]stateSeen
	sf singleflight.Group
}

type stateSeen struct {
	st store.RolloutState
	at time.Time
}

func (c *states) get(ctx context.Context, st *store.Store, id string) (store.RolloutState, error) {
	c.mu.Lock()
	s, ok := c.m[id]
	c.mu.Unlock()
	if ok && time.Since(s.at) < StateTTL {
		return s.st, nil
	}
	v, err, _ := c.sf.Do(id, func() (any, error) {
		at := time.Now()
		rs, err := st.State(context.WithoutCancel(ctx), id)
		if err != nil {
			return rs, err
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.m == nil {
			c.m = map[string]stateSeen{}
		}
		c.m[id] = stateSeen{st: rs, at: at}
		return rs, nil
	})
	if err != nil {
		return "", err
	}
	return v.(store.RolloutState), nil
}

// forget drops what was seen of a rollout's state: a try found it
// changed.
func (c *states) forget(id string) {
	c.mu.Lock()
	delete(c.m, id)
	c.mu.Unlock()
}
