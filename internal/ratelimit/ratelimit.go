// Package ratelimit paces a rollout's API calls across every worker
// process: a request rate (GCRA, github.com/go-redis/redis_rate) that
// adapts to the API's 429/503 answers, and a cap on CVMs in flight (a
// semaphore of leases in Redis that a crashed worker cannot leak). All state is in
// Redis under the rollout's hash tag; it runs on miniredis too.
package ratelimit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"math"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"
)

// Limits is what a rollout asks for.
type Limits struct {
	PerSecond   float64 // request rate across all workers; 0: none
	Burst       int     // requests allowed at once above the rate (default: a tenth of a second's worth, at least 1)
	MaxInFlight int     // CVMs being processed at once across all workers; 0: none
	Adaptive    bool    // slow down on 429/503, recover gradually
	// Floor is the lowest rate adaptive mode goes to (default 1% of
	// PerSecond, at least 0.1/s).
	Floor float64
}

// Adaptive mode, after TCP's congestion control: a throttled answer (429
// or 503) multiplies the rate by DecreaseFactor, at most once per
// DecreaseEvery, and remembers the rate it came down from; each second of
// good answers then adds FastStep of the current rate while below
// Threshold of that remembered rate (TCP's slow start back to ssthresh),
// and SlowStep above it (additive increase), never above the file's rate.
const (
	DecreaseFactor = 0.85
	DecreaseEvery  = time.Second
	FastStep       = 0.10
	SlowStep       = 0.02
	Threshold      = 0.9
)

// MaxInlineWait is the longest a worker waits for a token (or a slot)
// while holding its task; past it the task is snoozed back to the queue.
// It is long enough that a CVM which has spent its first token waits for
// its second instead of starting over (at 3 req/s with 16 tasks waiting, a
// 2s limit sent 3.9 requests per CVM instead of 2).
const MaxInlineWait = 10 * time.Second

func gcraKey(id string) string    { return "rollout:{" + id + "}:gcra" }
func stateKey(id string) string   { return "rollout:{" + id + "}:pace" }
func holdersKey(id string) string { return "rollout:{" + id + "}:slot-holders" }
func wakeKey(id string) string    { return "rollout:{" + id + "}:slot-wake" }

// Limiter enforces Limits for rollouts.
type Limiter struct {
	rdb  redis.UniversalClient
	gcra *redis_rate.Limiter
}

// New returns a Limiter on rdb.
func New(rdb redis.UniversalClient) *Limiter {
	return &Limiter{rdb: rdb, gcra: redis_rate.NewLimiter(rdb)}
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
	v, err := l.rdb.HGet(ctx, stateKey(id), "rate").Result()
	if err == redis.Nil {
		return lim.PerSecond, nil
	}
	if err != nil {
		return 0, err
	}
	r, _ := strconv.ParseFloat(v, 64)
	if r <= 0 || r > lim.PerSecond {
		r = lim.PerSecond
	}
	return r, nil
}

// Take waits for one request token. It returns 0 when the request may go,
// or how long the caller should wait when that is more than MaxInlineWait.
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
		res, err := l.gcra.Allow(ctx, gcraKey(id), redis_rate.Limit{Rate: int(math.Max(1, math.Round(r*1000))), Burst: burst, Period: 1000 * time.Second})
		if err != nil {
			return 0, err
		}
		if res.Allowed > 0 {
			return 0, nil
		}
		if time.Now().Add(res.RetryAfter).After(deadline) {
			return max(res.RetryAfter, time.Millisecond), nil
		}
		t := time.NewTimer(max(res.RetryAfter, time.Millisecond))
		select {
		case <-ctx.Done():
			t.Stop()
			return 0, ctx.Err()
		case <-t.C:
		}
	}
}

// feedbackScript adjusts the adaptive rate. KEYS[1] the pace hash.
// ARGV: throttled(0|1), now (ms), ceiling, floor, factor, every (ms),
// fast step, slow step, threshold.
var feedbackScript = redis.NewScript(`
local rate = tonumber(redis.call('HGET', KEYS[1], 'rate') or ARGV[3])
local now = tonumber(ARGV[2])
local ceiling, floor = tonumber(ARGV[3]), tonumber(ARGV[4])
if ARGV[1] == '1' then
  local last = tonumber(redis.call('HGET', KEYS[1], 'decreased_at') or '0')
  if now - last >= tonumber(ARGV[6]) then
    redis.call('HSET', KEYS[1], 'ssthresh', tostring(rate * tonumber(ARGV[9])))
    rate = math.max(floor, rate * tonumber(ARGV[5]))
    redis.call('HSET', KEYS[1], 'rate', tostring(rate), 'decreased_at', now, 'increased_at', now)
  end
else
  local last = tonumber(redis.call('HGET', KEYS[1], 'increased_at') or '0')
  if rate < ceiling and now - last >= 1000 then
    local ssthresh = tonumber(redis.call('HGET', KEYS[1], 'ssthresh') or ARGV[3])
    local step = tonumber(ARGV[8])
    if rate < ssthresh then step = tonumber(ARGV[7]) end
    rate = math.min(ceiling, rate + math.max(0.1, rate * step))
    redis.call('HSET', KEYS[1], 'rate', tostring(rate), 'increased_at', now)
  end
end
return tostring(rate)
`)

// Feedback tells adaptive mode how the API answered.
func (l *Limiter) Feedback(ctx context.Context, id string, lim Limits, throttled bool) error {
	if !lim.Adaptive || lim.PerSecond <= 0 {
		return nil
	}
	floor := lim.Floor
	if floor <= 0 {
		floor = math.Max(0.1, lim.PerSecond/100)
	}
	t := "0"
	if throttled {
		t = "1"
	}
	return feedbackScript.Run(ctx, l.rdb, []string{stateKey(id)}, t, time.Now().UnixMilli(), lim.PerSecond, floor,
		DecreaseFactor, DecreaseEvery.Milliseconds(), FastStep, SlowStep, Threshold).Err()
}

// The in-flight cap is a semaphore of leases: a sorted set of holders
// scored by when each lease ends, in Redis's own clock (TIME), so workers'
// clocks never matter. Taking a slot drops the expired leases and adds one
// only while fewer than the cap are held, in one script: there is no token
// to lose between two commands, and a holder that dies frees its slot when
// its lease ends. A released slot wakes one waiter through a short list.

// acquireScript takes a slot. KEYS: holders, wake. ARGV: holder, lease
// (ms), cap. Returns 1 if taken.
var acquireScript = redis.NewScript(`
redis.replicate_commands() -- TIME before writes: needed on Redis 4 to 6, a no-op on 7
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local freed = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if freed > 0 then
  -- wake one waiter per freed slot (this caller may take one of them)
  for i = 1, freed do redis.call('LPUSH', KEYS[2], '1') end
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[3]) - 1)
  redis.call('PEXPIRE', KEYS[2], 60000)
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
-- the set lives as long as its longest lease, no longer: a rollout that
-- ends leaves nothing behind
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2])) end
return 1
`)

// releaseScript gives a slot back and wakes a waiter. KEYS: holders, wake.
// ARGV: holder, cap.
var releaseScript = redis.NewScript(`
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[2], '1')
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[2]) - 1)
  redis.call('PEXPIRE', KEYS[2], 60000)
end
return 1
`)

// reapScript drops expired leases and wakes as many waiters. KEYS:
// holders, wake. Returns how many leases it dropped.
var reapScript = redis.NewScript(`
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 1, n do redis.call('LPUSH', KEYS[2], '1') end
if n > 0 then redis.call('PEXPIRE', KEYS[2], 60000) end
return n
`)

// holderSeq makes holder ids unique within the process; holderPrefix
// across processes.
var (
	holderSeq    atomic.Uint64
	holderPrefix = func() string {
		var b [6]byte
		_, _ = rand.Read(b[:])
		return hex.EncodeToString(b[:])
	}()
)

// Slot waits up to wait for one of the rollout's MaxInFlight slots. It
// returns a release func, or nil when none came free in time. The slot is
// leased for lease: a holder that dies holds it no longer than that.
func (l *Limiter) Slot(ctx context.Context, id string, lim Limits, wait, lease time.Duration) (func(), error) {
	if lim.MaxInFlight <= 0 {
		return func() {}, nil
	}
	holder := holderPrefix + "-" + strconv.FormatUint(holderSeq.Add(1), 36)
	keys := []string{holdersKey(id), wakeKey(id)}
	deadline := time.Now().Add(wait)
	for {
		ok, err := acquireScript.Run(ctx, l.rdb, keys, holder, lease.Milliseconds(), lim.MaxInFlight).Int()
		if err != nil {
			// The script may have run and its answer been lost: give the
			// slot back rather than hold it for a whole lease.
			releaseScript.Run(context.WithoutCancel(ctx), l.rdb, keys, holder, lim.MaxInFlight)
			return nil, err
		}
		if ok == 1 {
			return func() {
				releaseScript.Run(context.WithoutCancel(ctx), l.rdb, keys, holder, lim.MaxInFlight)
			}, nil
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil, nil
		}
		// Sleep until a release wakes us (BLPOP takes whole seconds here:
		// a waiter that misses a wake-up tries again within one).
		if err := l.rdb.BLPop(ctx, min(left, time.Second), wakeKey(id)).Err(); err != nil && err != redis.Nil {
			return nil, err
		}
	}
}

// Reap drops leases that ran out (their holders died) and wakes as many
// waiters. Slot does it too; the controller calls it every tick so that a
// dead holder's slot wakes a waiter within a tick rather than at the
// waiter's next one-second poll.
func (l *Limiter) Reap(ctx context.Context, id string) (int, error) {
	return reapScript.Run(ctx, l.rdb, []string{holdersKey(id), wakeKey(id)}).Int()
}
