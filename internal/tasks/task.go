// Package tasks is the queue side of a rollout: one asynq task per CVM, the
// handler that gates, reads, patches, verifies and records it, and the one
// place that maps an API outcome to what the queue does next.
package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/hibiken/asynq"
	"golang.org/x/sync/errgroup"
)

// TypeCVM is the asynq task type of one CVM of one rollout.
const TypeCVM = "rollout:cvm"

// Queue is the asynq queue rollout tasks go to.
const Queue = "rollout"

// WorkerProcesses is how many worker processes asynq's live servers are:
// a worker process runs several asynq servers (worker.fetchers), all with
// its host and pid.
func WorkerProcesses(servers []*asynq.ServerInfo) int {
	procs := map[string]bool{}
	for _, s := range servers {
		procs[s.Host+"/"+strconv.Itoa(s.PID)] = true
	}
	return len(procs)
}

// Payload is a task's payload: ids only. The target lives in the rollout
// record, so 50,000 tasks do not carry 50,000 copies of it.
type Payload struct {
	Rollout string `json:"r"`
	CVM     string `json:"c"`
	Gen     int    `json:"g,omitempty"` // bumped by retry --failed
}

// TaskID is deterministic, so queueing the same CVM of the same rollout
// twice (a re-run of apply, two controllers) is refused by asynq.
func TaskID(p Payload) string {
	id := p.Rollout + ":" + p.CVM
	if p.Gen > 0 {
		id += ":" + strconv.Itoa(p.Gen)
	}
	return id
}

// SafetyMaxRetry is added to a task's asynq MaxRetry. The handler counts
// attempts itself and records a CVM failed when they are used up; asynq's
// own count also grows on store errors and killed workers, and must not
// archive a task before the handler has recorded its CVM.
const SafetyMaxRetry = 20

// EnqueueOptions are the per-task options a rollout's spec decides.
type EnqueueOptions struct {
	MaxAttempts int           // total tries of one CVM (asynq MaxRetry+1)
	Deadline    time.Duration // per-CVM time limit for one try
	ProcessAt   time.Time     // zero: now
}

// Enqueuer puts tasks on the queue.
type Enqueuer struct {
	Client      *asynq.Client
	Concurrency int // parallel enqueues (default 16)
}

// Enqueue queues one task per CVM id. Tasks already queued are not queued
// again (asynq refuses their id); it returns how many were new.
func (e *Enqueuer) Enqueue(ctx context.Context, rollout string, gen int, ids []string, o EnqueueOptions) (int, error) {
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 1
	}
	if o.Deadline <= 0 {
		o.Deadline = 5 * time.Minute
	}
	conc := e.Concurrency
	if conc <= 0 {
		conc = 16
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(conc)
	added := make([]bool, len(ids))
	for i, id := range ids {
		g.Go(func() error {
			p := Payload{Rollout: rollout, CVM: id, Gen: gen}
			b, _ := json.Marshal(p)
			opts := []asynq.Option{asynq.Queue(Queue), asynq.TaskID(TaskID(p)), asynq.MaxRetry(o.MaxAttempts + SafetyMaxRetry), asynq.Timeout(o.Deadline)}
			if !o.ProcessAt.IsZero() {
				opts = append(opts, asynq.ProcessAt(o.ProcessAt))
			}
			_, err := e.Client.EnqueueContext(gctx, asynq.NewTask(TypeCVM, b), opts...)
			switch {
			case errors.Is(err, asynq.ErrTaskIDConflict):
				return nil
			case err != nil:
				return fmt.Errorf("queueing %s: %w", id, err)
			}
			added[i] = true
			return nil
		})
	}
	err := g.Wait()
	n := 0
	for _, a := range added {
		if a {
			n++
		}
	}
	return n, err
}
