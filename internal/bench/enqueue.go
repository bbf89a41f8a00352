package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/hibiken/asynq"
	"github.com/phalafleet/rollout/internal/tasks"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"
)

// enqueue compares control.Apply of an n-CVM plan (the records, then one
// task per CVM) with bare asynq enqueues of n tasks from 16 goroutines.
func (b *runner) enqueue(ctx context.Context) ([]Row, error) {
	n := b.cfg.Sizes[StageEnqueue]
	f, err := rolloutFile("bench-enqueue")
	if err != nil {
		return nil, err
	}
	p := syntheticPlan(f, cvmIDs(n))
	var base, ours []time.Duration
	for round := range b.cfg.Repeat {
		if err := b.flush(ctx); err != nil {
			return nil, err
		}
		d, err := bareEnqueue(ctx, b.rdb, cvmIDs(n), b.cfg.EnqueueGoroutines, "bench-baseline")
		if err != nil {
			return nil, fmt.Errorf("baseline: %w", err)
		}
		base = append(base, d)
		b.progress("enqueue: round %d: baseline %d bare tasks in %s", round+1, n, d.Round(time.Millisecond))

		if err := b.flush(ctx); err != nil {
			return nil, err
		}
		start := time.Now()
		if _, err := b.apply(ctx, p); err != nil {
			return nil, err
		}
		d = time.Since(start)
		ours = append(ours, d)
		b.progress("enqueue: round %d: apply of %d CVMs in %s", round+1, n, d.Round(time.Millisecond))
	}
	bestBase, bestOurs := best(base), best(ours)
	ratio := bestBase.Seconds() / bestOurs.Seconds()
	return []Row{{
		Stage:    fmt.Sprintf("enqueue %s CVMs (apply: records+tasks)", thousands(int64(n))),
		Ours:     rate(n, bestOurs),
		Baseline: rate(n, bestBase),
		Ratio:    pct(ratio),
		Target:   ">= 70%",
		Result:   verdict(ratio >= 0.70),
		Note: fmt.Sprintf("best of %d rounds (ours %s; baseline %s); baseline: asynq Client.EnqueueContext of %d bare tasks (same type, queue and payload shape, a TaskID) from %d goroutines",
			b.cfg.Repeat, secsList(ours), secsList(base), n, b.cfg.EnqueueGoroutines),
	}}, nil
}

// bareEnqueue queues n tasks of the rollout's type with nothing else:
// no record, no retry options.
func bareEnqueue(ctx context.Context, rdb redis.UniversalClient, ids []string, goroutines int, rollout string) (time.Duration, error) {
	c := asynq.NewClientFromRedisClient(rdb)
	start := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(goroutines)
	for _, id := range ids {
		g.Go(func() error {
			p, _ := json.Marshal(tasks.Payload{Rollout: rollout, CVM: id})
			_, err := c.EnqueueContext(gctx, asynq.NewTask(tasks.TypeCVM, p), asynq.Queue(tasks.Queue), asynq.TaskID(rollout+":"+id))
			return err
		})
	}
	err := g.Wait()
	return time.Since(start), err
}
