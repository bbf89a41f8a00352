package tasks_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/phalafleet/rollout/internal/api"
	"github.com/phalafleet/rollout/internal/tasks"
	"github.com/phalafleet/rollout/internal/testutil"
)

// BenchmarkEnqueue queues b.N tasks in one Enqueuer.Enqueue call (16 at
// once): ns/op is per task. On miniredis, or the real Redis at $REDIS_URL
// (flushed):
//
//	REDIS_URL=redis://127.0.0.1:16400/0 go test -run '^$' -bench Enqueue ./internal/tasks
func BenchmarkEnqueue(b *testing.B) {
	rdb, _ := testutil.Redis(b)
	e := &tasks.Enqueuer{Client: asynq.NewClientFromRedisClient(rdb)}
	ids := make([]string, b.N)
	for i := range ids {
		ids[i] = fmt.Sprintf("cvm_%08d", i)
	}
	ctx := context.Background()
	b.ResetTimer()
	n, err := e.Enqueue(ctx, fmt.Sprint("bench-", time.Now().UnixNano()), 0, ids, tasks.EnqueueOptions{MaxAttempts: 8, Deadline: time.Minute})
	if err != nil || n != b.N {
		b.Fatalf("queued %d of %d: %v", n, b.N, err)
	}
}

// BenchmarkClassify maps a mix of API outcomes to queue decisions.
func BenchmarkClassify(b *testing.B) {
	apiErr := func(status int, msg string, ra time.Duration) error {
		return fmt.Errorf("wrapped: %w", &api.Error{Method: "PATCH", Path: "/cvms/x/network-config", StatusCode: status, Message: msg, RetryAfter: ra})
	}
	errs := []error{
		apiErr(429, "Rate limit exceeded", time.Second),
		apiErr(503, "Service Unavailable", 0),
		apiErr(400, "VMM too old: 0.5.6 is below 0.5.7", 0),
		apiErr(404, "CVM not found", 0),
		&tasks.Snooze{After: time.Second, Reason: "rollout rate limit"},
		&net.OpError{Op: "dial", Err: errors.New("connection refused")},
		context.Canceled,
	}
	for i := 0; b.Loop(); i++ {
		tasks.Classify(errs[i%len(errs)])
	}
}
