package tasks

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/phalafleet/rollout/internal/api"
)

func TestClassify(t *testing.T) {
	apiErr := func(status int, msg string, ra time.Duration) error {
		return &api.Error{Method: "PATCH", Path: "/cvms/x/network-config", StatusCode: status, Message: msg, RetryAfter: ra}
	}
	cases := []struct {
		name  string
		err   error
		kind  Kind
		state string
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
	if d := RetryDelay(3, errors.New("x"), fixed); d != 42*time.Second {
		t.Errorf("backoff delay %s", d)
	}
}
