package store

// The Redis side of package ratelimit: its keys and Lua scripts (package
// ratelimit keeps the policy: rates, adaptive steps, how long to wait).
//
// Keys. Per rollout, after its key base (base in keys.go: its family's
// hash tag), so each script below touches one slot of a Redis Cluster:
//
//	BASE:gcra          the request-rate bucket (redis_rate, which adds its "rate:" prefix)
//	BASE:pace          the adaptive rate's state (hash: rate, ssthresh, decreased_at, increased_at)
//	BASE:slot-holders  the in-flight semaphore: holders scored by lease end (ms, Redis's clock)
//	BASE:slot-wake     a short list a release pushes to, to wake one waiter
//	BASE:slot-orphans  CVMs whose slot was taken back from a dead worker: cvm -> worker
//
// Global, one per worker process:
//
//	rollout:worker:<host/pid#nonce>  the process's heartbeat, renewed every 2s with an 8s TTL
//
// Liveness is decided in Go (EXISTS on the heartbeat keys, each its own
// slot), never in a script with per-rollout keys: the dead workers' ids are
// then passed to the rollout's reap script.

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// GCRAKey is a rollout's request-rate bucket.
func GCRAKey(id string) string { return base(id) + ":gcra" }

// PaceKey is a rollout's adaptive-rate state.
func PaceKey(id string) string { return base(id) + ":pace" }

// SlotHoldersKey is a rollout's in-flight semaphore.
func SlotHoldersKey(id string) string { return base(id) + ":slot-holders" }

// SlotWakeKey wakes a rollout's slot waiters.
func SlotWakeKey(id string) string { return base(id) + ":slot-wake" }

// SlotOrphansKey maps the CVMs whose slot was taken back from a dead worker
// to that worker, until their task runs again (or their old lease would
// have ended).
func SlotOrphansKey(id string) string { return base(id) + ":slot-orphans" }

// WorkerKey is a worker process's heartbeat.
func WorkerKey(worker string) string { return prefix + "worker:" + worker }

// Holder names one taking of an in-flight slot: the worker process (its
// heartbeat id; "" for a holder no heartbeat vouches for, freed only by its
// lease), the CVM, and a number unique in the process.
func Holder(worker, cvm string, seq uint64) string {
	return worker + "|" + cvm + "|" + strconv.FormatUint(seq, 36)
}

// parseHolder splits a Holder; ok is false for an anonymous or older-format
// holder, which only its lease frees.
func parseHolder(h string) (worker, cvm string, ok bool) {
	parts := strings.SplitN(h, "|", 3)
	if len(parts) != 3 || parts[0] == "" {
		return "", "", false
	}
	return parts[0], parts[1], true
}

// WorkerName is the host/pid part of a heartbeat id (host/pid#nonce).
func WorkerName(worker string) string {
	if i := strings.LastIndexByte(worker, '#'); i >= 0 {
		return worker[:i]
	}
	return worker
}

// Limits reads and writes the rate limiter's keys.
type Limits struct{ rdb redis.UniversalClient }

// NewLimits returns the limiter's store on rdb.
func NewLimits(rdb redis.UniversalClient) *Limits { return &Limits{rdb: rdb} }

// Redis is the client, for the GCRA limiter (github.com/go-redis/redis_rate
// brings its own script; its key is GCRAKey).
func (s *Limits) Redis() redis.UniversalClient { return s.rdb }

// PaceRate is the adaptive rate last set for a rollout; ok is false when
// none was.
func (s *Limits) PaceRate(ctx context.Context, id string) (rate float64, ok bool, err error) {
	v, err := s.rdb.HGet(ctx, PaceKey(id), "rate").Result()
	if err == redis.Nil {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	r, _ := strconv.ParseFloat(v, 64)
	return r, true, nil
}

// Pace is one adaptive-rate adjustment (see ratelimit's constants).
type Pace struct {
	Throttled      bool
	Now            time.Time
	Ceiling, Floor float64
	Factor         float64
	Every          time.Duration
	Fast, Slow     float64
	Threshold      float64
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

// Feedback applies one adaptive-rate adjustment to a rollout.
func (s *Limits) Feedback(ctx context.Context, id string, p Pace) error {
	t := "0"
	if p.Throttled {
		t = "1"
	}
	return feedbackScript.Run(ctx, s.rdb, []string{PaceKey(id)}, t, p.Now.UnixMilli(), p.Ceiling, p.Floor,
		p.Factor, p.Every.Milliseconds(), p.Fast, p.Slow, p.Threshold).Err()
}

// The in-flight cap is a semaphore of leases: a sorted set of holders
// scored by when each lease ends, in Redis's own clock (TIME), so workers'
// clocks never matter. Taking a slot drops the expired leases and adds one
// only while fewer than the cap are held, in one script: there is no token
// to lose between two commands. A holder frees its slot when it releases
// it, when its lease ends, or when its worker's heartbeat lapses (Reap). A
// freed slot wakes one waiter through a short list.

// acquireScript takes a slot. KEYS: holders, wake, orphans. ARGV: holder,
// lease (ms), cap, cvm. Returns 1 if taken.
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
-- the CVM is being worked on again: no dead worker holds it any more
if ARGV[4] ~= '' then redis.call('HDEL', KEYS[3], ARGV[4]) end
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

// reapScript drops expired leases, and those of the dead workers named in
// ARGV (noting their CVMs in the orphans hash, which lives as long as the
// longest lease it took back), and wakes as many waiters. KEYS: holders,
// wake, orphans. Returns how many leases it dropped.
var reapScript = redis.NewScript(`
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if #ARGV > 0 then
  local dead = {}
  for i = 1, #ARGV do dead[ARGV[i]] = true end
  local hs = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
  for i = 1, #hs, 2 do
    local w, cvm = string.match(hs[i], '^([^|]+)|([^|]*)|')
    if w and dead[w] then
      redis.call('ZREM', KEYS[1], hs[i])
      if cvm ~= '' then
        redis.call('HSET', KEYS[3], cvm, w)
        local ttl = math.floor(tonumber(hs[i + 1]) - now)
        if redis.call('PTTL', KEYS[3]) < ttl then redis.call('PEXPIRE', KEYS[3], ttl) end
      end
      n = n + 1
    end
  end
end
for i = 1, n do redis.call('LPUSH', KEYS[2], '1') end
if n > 0 then redis.call('PEXPIRE', KEYS[2], 60000) end
return n
`)

func slotKeys(id string) []string {
	return []string{SlotHoldersKey(id), SlotWakeKey(id), SlotOrphansKey(id)}
}

// Acquire takes one of a rollout's cap slots for holder (working on cvm)
// for lease, if one is free.
func (s *Limits) Acquire(ctx context.Context, id, holder, cvm string, lease time.Duration, cap int) (bool, error) {
	n, err := acquireScript.Run(ctx, s.rdb, slotKeys(id), holder, lease.Milliseconds(), cap, cvm).Int()
	return n == 1, err
}

// Release gives holder's slot back, if it still has it.
func (s *Limits) Release(ctx context.Context, id, holder string, cap int) error {
	return releaseScript.Run(ctx, s.rdb, slotKeys(id)[:2], holder, cap).Err()
}

// WaitWake waits up to d (whole seconds, at least one) for a freed slot's
// wake-up.
func (s *Limits) WaitWake(ctx context.Context, id string, d time.Duration) error {
	if err := s.rdb.BLPop(ctx, d, SlotWakeKey(id)).Err(); err != nil && err != redis.Nil {
		return err
	}
	return nil
}

// Reap drops a rollout's expired leases and those held by the dead
// workers, and wakes as many waiters. It returns how many it dropped.
func (s *Limits) Reap(ctx context.Context, id string, dead []string) (int, error) {
	args := make([]any, len(dead))
	for i, w := range dead {
		args[i] = w
	}
	return reapScript.Run(ctx, s.rdb, slotKeys(id), args...).Int()
}

// slotHolders is the rollout's holders that a heartbeat vouches for: worker
// -> the CVMs it holds slots for.
func (s *Limits) slotHolders(ctx context.Context, id string) (map[string][]string, error) {
	hs, err := s.rdb.ZRange(ctx, SlotHoldersKey(id), 0, -1).Result()
	if err != nil {
		return nil, err
	}
	out := map[string][]string{}
	for _, h := range hs {
		if w, cvm, ok := parseHolder(h); ok {
			out[w] = append(out[w], cvm)
		}
	}
	return out, nil
}

// DeadHolders is the workers holding slots of the rollout whose heartbeat
// is gone.
func (s *Limits) DeadHolders(ctx context.Context, id string) ([]string, error) {
	_, dead, err := s.deadHolders(ctx, id)
	return dead, err
}

// deadHolders also returns what slotHolders read.
func (s *Limits) deadHolders(ctx context.Context, id string) (map[string][]string, []string, error) {
	held, err := s.slotHolders(ctx, id)
	if err != nil || len(held) == 0 {
		return nil, nil, err
	}
	alive, err := s.Alive(ctx, slices.Collect(maps.Keys(held)))
	if err != nil {
		return nil, nil, err
	}
	var dead []string
	for w := range held {
		if !alive[w] {
			dead = append(dead, w)
		}
	}
	slices.Sort(dead)
	return held, dead, nil
}

// Beat renews a worker's heartbeat for ttl. lapsed reports that it had
// expired (or was never set): slots it held may have been reaped.
// (PEXPIRE, then SET only when the key is gone: no SET ... GET, which
// needs Redis 6.2.)
func (s *Limits) Beat(ctx context.Context, worker string, ttl time.Duration) (lapsed bool, err error) {
	ok, err := s.rdb.PExpire(ctx, WorkerKey(worker), ttl).Result()
	if err != nil || ok {
		return false, err
	}
	return true, s.rdb.Set(ctx, WorkerKey(worker), time.Now().UTC().Format(time.RFC3339), ttl).Err()
}

// Unregister removes a worker's heartbeat (a clean exit).
func (s *Limits) Unregister(ctx context.Context, worker string) error {
	return s.rdb.Del(ctx, WorkerKey(worker)).Err()
}

// Alive reports which of the workers have a heartbeat. Each key is its
// own slot: one EXISTS each, pipelined.
func (s *Limits) Alive(ctx context.Context, workers []string) (map[string]bool, error) {
	p := s.rdb.Pipeline()
	cmds := make([]*redis.IntCmd, len(workers))
	for i, w := range workers {
		cmds[i] = p.Exists(ctx, WorkerKey(w))
	}
	if _, err := p.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	out := make(map[string]bool, len(workers))
	for i, w := range workers {
		out[w] = cmds[i].Val() == 1
	}
	return out, nil
}

// DeadWorkerSlots is, for one dead worker, how many of the rollout's CVMs
// it held when it died and are not taken up again yet: Slots of them, of
// which Freed have had their in-flight slot taken back by a Reap (the
// rest will at the controller's next tick). The CVMs themselves stay
// running until asynq hands their tasks out again.
type DeadWorkerSlots struct {
	Worker string `json:"worker"` // host/pid
	Slots  int    `json:"slots"`
	Freed  int    `json:"freed"`
}

// DeadWorkerSlots lists the dead workers still holding CVMs of the rollout,
// by worker: those holding slots with a lapsed heartbeat, and those whose
// slots a Reap took back while the CVM is still running.
func (s *Limits) DeadWorkerSlots(ctx context.Context, id string) ([]DeadWorkerSlots, error) {
	held, dead, err := s.deadHolders(ctx, id)
	if err != nil {
		return nil, err
	}
	by := map[string]*DeadWorkerSlots{}
	get := func(w string) *DeadWorkerSlots {
		name := WorkerName(w)
		if by[name] == nil {
			by[name] = &DeadWorkerSlots{Worker: name}
		}
		return by[name]
	}
	for _, w := range dead {
		get(w).Slots += len(held[w])
	}
	orphans, err := s.rdb.HGetAll(ctx, SlotOrphansKey(id)).Result()
	if err != nil {
		return nil, err
	}
	if len(orphans) > 0 {
		// Only those still running: a task asynq handed out again that
		// found its CVM done took no slot.
		p := s.rdb.Pipeline()
		states := map[string]*redis.StringCmd{}
		for cvm := range orphans {
			states[cvm] = p.HGet(ctx, CVMKey(id, cvm), "state")
		}
		if _, err := p.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return nil, err
		}
		for cvm, w := range orphans {
			if CVMState(states[cvm].Val()) == Running {
				d := get(w)
				d.Slots++
				d.Freed++
			}
		}
	}
	out := make([]DeadWorkerSlots, 0, len(by))
	for _, d := range by {
		if d.Slots > 0 {
			out = append(out, *d)
		}
	}
	slices.SortFunc(out, func(a, b DeadWorkerSlots) int { return strings.Compare(a.Worker, b.Worker) })
	return out, nil
}
