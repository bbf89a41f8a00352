package store

// The Redis side of package ratelimit: its keys and Lua scripts (package
// ratelimit keeps the policy: rates, adaptive steps, how long to wait).
//
// Keys. Per rollout, after its key base (base in keys.go: its family's
// hash tag), so each script below touches one slot of a Redis Cluster:
//
//	BASE:gcra          the request-rate bucket: GCRA's theoretical arrival time (µs, Redis's clock)
//	BASE:pace          the adaptive rate's state (hash: rate, ssthresh, baseline, clean, reason,
//	                   changed_at) and its counting window (w_start and a count per answer class)
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

// reserveScript takes a request token of a GCRA bucket (as
// github.com/go-redis/redis_rate, but reserving): the token is taken
// unless the wait for it would be over max_wait, and the caller is told
// how long to wait before using it. Waiters sleep once, for their own
// turn, instead of all asking again each time a token may be free: one
// round trip per request whatever the queue. KEYS[1] the bucket. ARGV:
// interval (µs between tokens), burst, max_wait (µs). Returns {taken
// (0|1), wait (µs)}.
var reserveScript = redis.NewScript(`
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - now - (burst - 1) * interval
if wait < 0 then wait = 0 end
if wait > tonumber(ARGV[3]) then return {0, wait} end
tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
return {1, wait}
`)

// Reserve takes a token of the rollout's request bucket at rate per second
// with burst, unless its wait would be over maxWait; wait is how long the
// caller waits before using it (or would have had to).
func (s *Limits) Reserve(ctx context.Context, id string, rate float64, burst int, maxWait time.Duration) (taken bool, wait time.Duration, err error) {
	v, err := reserveScript.Run(ctx, s.rdb, []string{GCRAKey(id)}, int64(1e6/rate), max(1, burst), maxWait.Microseconds()).Int64Slice()
	if err != nil || len(v) != 2 {
		return false, 0, err
	}
	return v[0] == 1, time.Duration(v[1]) * time.Microsecond, nil
}

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

// PaceState is a rollout's adaptive rate with the reason and time of its
// last change; rate is 0 when adaptive mode never set one (the rollout runs
// at its file's rate, or has had no answers yet).
func (s *Limits) PaceState(ctx context.Context, id string) (rate float64, reason string, changedAt time.Time, err error) {
	v, err := s.rdb.HMGet(ctx, PaceKey(id), "rate", "reason", "changed_at").Result()
	if err != nil {
		return 0, "", time.Time{}, err
	}
	rate = num(v[0])
	reason, _ = v[1].(string)
	if ms := num(v[2]); ms > 0 {
		changedAt = time.UnixMilli(int64(ms))
	}
	return rate, reason, changedAt, nil
}

func num(v any) float64 {
	s, _ := v.(string)
	f, _ := strconv.ParseFloat(s, 64)
	return f
}

// PaceCounts are the API's answers to a rollout's requests, by class, over
// some time (package ratelimit classes them).
type PaceCounts struct {
	OK, Throttled, Busy, Errors, Timeouts int64
}

// Add adds c to p.
func (p *PaceCounts) Add(c PaceCounts) {
	p.OK += c.OK
	p.Throttled += c.Throttled
	p.Busy += c.Busy
	p.Errors += c.Errors
	p.Timeouts += c.Timeouts
}

// PaceRecord is the adaptive rate's state, as package ratelimit's rule
// reads and writes it.
type PaceRecord struct {
	Rate, Ssthresh, Baseline float64 // Rate 0: none set yet
	Clean                    int     // windows in a row without overload
	Reason                   string
	ChangedAt                time.Time
}

// paceAddScript adds answers to the rollout's current window, and closes
// the window when it has lasted long enough: the caller that closes it
// gets its counts and the state, decides (in Go), and writes the new state
// with PaceSet. Only one caller closes a window. KEYS[1] the pace hash.
// ARGV: now (ms), window (ms), ok, throttled, busy, errors, timeouts.
// Returns {rate} or, for the closer, {rate, started, ok, throttled, busy,
// errors, timeouts, ssthresh, baseline, clean, reason, changed_at}.
var paceAddScript = redis.NewScript(`
local k = KEYS[1]
local names = {'w_ok', 'w_thr', 'w_busy', 'w_err', 'w_to'}
for i = 1, 5 do
  if ARGV[i + 2] ~= '0' then redis.call('HINCRBY', k, names[i], ARGV[i + 2]) end
end
local now = tonumber(ARGV[1])
local started = tonumber(redis.call('HGET', k, 'w_start') or '0')
local rate = redis.call('HGET', k, 'rate') or '0'
if started == 0 then
  redis.call('HSET', k, 'w_start', now)
  return {rate}
end
if now - started < tonumber(ARGV[2]) then return {rate} end
local c = redis.call('HMGET', k, 'w_ok', 'w_thr', 'w_busy', 'w_err', 'w_to', 'ssthresh', 'baseline', 'clean', 'reason', 'changed_at')
redis.call('HDEL', k, 'w_ok', 'w_thr', 'w_busy', 'w_err', 'w_to')
redis.call('HSET', k, 'w_start', now)
local out = {rate, tostring(started)}
for i = 1, 10 do out[#out + 1] = c[i] or '' end
return out
`)

// PaceAdd adds c to the rollout's current window at now. rate is the
// adaptive rate (0: none set); closed is non-nil when this call closed a
// window that began at least window ago: then its counts, since started,
// and the state are for the caller to decide on.
func (s *Limits) PaceAdd(ctx context.Context, id string, now time.Time, window time.Duration, c PaceCounts) (rate float64, closed *PaceWindow, err error) {
	v, err := paceAddScript.Run(ctx, s.rdb, []string{PaceKey(id)}, now.UnixMilli(), window.Milliseconds(),
		c.OK, c.Throttled, c.Busy, c.Errors, c.Timeouts).StringSlice()
	if err != nil || len(v) == 0 {
		return 0, nil, err
	}
	rate, _ = strconv.ParseFloat(v[0], 64)
	if len(v) < 12 {
		return rate, nil, nil
	}
	f := func(i int) float64 { x, _ := strconv.ParseFloat(v[i], 64); return x }
	w := &PaceWindow{Started: time.UnixMilli(int64(f(1))),
		Counts: PaceCounts{OK: int64(f(2)), Throttled: int64(f(3)), Busy: int64(f(4)), Errors: int64(f(5)), Timeouts: int64(f(6))},
		State:  PaceRecord{Rate: rate, Ssthresh: f(7), Baseline: f(8), Clean: int(f(9)), Reason: v[10]}}
	if ms := f(11); ms > 0 {
		w.State.ChangedAt = time.UnixMilli(int64(ms))
	}
	return rate, w, nil
}

// PaceWindow is a closed window of answers and the state it closed on.
type PaceWindow struct {
	Started time.Time
	Counts  PaceCounts
	State   PaceRecord
}

// PaceSet writes the adaptive rate's state (the counting window is left
// alone: answers keep arriving meanwhile). resetBucket also empties the
// request bucket's queue of reservations, made at the rate before a cut
// (both keys are the rollout's: one slot).
func (s *Limits) PaceSet(ctx context.Context, id string, r PaceRecord, resetBucket bool) error {
	var changed int64
	if !r.ChangedAt.IsZero() {
		changed = r.ChangedAt.UnixMilli()
	}
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, PaceKey(id), "rate", strconv.FormatFloat(r.Rate, 'g', -1, 64),
			"ssthresh", strconv.FormatFloat(r.Ssthresh, 'g', -1, 64), "baseline", strconv.FormatFloat(r.Baseline, 'g', -1, 64),
			"clean", r.Clean, "reason", r.Reason, "changed_at", changed)
		if resetBucket {
			p.Del(ctx, GCRAKey(id))
		}
		return nil
	})
	return err
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
