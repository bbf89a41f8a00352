package tasks

import (
	"context"
	"errors"
	"github.com/phalafleet/rollout/internal/plan"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/phalafleet/rollout/internal/api"
	"github.com/phalafleet/rollout/internal/store"
)

func TestClassify(t *testing.T) {
	apiErr := func(status int, msg string, ra time.Duration) error {
		return &api.Error{Method: "PATCH", Path: "/cvms/x/network-config", StatusCode: status, Message: msg, RetryAfter: ra}
	}
	cases := []struct {
		name  string
		err   error
		kind  Kind
		state store.CVMState
		after time.Duration
	}{
		{"old VMM 400", apiErr(400, "VMM too old: VMM 0.5.6 is below 0.5.7", 0), Done, "skipped", 0},
		{"other 400", apiErr(400, "invalid request", 0), Done, "failed", 0},
		{"401", apiErr(401, "Not authenticated", 0), Done, "failed", 0},
		{"403 gate", apiErr(403, "not enabled", 0), Done, "failed", 0},
		{"404", apiErr(404, "CVM not found", 0), Done, "failed", 0},
		{"422", apiErr(422, "body.kms_urls: bad", 0), Done, "failed", 0},
		{"409", apiErr(409, "Another operation in progress", 0), Retry, "", 0},
		{"429 with Retry-After", apiErr(429, "slow down", 7*time.Second), Throttle, "", 7 * time.Second},
		{"429 without", apiErr(429, "slow down", 0), Throttle, "", time.Second},
		{"500", apiErr(500, "Failed to query VMM", 0), Retry, "", 0},
		{"503 Retry-After", apiErr(503, "busy", 3*time.Second), Retry, "", 3 * time.Second},
		{"network", &net.OpError{Op: "dial", Err: errors.New("refused")}, Retry, "", 0},
		{"timeout", context.DeadlineExceeded, Retry, "", 0},
		{"shutdown", context.Canceled, Throttle, "", time.Second},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := Classify(c.err)
			if d.Kind != c.kind || d.State != c.state || d.After != c.after {
				t.Fatalf("Classify = %+v, want kind %d state %q after %s", d, c.kind, c.state, c.after)
			}
		})
	}
}

func TestSnoozeIsNotAFailure(t *testing.T) {
	if IsFailure(&Snooze{After: time.Second}) {
		t.Error("a snooze counted as a failure")
	}
	if !IsFailure(errors.New("boom")) {
		t.Error("an error did not count as a failure")
	}
	fixed := func(int) time.Duration { return 42 * time.Second }
	if d := RetryDelay(1, &Snooze{After: 5 * time.Second}, fixed); d != 5*time.Second {
		t.Errorf("snooze delay %s", d)
	}
	if d := RetryDelay(1, &retryAfter{err: errors.New("x"), after: 9 * time.Second}, fixed); d != 9*time.Second {
		t.Errorf("retry-after delay %s", d)
	}
	var asked []int
	counting := func(n int) time.Duration { asked = append(asked, n); return 42 * time.Second }
	if d := RetryDelay(0, errors.New("x"), counting); d != 42*time.Second || len(asked) != 1 || asked[0] != 1 {
		t.Errorf("backoff delay %s for asynq's first retry asked %v, want the backoff of retry 1", d, asked)
	}
}

// TestRetryWaitFollowsAttempts: the wait after failed attempt k is the
// backoff of retry k (base, 2*base, ... up to max, each with jitter in
// [d/2, d]), whatever asynq's own count says; a Retry-After wins.
func TestRetryWaitFollowsAttempts(t *testing.T) {
	b := plan.Backoff{Base: 4 * time.Second, Max: 20 * time.Second}
	for attempt, top := range map[int]time.Duration{1: 4 * time.Second, 2: 8 * time.Second, 3: 16 * time.Second, 4: 20 * time.Second, 7: 20 * time.Second} {
		for range 50 {
			if d := retryWait(Decision{Kind: Retry}, attempt, b); d < top/2 || d > top {
				t.Fatalf("after attempt %d: waited %s, want %s..%s", attempt, d, top/2, top)
			}
		}
	}
	if d := retryWait(Decision{Kind: Retry, After: 7 * time.Second}, 1, b); d != 7*time.Second {
		t.Errorf("Retry-After 7s: waited %s", d)
	}
}

// TestDecide mirrors README's "What each API answer leads to", row by row:
// the outcome of a try, and what happens to the CVM after it.
func TestDecide(t *testing.T) {
	rp := plan.Retry{MaxAttempts: 3, Backoff: plan.Backoff{Base: 2 * time.Second, Max: time.Minute}}
	apiErr := func(status int, msg string, ra time.Duration) error {
		return &api.Error{Method: "PATCH", Path: "/cvms/x/network-config", StatusCode: status, Message: msg, RetryAfter: ra}
	}
	found := func(st store.CVMState) Outcome { return Outcome{State: st} }
	cases := []struct {
		row     string
		o       Outcome
		attempt int
		mode    store.Mode
		state   store.CVMState
		wait    time.Duration // 0: not checked; for a backoff (jittered), the most it may be
	}{
		{"PATCH 200 and the read-back shows the target", found(store.Succeeded), 1, store.ModeFinish, store.Succeeded, 0},
		{"current config already at the target", found(store.Unchanged), 1, store.ModeFinish, store.Unchanged, 0},
		{"400 whose message names the VMM", Outcome{Err: apiErr(400, "VMM 0.5.6 is below 0.5.7", 0)}, 1, store.ModeFinish, store.Skipped, 0},
		{"400 (other)", Outcome{Err: apiErr(400, "invalid", 0)}, 1, store.ModeFinish, store.Failed, 0},
		{"403", Outcome{Err: apiErr(403, "not enabled", 0)}, 1, store.ModeFinish, store.Failed, 0},
		{"404", Outcome{Err: apiErr(404, "not found", 0)}, 1, store.ModeFinish, store.Failed, 0},
		{"422", Outcome{Err: apiErr(422, "bad body", 0)}, 1, store.ModeFinish, store.Failed, 0},
		{"401", Outcome{Err: apiErr(401, "bad key", 0)}, 1, store.ModeFinish, store.Failed, 0},
		{"429", Outcome{Err: apiErr(429, "slow down", 4*time.Second)}, 3, store.ModeSnooze, store.Pending, 4 * time.Second},
		{"429 without Retry-After", Outcome{Err: apiErr(429, "slow down", 0)}, 1, store.ModeSnooze, store.Pending, time.Second},
		{"409", Outcome{Err: apiErr(409, "busy", 0)}, 1, store.ModeRequeue, store.Pending, 2 * time.Second},
		{"5xx with Retry-After", Outcome{Err: apiErr(503, "busy", 9*time.Second)}, 2, store.ModeRequeue, store.Pending, 9 * time.Second},
		{"network error", Outcome{Err: &net.OpError{Op: "dial", Err: errors.New("refused")}}, 2, store.ModeRequeue, store.Pending, 4 * time.Second},
		{"timeout", Outcome{Err: context.DeadlineExceeded}, 1, store.ModeRequeue, store.Pending, 2 * time.Second},
		{"the last allowed attempt fails in a retryable way", Outcome{Err: apiErr(500, "boom", 0)}, 3, store.ModeFinish, store.Failed, 0},
		{"the rollout's own rate limit", Outcome{Err: &Snooze{After: 3 * time.Second, Reason: "rollout rate limit"}}, 3, store.ModeSnooze, store.Pending, 3 * time.Second},
		{"the worker is shutting down", Outcome{Err: context.Canceled}, 1, store.ModeSnooze, store.Pending, time.Second},
		{"the rollout is paused", Outcome{Err: &Snooze{After: 5 * time.Second, Reason: "rollout paused"}}, 1, store.ModeSnooze, store.Pending, 5 * time.Second},
	}
	for _, c := range cases {
		t.Run(c.row, func(t *testing.T) {
			n := Decide(c.o, c.attempt, rp)
			backoff := c.mode == store.ModeRequeue && !strings.Contains(c.row, "Retry-After")
			waitOK := c.wait == 0 || n.Wait == c.wait || backoff && n.Wait > 0 && n.Wait <= c.wait
			if n.Mode != c.mode || n.State != c.state || !waitOK {
				t.Fatalf("Decide = %+v, want %s to %s (wait %s)", n, c.mode, c.state, c.wait)
			}
		})
	}
	if n := Decide(Outcome{Err: apiErr(500, "boom", 0)}, 3, rp); !strings.HasSuffix(n.Reason, "boom (after 3 attempts)") {
		t.Fatalf("reason %q", n.Reason)
	}
	// What the logs carry: the try and the API's request id.
	n := Decide(Outcome{Err: &api.Error{Method: "PATCH", Path: "/cvms/x/network-config", StatusCode: 502, RequestID: "req_7"}}, 2, rp)
	if n.Attempt != 2 || n.RequestID != "req_7" || n.HTTP != 502 {
		t.Errorf("Decide = %+v, want attempt 2, request_id req_7, HTTP 502", n)
	}
}
