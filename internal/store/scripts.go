package store

import "github.com/redis/go-redis/v9"

// transitionScript moves one CVM from its current state to a new one and
// keeps the rollout's counters in step, atomically: status never scans CVMs
// and counts never drift, whatever crashes.
//
// KEYS[1] rollout hash, KEYS[2] CVM hash, KEYS[3] recent failures list,
// KEYS[4] audit trail (a tripped budget is written there, as Store.Event would).
// ARGV[1] new state, ARGV[2] mode, ARGV[3] now (RFC 3339), ARGV[4..] field/value pairs.
// Modes:
//
//	begin    pending|running -> running, only while the rollout is running
//	         (a cancelled rollout turns the CVM cancelled instead)
//	finish   pending|running -> a terminal state
//	requeue  running -> pending: the attempt failed, a retry will come
//	snooze   running -> pending: not an attempt (throttled, paused)
//	reset    failed -> pending (retry --failed)
//	cancel   pending -> cancelled
//
// A transition the mode does not allow changes nothing (at-least-once
// delivery makes repeats normal). attempts counts finished attempts: each
// requeue, the finish of a running CVM, and a begin that finds the CVM
// still running (its last try died). After a failed or succeeded CVM it judges
// the failure budget: more than budget_max_failed failures once at least
// budget_min_executed CVMs were executed pauses (or cancels) the rollout.
//
// Returns {rollout state before, CVM state before, CVM state after, tripped
// action, attempts after, the CVM's own target or ”}.
var transitionScript = redis.NewScript(`
local old = redis.call('HGET', KEYS[2], 'state')
local rstate = redis.call('HGET', KEYS[1], 'state') or ''
if not old then return {rstate, '', '', ''} end
local new, mode = ARGV[1], ARGV[2]
local function terminal(s) return s ~= 'pending' and s ~= 'running' end
if mode == 'begin' then
  if terminal(old) then return {rstate, old, old, ''} end
  if rstate == 'cancelled' then
    new = 'cancelled'
  elseif rstate ~= 'running' then
    -- Not running: a CVM left running by a try that died goes back to
    -- pending (that try counts, below); a pending one stays.
    if old ~= 'running' then return {rstate, old, old, ''} end
    new = 'pending'
  end
elseif mode == 'reset' then
  if old ~= 'failed' then return {rstate, old, old, ''} end
elseif mode == 'cancel' then
  if old ~= 'pending' then return {rstate, old, old, ''} end
elseif mode == 'requeue' or mode == 'snooze' then
  if old ~= 'running' then return {rstate, old, old, ''} end
else
  if terminal(old) then return {rstate, old, old, ''} end
end
local stage = redis.call('HGET', KEYS[2], 'stage') or '0'
if old ~= new then
  redis.call('HINCRBY', KEYS[1], 'n:' .. old, -1)
  redis.call('HINCRBY', KEYS[1], 'n:' .. new, 1)
  redis.call('HINCRBY', KEYS[1], 's:' .. stage .. ':' .. old, -1)
  redis.call('HINCRBY', KEYS[1], 's:' .. stage .. ':' .. new, 1)
end
redis.call('HSET', KEYS[2], 'state', new)
if not (mode == 'begin' and new ~= 'running') then -- only a CVM that starts gets worker and started_at
  for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
end
if mode == 'requeue' or (mode == 'finish' and old == 'running') or (mode == 'begin' and old == 'running') then
  -- begin from running: the previous try died mid-way (a killed worker);
  -- it may have sent its PATCH, so it counts.
  redis.call('HINCRBY', KEYS[2], 'attempts', 1)
end
local attempts = redis.call('HGET', KEYS[2], 'attempts') or '0'
if new == 'cancelled' and mode == 'begin' then
  redis.call('HSET', KEYS[2], 'reason', 'rollout cancelled before this CVM started', 'finished_at', ARGV[3])
end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[3])
if new == 'failed' then
  -- the latest failures, for status after a budget trips
  local why = redis.call('HGET', KEYS[2], 'reason') or ''
  redis.call('RPUSH', KEYS[3], string.match(KEYS[2], ':cvm:(.*)$') .. ': ' .. why)
  redis.call('LTRIM', KEYS[3], -20, -1)
end
local tripped = ''
if (new == 'failed' or new == 'succeeded') and rstate == 'running' then
  local maxf = redis.call('HGET', KEYS[1], 'budget_max_failed')
  if maxf then
    local f = tonumber(redis.call('HGET', KEYS[1], 'n:failed') or '0')
    local s = tonumber(redis.call('HGET', KEYS[1], 'n:succeeded') or '0')
    local minx = tonumber(redis.call('HGET', KEYS[1], 'budget_min_executed') or '0')
    if f > tonumber(maxf) and f + s >= minx then
      local action = redis.call('HGET', KEYS[1], 'budget_action') or 'paused'
      local why = 'failure budget exceeded: ' .. f .. ' failed of ' .. (f + s) .. ' executed (max_failed ' .. maxf .. ')'
      redis.call('HSET', KEYS[1], 'state', action, 'reason', why)
      redis.call('RPUSH', KEYS[4], string.sub(ARGV[3], 1, 19) .. 'Z failure-budget: ' .. why .. ', rollout ' .. action)
      redis.call('LTRIM', KEYS[4], -1000, -1) -- maxEvents
      tripped = action
    end
  end
end
return {rstate, old, new, tripped, attempts, redis.call('HGET', KEYS[2], 'target') or ''}
`)

// setStateScript changes a rollout's state only from one of the allowed
// states, so two operators racing (pause vs cancel) get one clear winner.
//
// KEYS[1] rollout hash. ARGV[1] new state, ARGV[2] reason, ARGV[3] now,
// ARGV[4..] allowed current states. Returns {state before, changed 0|1}.
var setStateScript = redis.NewScript(`
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return {'', 0} end
for i = 4, #ARGV do
  if cur == ARGV[i] then
    redis.call('HSET', KEYS[1], 'state', ARGV[1], 'reason', ARGV[2], 'updated_at', ARGV[3])
    return {cur, 1}
  end
end
return {cur, 0}
`)

// prepatchScript runs just before a PATCH, in one round trip: it refuses
// unless the rollout is running (a pause, cancel or tripped budget stops
// new PATCHes at once), records the before-image the first time only, and
// marks that a PATCH is being sent.
//
// KEYS[1] rollout hash, KEYS[2] CVM hash. ARGV[1] prev_kms, ARGV[2] prev_gw.
// Returns {the rollout's state, 1 if this call set patch_sent}.
var prepatchScript = redis.NewScript(`
local st = redis.call('HGET', KEYS[1], 'state') or ''
if st ~= 'running' then return {st, 0} end
redis.call('HSETNX', KEYS[2], 'prev_kms', ARGV[1])
redis.call('HSETNX', KEYS[2], 'prev_gw', ARGV[2])
return {st, redis.call('HSETNX', KEYS[2], 'patch_sent', '1')}
`)
