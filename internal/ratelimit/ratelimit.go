// Package ratelimit paces a rollout's API calls across every worker
// process: a request rate (GCRA, github.com/go-redis/redis_rate) that
// adapts to the API's 429/503 answers, and a cap on CVMs in flight (a
// token list in Redis that a crashed worker cannot leak). All state is in
// Redis under the rollout's hash tag; it runs on miniredis too.
package ratelimit

import (
	"context"
	"math"
	"strconv"
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

func gcraKey(id string) string      { return "rollout:{" + id + "}:gcra" }
func stateKey(id string) string     { return "rollout:{" + id + "}:pace" }
func tokensKey(id string) string    { return "rollout:{" + id + "}:slots" }
func holdersKey(id string) string   { return "rollout:{" + id + "}:slot-holders" }
func slotsInitKey(id string) string { return "rollout:{" + id + "}:slots-init" }

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

// releaseScript returns a slot if its holder still holds it (the reaper may
// have returned it already). KEYS: holders, tokens. ARGV: token.
var releaseScript = redis.NewScript(`
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[2], ARGV[1])
end
return 1
`)

// reapScript returns the slots of holders whose lease ran out (a killed
// worker). KEYS: holders, tokens. ARGV: now (ms).
var reapScript = redis.NewScript(`
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, t in ipairs(expired) do
  redis.call('ZREM', KEYS[1], t)
  redis.call('LPUSH', KEYS[2], t)
end
return #expired
`)

// Slot waits up to wait for one of the rollout's MaxInFlight slots. It
// returns a release func, or nil when none came free in time. A slot is
// leased for lease; a holder that dies has it returned by Reap.
func (l *Limiter) Slot(ctx context.Context, id string, lim Limits, wait, lease time.Duration) (func(), error) {
	if lim.MaxInFlight <= 0 {
		return func() {}, nil
	}
	if err := l.initSlots(ctx, id, lim.MaxInFlight); err != nil {
		return nil, err
	}
	res, err := l.rdb.BLPop(ctx, max(wait, 10*time.Millisecond), tokensKey(id)).Result()
	if err == redis.Nil {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	token := res[1]
	if err := l.rdb.ZAdd(ctx, holdersKey(id), redis.Z{Score: float64(time.Now().Add(lease).UnixMilli()), Member: token}).Err(); err != nil {
		l.rdb.LPush(context.WithoutCancel(ctx), tokensKey(id), token)
		return nil, err
	}
	return func() {
		releaseScript.Run(context.WithoutCancel(ctx), l.rdb, []string{holdersKey(id), tokensKey(id)}, token)
	}, nil
}

// initSlotsScript creates a rollout's n slot tokens once, atomically (a
// crash cannot leave the marker without the tokens). KEYS: marker, tokens.
var initSlotsScript = redis.NewScript(`
if redis.call('SETNX', KEYS[1], ARGV[1]) == 0 then return 0 end
for i = 0, tonumber(ARGV[1]) - 1 do redis.call('RPUSH', KEYS[2], 'slot-' .. i) end
return 1
`)

// initSlots creates the rollout's slot tokens once.
func (l *Limiter) initSlots(ctx context.Context, id string, n int) error {
	return initSlotsScript.Run(ctx, l.rdb, []string{slotsInitKey(id), tokensKey(id)}, n).Err()
}

// Reap returns slots whose holders' leases ran out. The controller calls it.
func (l *Limiter) Reap(ctx context.Context, id string) (int, error) {
	return reapScript.Run(ctx, l.rdb, []string{holdersKey(id), tokensKey(id)}, time.Now().UnixMilli()).Int()
}
