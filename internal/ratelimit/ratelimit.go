// Package ratelimit paces a rollout's API calls across every worker
// process and its planner: a request rate (GCRA, reserving
// tokens: store.Reserve) that adapts to overload (adaptive.go), and a cap on CVMs in flight (a
// semaphore of leases in Redis that a crashed worker cannot leak). All state is in
// Redis under the rollout's hash tag; it runs on miniredis too. The keys
// and scripts are package store's (store/limits.go); this package is the
// policy.
package ratelimit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/phalafleet/rollout/internal/store"
	"github.com/redis/go-redis/v9"
)

// Limits is what a rollout asks for.
type Limits struct {
	PerSecond   float64 // request rate across all workers; 0: none
	Burst       int     // requests allowed at once above the rate (default: a tenth of a second's worth, at least 1)
	MaxInFlight int     // CVMs being processed at once across all workers; 0: none
	Adaptive    bool    // slow down on overload, recover gradually (adaptive.go)
	// Floor is the lowest rate adaptive mode goes to (default 1% of
	// PerSecond, at least 0.1/s).
	Floor float64
}

// MaxInlineWait is the longest a worker waits for a token (or a slot)
// while holding its task; past it the task is snoozed back to the queue.
// It is long enough that a CVM which has spent its first token waits for
// its second instead of starting over (at 3 req/s with 16 tasks waiting, a
// 2s limit sent 3.9 requests per CVM instead of 2).
const MaxInlineWait = 10 * time.Second

// Limiter enforces Limits for rollouts.
type Limiter struct {
	st *store.Limits
	// paces holds, per rollout, this process's answers not yet added to
	// the shared window, and the rate it last read.
	paces sync.Map // rollout id -> *pace
	// worker is this process's heartbeat id once Heartbeat runs: the
	// holders of its slots carry it, so that a Reap can tell they died.
	worker atomic.Pointer[string]
}

// New returns a Limiter on rdb.
func New(rdb redis.UniversalClient) *Limiter {
	return &Limiter{st: store.NewLimits(rdb)}
}

// Rate returns the rollout's current effective rate: PerSecond, lowered by
// adaptive backoff.
func (l *Limiter) Rate(ctx context.Context, id string, lim Limits) (float64, error) {
	if lim.PerSecond <= 0 {
		return 0, nil
	}
	if !lim.Adaptive {
		return lim.PerSecond, nil
	}
	p := l.pace(id)
	p.mu.Lock()
	r, fresh := p.rate, time.Since(p.rateAt) < RateFresh
	p.mu.Unlock()
	if !fresh {
		var err error
		if r, _, err = l.st.PaceRate(ctx, id); err != nil {
			return lim.PerSecond, err
		}
		p.setRate(r)
	}
	if r <= 0 || r > lim.PerSecond {
		r = lim.PerSecond
	}
	return r, nil
}

// Take waits for one request token. It returns 0 when the request may go,
// or how long the caller should wait when that is more than MaxInlineWait
// (no token is taken then).
//
// A token is reserved, then slept for. Requests waiting for their turn
// were reserved at the rate of then: when the adaptive rate is cut, the
// cut empties the bucket's queue (Observe), and each waiter that sees the
// lower rate (within RateFresh) reserves again at it. Without that, a
// queue of waiting tasks (150 at 40 req/s: almost 4 s) would go on at the
// old rate for as long, answered 429.
func (l *Limiter) Take(ctx context.Context, id string, lim Limits) (time.Duration, error) {
	deadline := time.Now().Add(MaxInlineWait)
	for {
		r, err := l.Rate(ctx, id, lim)
		if err != nil || r <= 0 {
			return 0, err
		}
		burst := lim.Burst
		if burst <= 0 {
			// A tenth of a second's worth: a request that comes a little
			// late still gets its slot, so the average holds the rate.
			burst = max(1, int(r/10))
		}
		taken, wait, err := l.st.Reserve(ctx, id, r, burst, max(0, time.Until(deadline)))
		if err != nil {
			return 0, err
		}
		if !taken {
			return max(wait, time.Millisecond), nil
		}
		if ok, err := l.sleepTurn(ctx, id, lim, r, wait); ok || err != nil {
			return 0, err
		}
	}
}

// sleepTurn sleeps wait for a token reserved at rate r, looking at the
// rate every RateFresh when adaptive. It returns false if the rate was cut
// meanwhile: the token is void.
func (l *Limiter) sleepTurn(ctx context.Context, id string, lim Limits, r float64, wait time.Duration) (bool, error) {
	end := time.Now().Add(wait)
	for {
		left := time.Until(end)
		if left <= 0 {
			return true, nil
		}
		step := left
		if lim.Adaptive {
			step = min(left, RateFresh)
		}
		t := time.NewTimer(step)
		select {
		case <-ctx.Done():
			t.Stop()
			return false, ctx.Err()
		case <-t.C:
		}
		if step == left {
			return true, nil
		}
		if now, err := l.Rate(ctx, id, lim); err != nil {
			return false, err
		} else if now < r*0.99 {
			return false, nil
		}
	}
}

// RateFresh is how long a process uses the adaptive rate it last read
// before reading it again; FlushEvery how often it adds its answers to the
// rollout's shared window. Both keep Redis round trips per request near
// one (the token) at any request rate, and are well inside a Window.
const (
	RateFresh  = 200 * time.Millisecond
	FlushEvery = 100 * time.Millisecond
)

// pace is one rollout's adaptive state in this process.
type pace struct {
	mu       sync.Mutex
	counts   store.PaceCounts
	flushed  time.Time
	flushing bool
	rate     float64
	rateAt   time.Time
	timer    *time.Timer // idleFlush, while armed
}

func (l *Limiter) pace(id string) *pace {
	if p, ok := l.paces.Load(id); ok {
		return p.(*pace)
	}
	p, _ := l.paces.LoadOrStore(id, &pace{})
	return p.(*pace)
}

func (p *pace) setRate(r float64) {
	p.mu.Lock()
	p.rate, p.rateAt = r, time.Now()
	p.mu.Unlock()
}

// Observe tells adaptive mode how the API answered one request. Answers
// are added to the rollout's shared window at most every FlushEvery; the
// call that closes a window applies the rule (Next) to it. Answers left
// when requests stop (the last ones before a bake, say) are added, and
// the window closed, by a timer a Window later.
func (l *Limiter) Observe(ctx context.Context, id string, lim Limits, c Class) error {
	if !lim.Adaptive || lim.PerSecond <= 0 || c == Ignored {
		return nil
	}
	p := l.pace(id)
	p.mu.Lock()
	c.add(&p.counts)
	if p.timer == nil {
		p.timer = time.AfterFunc(Window+FlushEvery, func() { l.idleFlush(id, lim) })
	}
	p.mu.Unlock()
	return l.flush(ctx, id, lim, false)
}

// idleFlush adds what is left and closes the window if it is due, and
// looks again a Window later while there were answers to add.
func (l *Limiter) idleFlush(id string, lim Limits) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	p := l.pace(id)
	p.mu.Lock()
	if since := time.Since(p.flushed); since < Window {
		// Not idle: the answers' own calls flush.
		p.timer.Reset(Window + FlushEvery - since)
		p.mu.Unlock()
		return
	}
	more := p.counts != (store.PaceCounts{})
	p.mu.Unlock()
	_ = l.flush(ctx, id, lim, true)
	p.mu.Lock()
	defer p.mu.Unlock()
	if more {
		p.timer.Reset(Window + FlushEvery)
	} else {
		p.timer = nil
	}
}

// flush adds this process's answers to the shared window, if FlushEvery
// has passed (or always, when forced).
func (l *Limiter) flush(ctx context.Context, id string, lim Limits, force bool) error {
	p := l.pace(id)
	now := time.Now()
	p.mu.Lock()
	if p.flushing || (!force && now.Sub(p.flushed) < FlushEvery) {
		p.mu.Unlock()
		return nil
	}
	counts := p.counts
	p.counts, p.flushing, p.flushed = store.PaceCounts{}, true, now
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.flushing = false
		p.mu.Unlock()
	}()
	r, w, err := l.st.PaceAdd(ctx, id, now, Window, counts)
	if err != nil {
		return err
	}
	if w != nil {
		next := Next(w.State, w.Counts, w.Started, now, lim.PerSecond, floorOf(lim))
		if next != w.State {
			// Only this call closed the window, so only it writes; the
			// next window closes a Window later. A cut voids the tokens
			// reserved at the old rate (see Take).
			if err := l.st.PaceSet(ctx, id, next, next.Rate < w.State.Rate && w.State.Rate > 0); err != nil {
				return err
			}
		}
		r = next.Rate
	}
	p.setRate(r)
	return nil
}

func floorOf(lim Limits) float64 {
	if lim.Floor > 0 {
		return lim.Floor
	}
	return math.Max(0.1, lim.PerSecond/100)
}

// PaceState is the rollout's adaptive rate with the reason and time of
// its last change (rate 0: none set yet).
func (l *Limiter) PaceState(ctx context.Context, id string) (rate float64, reason string, changedAt time.Time, err error) {
	return l.st.PaceState(ctx, id)
}

// The in-flight cap is a semaphore of leases in Redis (store/limits.go).
// A slot is freed when its holder releases it, when its lease ends, or
// when the holder's worker process is seen dead.
//
// Dead or alive. Decision: each worker process keeps a heartbeat key of
// its own (Heartbeat), renewed every HeartbeatEvery with a TTL of
// HeartbeatTTL, and the holder ids of its slots name it; the controller's
// Reap (every tick, about 1s) frees the slots of workers whose key is
// gone. So a kill -9 frees its slots within HeartbeatTTL plus a tick (or
// the controller lock's 10s, when the dead worker was the one leading),
// instead of the lease (deadline+1m, 6 minutes by default).
//
// Why not asynq's own server heartbeats (Inspector.Servers())? They are
// written every 5s (hard-coded) with a 10s TTL scored by the worker's own
// clock, one per asynq server (a worker runs several), and name a process
// by host and pid only: in containers every worker is pid 1, and a
// restarted container with the same hostname would pass for the dead one,
// keeping its slots held for the whole lease. Our key carries a random
// nonce per process, and its TTL runs on Redis's clock.
//
// A live worker whose heartbeat lapses (Redis unreachable for
// HeartbeatTTL, a stalled process) can lose its slots to a Reap while its
// CVMs are still in flight: the cap may then be exceeded for a while, but
// nothing is lost or done twice (the CVMs' tasks stay its own; asynq alone
// decides who runs a task). It logs a warning when it sees that.
const (
	HeartbeatEvery = 2 * time.Second
	HeartbeatTTL   = 8 * time.Second
)

// holderSeq makes holder ids unique within the process.
var holderSeq atomic.Uint64

// Heartbeat registers this process as a live worker named name (host/pid)
// and renews that until ctx ends or stop is called; from then on the
// holders of slots it takes name it. stop unregisters (a clean exit: call
// it once in-flight CVMs are done); ctx ending just stops renewing, as a
// crash would. warn, if not nil, is told about a lapsed heartbeat.
func (l *Limiter) Heartbeat(ctx context.Context, name string, warn func(msg string, args ...any)) (stop func(), err error) {
	var b [6]byte
	_, _ = rand.Read(b[:])
	id := strings.ReplaceAll(name, "|", "_") + "#" + hex.EncodeToString(b[:])
	if _, err := l.st.Beat(ctx, id, HeartbeatTTL); err != nil {
		return nil, fmt.Errorf("worker heartbeat: %w", err)
	}
	l.worker.Store(&id)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(HeartbeatEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			lapsed, err := l.st.Beat(ctx, id, HeartbeatTTL)
			if warn == nil || ctx.Err() != nil {
				continue
			}
			if err != nil {
				warn("worker heartbeat", "err", err)
			} else if lapsed {
				warn("worker heartbeat had lapsed: the controller may have freed this worker's in-flight slots, so max_in_flight may be exceeded until its CVMs finish")
			}
		}
	}()
	return func() {
		cancel()
		<-done
		c, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = l.st.Unregister(c, id)
	}, nil
}

// holder names a new taking of a slot for cvm.
func (l *Limiter) holder(cvm string) string {
	w := ""
	if p := l.worker.Load(); p != nil {
		w = *p
	}
	return store.Holder(w, cvm, holderSeq.Add(1))
}

// Slot waits up to wait for one of the rollout's MaxInFlight slots, for
// work on cvm. It returns a release func, or nil when none came free in
// time. The slot is leased for lease: a holder that dies holds it no
// longer than that, nor (once Heartbeat runs) than its heartbeat's TTL and
// a controller tick.
func (l *Limiter) Slot(ctx context.Context, id string, lim Limits, wait, lease time.Duration, cvm string) (func(), error) {
	if lim.MaxInFlight <= 0 {
		return func() {}, nil
	}
	holder := l.holder(cvm)
	release := func() { l.st.Release(context.WithoutCancel(ctx), id, holder, lim.MaxInFlight) }
	deadline := time.Now().Add(wait)
	for {
		ok, err := l.st.Acquire(ctx, id, holder, cvm, lease, lim.MaxInFlight)
		if err != nil {
			// The script may have run and its answer been lost: give the
			// slot back rather than hold it for a whole lease.
			release()
			return nil, err
		}
		if ok {
			return release, nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil, nil
		}
		// Sleep until a release wakes us (BLPOP takes whole seconds here:
		// a waiter that misses a wake-up tries again within one).
		if err := l.st.WaitWake(ctx, id, min(left, time.Second)); err != nil {
			return nil, err
		}
	}
}

// Reap frees the slots of leases that ran out and of workers whose
// heartbeat is gone, and wakes as many waiters. Slot frees expired leases
// too; the controller calls Reap every tick so that a dead holder's slot
// wakes a waiter within a tick. Liveness is read here, then the dead
// workers are passed to the rollout's script: the heartbeat keys are on
// other cluster slots than the rollout's.
func (l *Limiter) Reap(ctx context.Context, id string) (int, error) {
	dead, err := l.st.DeadHolders(ctx, id)
	if err != nil {
		return 0, err
	}
	return l.st.Reap(ctx, id, dead)
}
