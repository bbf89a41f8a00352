package store

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// The notification outbox. A notification event is written to its
// family's outbox by the same script (or MULTI) as the move that causes it
// (the notify function of familyLua): one entry per target of the rollout
// (field notify of its record: urls, events, format and the NAME of the
// environment variable holding the secret, never the secret). An entry
// is due until a worker delivers it: Claim takes due entries under a lease
// (a visibility timeout), so a worker that dies mid-delivery leaves the
// entry to another once its lease runs out, under the same event id.
//
// Which families to look at: the families of the active set (a move that
// notifies happens only to a rollout in it), and OutboxFamiliesKey, to
// which Settle adds a family before its rollout leaves the active set,
// and from which the deliverer removes a family once nothing is due (then
// looks again: a superset, like the other fleet-wide sets).

// OutboxKey is the family's outbox: a hash of event id -> entry (JSON).
func OutboxKey(id string) string { return prefix + "{" + Family(id) + "}:outbox" }

// OutboxDueKey orders the family's undelivered entries by when they are
// due (ms since the epoch; 0 at once; a claim moves it past its lease).
func OutboxDueKey(id string) string { return OutboxKey(id) + ":due" }

// OutboxFamiliesKey is the set of families that may have undelivered
// notifications and no member in the active set.
const OutboxFamiliesKey = fleet + "outbox"

// NotifyDefaultKey holds the workers' --notify-url target (JSON, with a
// short TTL the workers renew); a rollout recorded while it is set gets
// it as one more target.
const NotifyDefaultKey = fleet + "notify-default"

// NotifyTarget is one target as a rollout record keeps it.
type NotifyTarget struct {
	URL       string   `json:"url"`
	Events    []string `json:"events,omitempty"` // none: all
	Format    string   `json:"format,omitempty"` // json or slack
	SecretEnv string   `json:"secret_env,omitempty"`
}

// Notification is one outbox entry: the event as it happened, the target
// it goes to, and its delivery so far.
type Notification struct {
	ID        string           `json:"id"` // X-Rollout-Event-Id
	Event     string           `json:"event"`
	At        string           `json:"at"` // RFC 3339, when it happened
	Rollout   string           `json:"rollout"`
	Name      string           `json:"name"`
	Family    string           `json:"family"`
	State     string           `json:"state"`
	Stage     int              `json:"stage"` // 0-based
	StageName string           `json:"stage_name"`
	Stages    int              `json:"stages"`
	Total     int              `json:"total"`
	Counts    map[CVMState]int `json:"counts"`
	Cause     string           `json:"cause"` // paused/cancelled: operator, failure_budget, end_at
	Reason    string           `json:"reason"`
	URL       string           `json:"url"`
	Format    string           `json:"format"`
	SecretEnv string           `json:"secret_env"`
	// Delivery.
	Attempts    int    `json:"attempts"`
	Lease       string `json:"lease,omitempty"` // the token of the latest claim
	DeliveredAt string `json:"delivered_at,omitempty"`
	FailedAt    string `json:"failed_at,omitempty"` // given up (max age)
	LastError   string `json:"last_error,omitempty"`
}

// Time is when the event happened.
func (n Notification) Time() time.Time { return parseTime(n.At) }

func encodeTargets(ts []NotifyTarget) string {
	if len(ts) == 0 {
		return ""
	}
	b, _ := json.Marshal(ts)
	return string(b)
}

// notice is the notification event a move is (moveScript).
type notice struct {
	Kind  string `json:"kind"`
	Cause string `json:"cause,omitempty"`
}

// notifyScript is notify on its own, for an event that is not a move
// (inside Create's MULTI: applied, rollback_started).
// KEYS[1] rollout hash. ARGV now, kind, cause, reason.
var notifyScript = redis.NewScript(familyLua + `
notify(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
return 1
`)

// stageDoneScript records when stage ARGV[1] was first seen done and, that
// first time, its stage_completed notification. Returns done_at.
// KEYS[1] rollout hash. ARGV stage, now.
var stageDoneScript = redis.NewScript(familyLua + `
local f = 's:' .. ARGV[1] .. ':done_at'
if redis.call('HSETNX', KEYS[1], f, ARGV[2]) == 1 then
  notify(KEYS[1], ARGV[2], 'stage_completed', '', 'stage ' .. (tonumber(ARGV[1]) + 1) .. ' done')
end
return redis.call('HGET', KEYS[1], f)
`)

// stalledScript notes a stall once: if the running rollout has not moved
// since ARGV[1] (its updated_at) and that stall was not noted yet, it
// writes the audit line and the stalled notification. Returns 1 if noted.
// KEYS[1] rollout hash, KEYS[2] audit trail. ARGV updated_at seen, now, reason.
var stalledScript = redis.NewScript(familyLua + `
local v = redis.call('HMGET', KEYS[1], 'state', 'updated_at', 'stalled_since')
if v[1] ~= 'running' or v[2] ~= ARGV[1] or v[3] == ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'stalled_since', ARGV[1])
event(KEYS[2], string.sub(ARGV[2], 1, 19) .. 'Z', 'controller', ARGV[3])
notify(KEYS[1], ARGV[2], 'stalled', '', ARGV[3])
return 1
`)

// Stalled records, once per stall, that running rollout id has made no
// progress since updatedAt (its record's UpdatedAt as the caller read it).
func (s *Store) Stalled(ctx context.Context, id string, updatedAt time.Time, why string, now time.Time) (bool, error) {
	n, err := stalledScript.Run(ctx, s.rdb, []string{RolloutKey(id), EventsKey(id)},
		updatedAt.UTC().Format(time.RFC3339Nano), now.UTC().Format(time.RFC3339Nano), why).Int()
	return n == 1, err
}

// claimOutboxScript claims up to ARGV[3] due entries of a family's outbox
// for ARGV[4] (a lease token) until ARGV[1] + ARGV[2] ms: each claim
// counts an attempt. KEYS[1] outbox, KEYS[2] due. Returns the entries.
var claimOutboxScript = redis.NewScript(`
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  local raw = redis.call('HGET', KEYS[1], id)
  if not raw then
    redis.call('ZREM', KEYS[2], id)
  else
    local e = cjson.decode(raw)
    e.attempts = (tonumber(e.attempts) or 0) + 1
    e.lease = ARGV[4]
    raw = cjson.encode(e)
    redis.call('HSET', KEYS[1], id, raw)
    redis.call('ZADD', KEYS[2], tonumber(ARGV[1]) + tonumber(ARGV[2]), id)
    out[#out + 1] = raw
  end
end
return out
`)

// settleOutboxScript records an attempt's outcome ARGV[3] (ok, retry,
// give-up) of entry ARGV[1] claimed under lease ARGV[2]: ok marks it
// delivered whoever claimed it; retry (due again at ARGV[5] ms) and
// give-up count only for the latest claim, and never undo a delivery.
// KEYS[1] outbox, KEYS[2] due. ARGV[4] now, ARGV[6] error.
var settleOutboxScript = redis.NewScript(`
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return 0 end
local e = cjson.decode(raw)
if e.delivered_at then return 0 end
if ARGV[3] == 'ok' then
  e.delivered_at = ARGV[4]
  e.last_error = nil
  redis.call('ZREM', KEYS[2], ARGV[1])
elseif e.lease ~= ARGV[2] then
  return 0
elseif ARGV[3] == 'retry' then
  e.last_error = ARGV[6]
  redis.call('ZADD', KEYS[2], tonumber(ARGV[5]), ARGV[1])
else
  e.failed_at = ARGV[4]
  e.last_error = ARGV[6]
  redis.call('ZREM', KEYS[2], ARGV[1])
end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(e))
return 1
`)

// Claim takes up to n due notifications of family for lease (a visibility
// timeout) under token.
func (s *Store) Claim(ctx context.Context, family, token string, n int, lease time.Duration, now time.Time) ([]Notification, error) {
	raws, err := claimOutboxScript.Run(ctx, s.rdb, []string{OutboxKey(family), OutboxDueKey(family)},
		now.UnixMilli(), lease.Milliseconds(), n, token).StringSlice()
	if err != nil {
		return nil, err
	}
	out := make([]Notification, 0, len(raws))
	for _, raw := range raws {
		var e Notification
		if err := json.Unmarshal([]byte(raw), &e); err != nil {
			return nil, fmt.Errorf("outbox entry: %w", err)
		}
		out = append(out, e)
	}
	return out, nil
}

// Outcome is what a delivery attempt came to.
type Outcome string

const (
	Delivered Outcome = "ok"
	Retry     Outcome = "retry"
	GiveUp    Outcome = "give-up"
)

// SettleNotification records the outcome of an attempt at notification n
// (as Claim returned it); retry makes it due again at next. It reports
// whether it was recorded (false: delivered already, or claimed since by
// another worker, whose word counts).
func (s *Store) SettleNotification(ctx context.Context, n Notification, o Outcome, errText string, next, now time.Time) (bool, error) {
	r, err := settleOutboxScript.Run(ctx, s.rdb, []string{OutboxKey(n.Family), OutboxDueKey(n.Family)},
		n.ID, n.Lease, string(o), now.UTC().Format(time.RFC3339Nano), next.UnixMilli(), errText).Int()
	return r == 1, err
}

// OutboxFamilies lists the families that may have notifications to
// deliver: those of the active set's rollouts and those Settle listed
// (listed says which, for ForgetOutboxFamily).
func (s *Store) OutboxFamilies(ctx context.Context) (fams []string, listed map[string]bool, err error) {
	active, err := s.Active(ctx)
	if err != nil {
		return nil, nil, err
	}
	ls, err := s.rdb.SMembers(ctx, OutboxFamiliesKey).Result()
	if err != nil {
		return nil, nil, err
	}
	listed = map[string]bool{}
	seen := map[string]bool{}
	for _, f := range ls {
		listed[f], seen[f] = true, true
	}
	for _, id := range active {
		seen[Family(id)] = true
	}
	for f := range seen {
		fams = append(fams, f)
	}
	sort.Strings(fams)
	return fams, listed, nil
}

// ForgetOutboxFamily takes a family with nothing due off OutboxFamiliesKey,
// then looks again and puts it back if something became due meanwhile.
func (s *Store) ForgetOutboxFamily(ctx context.Context, family string) error {
	if n, err := s.rdb.ZCard(ctx, OutboxDueKey(family)).Result(); err != nil || n > 0 {
		return err
	}
	if err := s.rdb.SRem(ctx, OutboxFamiliesKey, family).Err(); err != nil {
		return err
	}
	if n, err := s.rdb.ZCard(ctx, OutboxDueKey(family)).Result(); err != nil || n == 0 {
		return err
	}
	return s.rdb.SAdd(ctx, OutboxFamiliesKey, family).Err()
}

// Notifications returns the notifications of rollout id, oldest first.
func (s *Store) Notifications(ctx context.Context, id string) ([]Notification, error) {
	m, err := s.rdb.HGetAll(ctx, OutboxKey(id)).Result()
	if err != nil {
		return nil, err
	}
	var out []Notification
	for eid, raw := range m {
		if !strings.HasPrefix(eid, id+".") || strings.Contains(eid[len(id)+1:], "-") {
			continue // another member of the family
		}
		var e Notification
		if json.Unmarshal([]byte(raw), &e) == nil {
			out = append(out, e)
		}
	}
	sort.Slice(out, func(i, j int) bool { return eventOrder(out[i].ID) < eventOrder(out[j].ID) })
	return out, nil
}

// eventOrder sorts event ids ROLLOUT.SEQ.TARGET by sequence, then target.
func eventOrder(eid string) int {
	parts := strings.Split(eid, ".")
	if len(parts) < 2 {
		return 0
	}
	seq, _ := strconv.Atoi(parts[len(parts)-2])
	t, _ := strconv.Atoi(parts[len(parts)-1])
	return seq*1000 + t
}

// NotifyDefault is the workers' default target, if one is published.
func (s *Store) NotifyDefault(ctx context.Context) (*NotifyTarget, error) {
	raw, err := s.rdb.Get(ctx, NotifyDefaultKey).Result()
	if err == redis.Nil {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	var t NotifyTarget
	if err := json.Unmarshal([]byte(raw), &t); err != nil {
		return nil, nil // not ours to judge; no default
	}
	return &t, nil
}

// PublishNotifyDefault publishes a worker's --notify-url target for ttl.
func (s *Store) PublishNotifyDefault(ctx context.Context, t NotifyTarget, ttl time.Duration) error {
	b, _ := json.Marshal(t)
	return s.rdb.Set(ctx, NotifyDefaultKey, b, ttl).Err()
}
