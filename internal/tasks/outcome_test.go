package tasks

import (
	"context"
	"errors"
	"github.com/phalafleet/rollout/internal/plan"
	"net"
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
