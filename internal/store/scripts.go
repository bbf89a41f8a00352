package store

import "github.com/redis/go-redis/v9"

// Lua shared by the family scripts. memberKey mirrors base() in keys.go;
// familyBusy is the family guard: the first member of the family, other
// than self, that may still work CVMs (recorded and not finished, cancelled
// with CVMs still in flight, or being recorded under a creation lease), or
// false. Members found ended are dropped from the going set on the way, so
// the set stays as small as the members at work.
const familyLua = `
local function memberKey(root, id)
  if id == root then return 'rollout:{' .. root .. '}' end
  return 'rollout:{' .. root .. '}@' .. string.sub(id, #root + 2)
end
local function familyBusy(going, root, self)
  for _, m in ipairs(redis.call('SMEMBERS', going)) do
    if m ~= self then
      local k = memberKey(root, m)
      local v = redis.call('HMGET', k, 'state', 'ready', 'n:running')
      if v[2] == '1' then
        if v[1] ~= 'completed' and not (v[1] == 'cancelled' and tonumber(v[3] or '0') == 0) then return m end
      elseif redis.call('EXISTS', k .. ':creating') == 1 then
        return m
      end
      redis.call('SREM', going, m)
    end
  end
  return false
end
local function event(key, at, by, what)
  redis.call('RPUSH', key, cjson.encode({at = at, by = by, what = what}))
  redis.call('LTRIM', key, -1000, -1) -- maxEvents
end
-- notify writes the outbox entries of a notification event of rollout
-- hash rkey, one per target on the record (field notify, from the file)
-- that asks for kind, in the step that makes the event happen. Each entry
-- is the event as it was (counts, stage, reason), so a redelivery sends
-- the same body under the same id. See outbox.go.
local function notify(rkey, at, kind, cause, reason)
  local targets = redis.call('HGET', rkey, 'notify')
  if not targets or targets == '' then return end
  local r = redis.call('HMGET', rkey, 'id', 'name', 'family', 'state', 'stage', 'stages', 'rollback_of', 'total')
  if r[7] and r[7] ~= '' then
    if kind == 'applied' then kind = 'rollback_started' elseif kind == 'completed' then kind = 'rollback_completed' end
  end
  local stage = tonumber(r[5] or '0')
  local counts = {}
  for _, st in ipairs({'pending', 'running', 'succeeded', 'unchanged', 'skipped', 'failed', 'cancelled'}) do
    counts[st] = tonumber(redis.call('HGET', rkey, 'n:' .. st) or '0')
  end
  local seq = redis.call('HINCRBY', rkey, 'notify_seq', 1)
  local okey = 'rollout:{' .. r[3] .. '}:outbox'
  for i, t in ipairs(cjson.decode(targets)) do
    local wanted = t.events == nil or #t.events == 0
    for _, e in ipairs(t.events or {}) do if e == kind then wanted = true end end
    if wanted then
      local eid = r[1] .. '.' .. seq .. '.' .. i
      redis.call('HSET', okey, eid, cjson.encode({id = eid, event = kind, at = at, rollout = r[1], name = r[2],
        family = r[3], state = r[4], stage = stage, stage_name = redis.call('HGET', rkey, 's:' .. stage .. ':name') or '',
        stages = tonumber(r[6] or '0'), total = tonumber(r[8] or '0'), counts = counts, cause = cause or '', reason = reason or '',
        url = t.url, format = t.format or '', secret_env = t.secret_env or '', attempts = 0}))
      redis.call('ZADD', okey .. ':due', 0, eid)
    end
  end
end
`

// transitionScript moves one CVM from its current state to a new one and
// keeps the rollout's counters in step, atomically: status never scans CVMs
// and counts never drift, whatever crashes.
//
// KEYS[1] rollout hash, KEYS[2] CVM hash, KEYS[3] recent failures list,
// KEYS[4] audit trail (a tripped budget is written there).
// ARGV[1] new state, ARGV[2] mode, ARGV[3] now (RFC 3339), ARGV[4..] field/value pairs
// (for start: ARGV[4] max attempts, ARGV[5] prev_kms, ARGV[6] prev_gw, the pairs from ARGV[7]).
// Modes:
//
//	begin    pending|running -> running, only while the rollout is running
//	         (a cancelled rollout turns the CVM cancelled instead)
//	start    begin, and in the same step what prepatchScript does: unless
//	         the try is out of attempts, the before-image the first time
//	         only and patch_sent. A worker's try makes it just before its
//	         PATCH, after its GET (see tasks.Handler): one script call
//	         where begin and the pre-PATCH mark were two.
//	finish   pending|running -> a terminal state
//	tried    pending|running -> pending or a terminal state, an attempt
//	         used: the end of a worker's try that never made start (its
//	         GET failed, or showed the target already)
//	park     pending|running -> pending, no attempt used: a worker's try
//	         that never made start, throttled (its GET answered 429, or
//	         waited for a rate token)
//	requeue  running -> pending: the attempt failed, a retry will come
//	snooze   running -> pending: not an attempt (throttled, paused)
//	reset    failed -> pending (retry --failed)
//	cancel   pending -> cancelled
//
// A transition the mode does not allow changes nothing (at-least-once
// delivery makes repeats normal). attempts counts finished attempts: each
// requeue and tried, the finish of a running CVM, and a begin, start,
// tried or park that finds the CVM still running (its last try died: a
// CVM whose tries die after their PATCH must use up its attempts, however
// the next try's GET ends). After a failed or succeeded CVM it judges
// the failure budget: more than budget_max_failed failures once at least
// budget_min_executed CVMs were executed pauses (or cancels) the rollout.
//
// Returns {rollout state before, CVM state before, CVM state after, tripped
// action, attempts after, the CVM's own target or ”, 1 if this call set
// patch_sent, 1 if start found the try out of attempts}.
var transitionScript = redis.NewScript(familyLua + `
-- One read of each hash and one write of the CVM's: a CVM makes a start and
-- a finish, so every call here is paid twice per CVM on the Redis every
-- worker shares (issue 12).
local c = redis.call('HMGET', KEYS[2], 'state', 'stage', 'attempts', 'target', 'patch_sent', 'prev_kms', 'prev_gw')
local r = redis.call('HMGET', KEYS[1], 'state', 'budget_max_failed')
local old = c[1]
local rstate = r[1] or ''
if not old then return {rstate, '', '', ''} end
local new, mode = ARGV[1], ARGV[2]
local starts = mode == 'begin' or mode == 'start'
local first = 4 -- the field/value pairs
if mode == 'start' then first = 7 end
local function terminal(s) return s ~= 'pending' and s ~= 'running' end
if starts then
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
local stage = c[2] or '0'
if old ~= new then
  redis.call('HINCRBY', KEYS[1], 'n:' .. old, -1)
  redis.call('HINCRBY', KEYS[1], 'n:' .. new, 1)
  redis.call('HINCRBY', KEYS[1], 's:' .. stage .. ':' .. old, -1)
  redis.call('HINCRBY', KEYS[1], 's:' .. stage .. ':' .. new, 1)
end
local set = {'state', new}
if not (starts and new ~= 'running') then -- only a CVM that starts gets worker and started_at
  for i = first, #ARGV do set[#set + 1] = ARGV[i] end
end
local sent, out = '0', '0'
if mode == 'start' and new == 'running' then
  -- The pre-PATCH mark (prepatchScript's rule): the before-image only if
  -- absent (the first try's), patch_sent unless set ('' is what retry
  -- --failed leaves: not sent in this generation), and nothing once the
  -- attempts are used up (counting a try that died, below).
  local att = tonumber(c[3] or '0')
  if old == 'running' then att = att + 1 end
  if att >= tonumber(ARGV[4]) then
    out = '1'
  else
    if not c[6] then set[#set + 1], set[#set + 2] = 'prev_kms', ARGV[5] end
    if not c[7] then set[#set + 1], set[#set + 2] = 'prev_gw', ARGV[6] end
    if not c[5] or c[5] == '' then set[#set + 1], set[#set + 2], sent = 'patch_sent', '1', '1' end
  end
end
if new == 'cancelled' and starts then
  local why = 'rollout cancelled before this CVM started'
  if old == 'running' then
    why = 'rollout cancelled after a try of this CVM died'
    if c[5] == '1' then why = why .. ' (its PATCH was sent and may have landed)' end
  end
  set[#set + 1], set[#set + 2], set[#set + 3], set[#set + 4] = 'reason', why, 'finished_at', ARGV[3]
end
redis.call('HSET', KEYS[2], unpack(set))
local attempts = c[3] or '0'
local inc = 0
if mode == 'requeue' or mode == 'tried' then inc = 1 end -- this try
if old == 'running' and (mode == 'finish' or starts or mode == 'tried' or mode == 'park') then
  -- finish: this try, which made the CVM running. begin, start, tried,
  -- park: the try that made it running died mid-way (a killed worker); it
  -- may have sent its PATCH, so it counts.
  inc = inc + 1
end
if inc > 0 then attempts = tostring(redis.call('HINCRBY', KEYS[2], 'attempts', inc)) end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[3])
if new == 'failed' then
  -- the latest failures, for status after a budget trips
  local why = redis.call('HGET', KEYS[2], 'reason') or ''
  redis.call('RPUSH', KEYS[3], string.match(KEYS[2], ':cvm:(.*)$') .. ': ' .. why)
  redis.call('LTRIM', KEYS[3], -20, -1)
end
local tripped = ''
local maxf = r[2]
if (new == 'failed' or new == 'succeeded') and rstate == 'running' and maxf then
  local b = redis.call('HMGET', KEYS[1], 'n:failed', 'n:succeeded', 'budget_min_executed', 'budget_action')
  local f, s, minx = tonumber(b[1] or '0'), tonumber(b[2] or '0'), tonumber(b[3] or '0')
  if f > tonumber(maxf) and f + s >= minx then
    local action = b[4] or 'paused'
    local why = 'failure budget exceeded: ' .. f .. ' failed of ' .. (f + s) .. ' executed (max_failed ' .. maxf .. ')'
    redis.call('HSET', KEYS[1], 'state', action, 'reason', why)
    event(KEYS[4], string.sub(ARGV[3], 1, 19) .. 'Z', 'failure-budget', why .. ', rollout ' .. action)
    notify(KEYS[1], ARGV[3], 'budget_tripped', 'failure_budget', why)
    notify(KEYS[1], ARGV[3], action, 'failure_budget', why)
    tripped = action
  end
end
return {rstate, old, new, tripped, attempts, c[4] or '', sent, out}
`)

// moveScript is every rollout state move (rollout.go builds its spec): it
// checks the state the move starts from and its conditions, then writes
// the new state, the reason, the move's fields, the family's going set and
// the audit line, or nothing at all.
//
// KEYS[1] rollout hash, KEYS[2] audit trail, KEYS[3] the family's going set.
// ARGV[1] the move as JSON (see move in rollout.go).
// Returns {state before, verdict, the incremented field's new value, CVMs
// reset}; the
// verdict is "ok", "missing", "state", "busy:<id>", "require:<field>",
// "unless:<field>", "zero:<field>" or "nonzero:<field>".
var moveScript = redis.NewScript(familyLua + `
local m = cjson.decode(ARGV[1])
local v = redis.call('HMGET', KEYS[1], 'state', 'ready')
local cur = v[1]
if v[2] ~= '1' or not cur then return {'', 'missing'} end
local allowed = false
for _, f in ipairs(m.from) do if f == cur then allowed = true end end
if not allowed then return {cur, 'state'} end
for k, want in pairs(m.require or {}) do
  if (redis.call('HGET', KEYS[1], k) or '') ~= want then return {cur, 'require:' .. k} end
end
for k, bad in pairs(m.unless or {}) do
  if (redis.call('HGET', KEYS[1], k) or '') == bad then return {cur, 'unless:' .. k} end
end
for _, k in ipairs(m.zero or {}) do
  if tonumber(redis.call('HGET', KEYS[1], k) or '0') ~= 0 then return {cur, 'zero:' .. k} end
end
for _, k in ipairs(m.nonzero or {}) do
  if tonumber(redis.call('HGET', KEYS[1], k) or '0') == 0 then return {cur, 'nonzero:' .. k} end
end
if m.exclusive then
  local other = familyBusy(KEYS[3], m.root, m.id)
  if other then return {cur, 'busy:' .. other} end
end
local to = (m.to_if or {})[cur] or m.to
if to and to ~= '' then redis.call('HSET', KEYS[1], 'state', to) end
if m.reason then redis.call('HSET', KEYS[1], 'reason', m.reason) end
for k, val in pairs(m.set or {}) do redis.call('HSET', KEYS[1], k, val) end
for k, val in pairs(m.setnx or {}) do redis.call('HSETNX', KEYS[1], k, val) end
redis.call('HSET', KEYS[1], 'updated_at', m.now)
if m.going == 'add' then redis.call('SADD', KEYS[3], m.id) elseif m.going == 'rem' then redis.call('SREM', KEYS[3], m.id) end
if m.event then
  -- "{move}" in the line says the move as it happened: (from -> to)
  local what = string.gsub(m.event.what, '{move}', '(' .. cur .. ' -> ' .. (to or cur) .. ')')
  event(KEYS[2], m.event.at, m.event.by, what)
end
if m.notify then notify(KEYS[1], m.now, m.notify.kind, m.notify.cause, redis.call('HGET', KEYS[1], 'reason')) end
local n, reset = 0, 0
if m.incr then n = redis.call('HINCRBY', KEYS[1], m.incr, 1) end
-- retry --failed: the failed CVMs named go back to pending under the new
-- task generation n, with the rollout's move (the counters as
-- transitionScript's reset keeps them).
for _, c in ipairs(m.reset or {}) do
  local ck = KEYS[1] .. ':cvm:' .. c
  if redis.call('HGET', ck, 'state') == 'failed' then
    local stage = redis.call('HGET', ck, 'stage') or '0'
    redis.call('HINCRBY', KEYS[1], 'n:failed', -1)
    redis.call('HINCRBY', KEYS[1], 'n:pending', 1)
    redis.call('HINCRBY', KEYS[1], 's:' .. stage .. ':failed', -1)
    redis.call('HINCRBY', KEYS[1], 's:' .. stage .. ':pending', 1)
    redis.call('HSET', ck, 'state', 'pending', 'reason', 'retry requested', 'attempts', 0, 'finished_at', '',
      'gen', n, 'patch_sent', '')
    reset = reset + 1
  end
end
return {cur, 'ok', n, reset}
`)

// leaseScript takes the creation lease of a rollout: unless it is
// recorded already ("ready"), or another process holds the lease ("held"),
// or another member of its family is going ("busy:<id>"), it sets the lease
// and adds the rollout to its family's going set ("ok"). A lease that is
// already this token's (a reserved run) is taken over.
//
// KEYS[1] creation lease, KEYS[2] rollout hash, KEYS[3] going set.
// ARGV[1] token, ARGV[2] lease (ms), ARGV[3] id, ARGV[4] root.
var leaseScript = redis.NewScript(familyLua + `
if redis.call('HGET', KEYS[2], 'ready') == '1' then return 'ready' end
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return 'held' end
local other = familyBusy(KEYS[3], ARGV[4], ARGV[3])
if other then return 'busy:' .. other end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
return 'ok'
`)

// releaseLeaseScript drops a lease (a creation lease, the controller lock)
// only if it is still ours: GET then DEL could delete the next holder's.
var releaseLeaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
`)

// leadScript takes the controller lock, or renews it if this process holds
// it, atomically. KEYS[1] lock; ARGV owner, ttl (ms). Returns 1 if held.
var leadScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
`)

// reserveRunScript reserves run ARGV[1]+1 of a root rollout if its latest
// run number is still ARGV[1], so that of two processes starting the next
// run (operators re-applying, the repeat controller) exactly one creates
// it; and only while the root is completed (not retried back to running,
// not cancelled), no other member of the family is going, and, for the
// repeat controller (ARGV[3] = 1), the root still repeats (a cancel during
// the re-plan wins). The reservation is the run's creation lease (token
// ARGV[4]): the run is going from here on, and a reservation whose process
// died frees the family when its lease runs out.
// ARGV[5] = 1 takes a lapsed reservation of run ARGV[1] over instead.
//
// KEYS[1] root hash, KEYS[2] going set, KEYS[3] the run's creation lease.
// ARGV[1] runs seen, ARGV[2] the run's id, ARGV[3] 1 to require repeating,
// ARGV[4] token, ARGV[5] retake, ARGV[6] lease (ms), ARGV[7] the root's id.
// Returns 1 reserved, 0 the runs moved on (re-read), or why not.
var reserveRunScript = redis.NewScript(familyLua + `
local st = redis.call('HGET', KEYS[1], 'state')
if st ~= 'completed' then return 'rollout is ' .. (st or 'gone') end
if ARGV[3] == '1' and redis.call('HGET', KEYS[1], 'repeat') ~= '1' then return 'it no longer repeats' end
local other = familyBusy(KEYS[2], ARGV[7], ARGV[2])
if other then return other .. ' is going' end
local n = tonumber(redis.call('HGET', KEYS[1], 'runs') or '1')
if n ~= tonumber(ARGV[1]) then return 0 end
if ARGV[5] ~= '1' then redis.call('HSET', KEYS[1], 'runs', n + 1, 'latest_run', ARGV[2]) end
redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[6])
redis.call('SADD', KEYS[2], ARGV[2])
return 1
`)

// claimScript claims CVMs for a rollout, for one apply, atomically: a CVM
// whose owner is another active rollout of another family is a conflict.
// Strict (ARGV[3] = "strict"): any conflict claims nothing. Otherwise the
// free CVMs are claimed and the conflicts returned (the caller skips them).
// A claim of a rollout that is not in the active set is stale and taken;
// so is one of the caller's own family (runs and rollbacks take over).
//
// KEYS[1] owners hash, KEYS[2] active hash. ARGV[1] id, ARGV[2] root,
// ARGV[3] mode, ARGV[4] a fresh activation token, ARGV[5..] CVM ids.
// Returns {cvm, owner, ...} conflicts.
var claimScript = redis.NewScript(`
local function root(id)
  id = string.gsub(id, '%-rollback%d*$', '')
  id = string.gsub(id, '%-run%d+$', '')
  return id
end
-- Batched (HMGET, then HSET of many pairs, a few hundred at a time) and
-- each owner's membership looked up once: a claim costs a handful of
-- calls per thousand CVMs, not three per CVM.
local batch = 500
local conflicts, free, live = {}, {}, {}
for start = 5, #ARGV, batch do
  local ids = {}
  for i = start, math.min(start + batch - 1, #ARGV) do ids[#ids + 1] = ARGV[i] end
  local owners = redis.call('HMGET', KEYS[1], unpack(ids))
  for k, c in ipairs(ids) do
    local o = owners[k]
    if o and o ~= ARGV[1] and live[o] == nil then
      live[o] = root(o) ~= ARGV[2] and redis.call('HEXISTS', KEYS[2], o) == 1
    end
    if o and o ~= ARGV[1] and live[o] then
      conflicts[#conflicts + 1] = c
      conflicts[#conflicts + 1] = o
    else
      free[#free + 1] = c
    end
  end
end
if #conflicts > 0 and ARGV[3] == 'strict' then return conflicts end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
for start = 1, #free, batch do
  local kv = {}
  for i = start, math.min(start + batch - 1, #free) do
    kv[#kv + 1] = free[i]
    kv[#kv + 1] = ARGV[1]
  end
  redis.call('HSET', KEYS[1], unpack(kv))
end
return conflicts
`)

// releaseClaimsScript gives back the claims a rollout holds on the CVMs named
// (not those another rollout has taken since). With a token (Settle), only
// if the rollout's activation token is still that one (nothing activated
// it since), and ARGV[3] = 1, on the last chunk, also takes it out of the
// active hash; without one (an apply refused part-way), unconditionally.
// KEYS[1] owners hash, KEYS[2] active hash. ARGV[1] id, ARGV[2] token or
// "", ARGV[3] leave, ARGV[4..] CVM ids. Returns 1 done, 0 activated again.
var releaseClaimsScript = redis.NewScript(`
if ARGV[2] ~= '' and redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
local batch = 500
for start = 4, #ARGV, batch do
  local ids = {}
  for i = start, math.min(start + batch - 1, #ARGV) do ids[#ids + 1] = ARGV[i] end
  local owners = redis.call('HMGET', KEYS[1], unpack(ids))
  local mine = {}
  for k, c in ipairs(ids) do
    if owners[k] == ARGV[1] then mine[#mine + 1] = c end
  end
  if #mine > 0 then redis.call('HDEL', KEYS[1], unpack(mine)) end
end
if ARGV[3] == '1' then redis.call('HDEL', KEYS[2], ARGV[1]) end
return 1
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
-- The before-image only if absent, in one read and one write (a field
-- present, even empty, is kept); patch_sent unless set ('' is what retry
-- --failed leaves: not sent in this generation).
local v = redis.call('HMGET', KEYS[2], 'prev_kms', 'prev_gw', 'patch_sent')
local set = {}
if not v[1] then set[#set + 1], set[#set + 2] = 'prev_kms', ARGV[1] end
if not v[2] then set[#set + 1], set[#set + 2] = 'prev_gw', ARGV[2] end
local sent = 0
if not v[3] or v[3] == '' then set[#set + 1], set[#set + 2], sent = 'patch_sent', '1', 1 end
if #set > 0 then redis.call('HSET', KEYS[2], unpack(set)) end
return {st, sent}
`)

// busyScript is familyBusy on its own, for a check before a long step
// (planning a rollback) whose own atomic check comes later.
// KEYS[1] going set. ARGV[1] root, ARGV[2] self. Returns the busy member or "".
var busyScript = redis.NewScript(familyLua + `
return familyBusy(KEYS[1], ARGV[1], ARGV[2]) or ''
`)
