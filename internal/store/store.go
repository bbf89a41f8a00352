package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// ErrNotFound is returned for a rollout id Redis does not hold.
var ErrNotFound = errors.New("rollout not found")

// Store reads and writes rollout records.
type Store struct {
	rdb redis.UniversalClient
}

// New wraps a Redis client.
func New(rdb redis.UniversalClient) *Store { return &Store{rdb: rdb} }

// Redis returns the client (for the queue and the limiter, which share it).
func (s *Store) Redis() redis.UniversalClient { return s.rdb }

// NewRollout is what apply records.
type NewRollout struct {
	ID, Name, Spec, SpecHash, CreatedBy string
	State, Reason                       string
	Stages                              []string // stage names; len >= 1
	CVMs                                []NewCVM // every selected CVM, in plan order
	Fields                              map[string]string
	Repeat                              bool // add to RepeatingKey when ready (schedule.repeat)
}

// NewCVM is one CVM's starting record.
type NewCVM struct {
	ID, Name string
	Stage    int
	State    string // pending, unchanged or skipped
	Reason   string
	Target   string // JSON of a per-CVM target that replaces the file's; "" for none
}

const chunk = 500

// Create records a rollout. It is idempotent: for a rollout already fully
// recorded it changes nothing and returns created=false, so a re-run of
// apply continues the rollout. A crash part-way leaves it unready, and the
// next Create writes it again from scratch (no task is queued before ready).
//
// Two callers at once (operators re-applying, the repeat controller) do
// not both write: the first takes a creation lease and the other waits for
// the rollout to be ready and reports it as existing. A writer that dies
// holds the lease for createLease at most.
func (s *Store) Create(ctx context.Context, r NewRollout, now time.Time) (created bool, err error) {
	key := RolloutKey(r.ID)
	token, err := s.claimCreation(ctx, r.ID)
	if err != nil || token == "" {
		return false, err
	}
	defer releaseCreationScript.Run(context.WithoutCancel(ctx), s.rdb, []string{CreatingKey(r.ID)}, token)
	// Every write below goes through leased: a writer that stalled past its
	// lease (and was replaced) writes nothing more.
	leased := func(write func(redis.Pipeliner)) error {
		return s.leased(ctx, r.ID, token, write)
	}
	ready, err := s.rdb.HGet(ctx, key, "ready").Result()
	if err != nil && err != redis.Nil {
		return false, err
	}
	if ready == "1" {
		return false, nil
	}
	// An earlier writer that died part-way left records to overwrite
	// whole; a fresh rollout has none, and skips a DEL per CVM.
	leftovers, err := s.rdb.Exists(ctx, key).Result()
	if err != nil {
		return false, err
	}
	counts := map[string]int{}
	stageCounts := map[string]int{}
	stageSize := make([]int, len(r.Stages))
	for _, c := range r.CVMs {
		counts[c.State]++
		stageCounts[stageCountField(c.Stage, c.State)]++
		if c.State == Pending {
			stageSize[c.Stage]++
		}
	}
	ts := now.UTC().Format(time.RFC3339Nano)
	meta := map[string]any{
		"id": r.ID, "name": r.Name, "spec": r.Spec, "spec_hash": r.SpecHash, "created_at": ts, "updated_at": ts,
		"created_by": r.CreatedBy, "state": r.State, "reason": r.Reason, "total": len(r.CVMs),
		"stages": len(r.Stages), "stage": 0, "dispatched": -1,
	}
	for _, st := range CVMStates {
		meta[countField(st)] = counts[st]
	}
	for i, name := range r.Stages {
		meta["s:"+strconv.Itoa(i)+":name"] = name
		meta["s:"+strconv.Itoa(i)+":size"] = stageSize[i]
		for _, st := range CVMStates {
			meta[stageCountField(i, st)] = stageCounts[stageCountField(i, st)]
		}
	}
	for k, v := range r.Fields {
		meta[k] = v
	}
	if err := leased(func(pipe redis.Pipeliner) {
		pipe.Del(ctx, key, OrderKey(r.ID))
		for i := range r.Stages {
			pipe.Del(ctx, StageKey(r.ID, i))
		}
		pipe.HSet(ctx, key, meta)
	}); err != nil {
		return false, err
	}
	for start := 0; start < len(r.CVMs); start += chunk {
		part := r.CVMs[start:min(start+chunk, len(r.CVMs))]
		ids := make([]any, len(part))
		stageIDs := map[int][]any{}
		if err := leased(func(pipe redis.Pipeliner) {
			for i, c := range part {
				ids[i] = c.ID
				rec := []any{"name", c.Name, "stage", c.Stage, "state", c.State}
				if c.Reason != "" {
					rec = append(rec, "reason", c.Reason)
				}
				if c.Target != "" {
					rec = append(rec, "target", c.Target)
				}
				if Terminal(c.State) {
					rec = append(rec, "finished_at", ts)
				}
				if leftovers > 0 {
					pipe.Del(ctx, CVMKey(r.ID, c.ID))
				}
				pipe.HSet(ctx, CVMKey(r.ID, c.ID), rec...)
				if c.State == Pending {
					stageIDs[c.Stage] = append(stageIDs[c.Stage], c.ID)
				}
			}
			pipe.RPush(ctx, OrderKey(r.ID), ids...)
			for st, l := range stageIDs {
				pipe.RPush(ctx, StageKey(r.ID, st), l...)
			}
		}); err != nil {
			return false, err
		}
	}
	// Ready, listed, active (the controller drives it) and, if so,
	// repeating: in one MULTI, so no crash leaves a ready rollout that
	// nothing drives.
	err = leased(func(pipe redis.Pipeliner) {
		pipe.HSet(ctx, key, "ready", "1")
		pipe.ZAdd(ctx, IndexKey, redis.Z{Score: float64(now.UnixMilli()), Member: r.ID})
		pipe.SAdd(ctx, ActiveKey, r.ID)
		if r.Repeat {
			pipe.SAdd(ctx, RepeatingKey, r.ID)
		}
	})
	return err == nil, err
}

// Creating says whether a process holds the creation lease of rollout id
// (it is being recorded right now).
func (s *Store) Creating(ctx context.Context, id string) (bool, error) {
	n, err := s.rdb.Exists(ctx, CreatingKey(id)).Result()
	return n > 0, err
}

// createLease bounds how long a dead writer blocks the creation of its
// rollout; a live one renews it with every chunk of records.
const createLease = 30 * time.Second

// errLeaseLost: this writer stalled past its creation lease and another
// process took over the rollout's creation.
var errLeaseLost = errors.New("another process took over recording this rollout (this one stalled past its lease); run apply again")

// claimCreation takes the creation lease of rollout id and returns its
// token, or waits until the rollout is ready (token "") or the lease of a
// dead writer runs out (then takes it).
func (s *Store) claimCreation(ctx context.Context, id string) (token string, err error) {
	var b [8]byte
	_, _ = rand.Read(b[:])
	token = hex.EncodeToString(b[:])
	for {
		ok, err := s.rdb.SetNX(ctx, CreatingKey(id), token, createLease).Result()
		if err != nil || ok {
			if err != nil {
				token = ""
			}
			return token, err
		}
		ready, err := s.rdb.HGet(ctx, RolloutKey(id), "ready").Result()
		if err != nil && err != redis.Nil {
			return "", err
		}
		if ready == "1" {
			return "", nil
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// leased runs write in a MULTI that commits only while this writer still
// holds the creation lease (WATCH on it: a lease that expired or changed
// hands aborts the transaction), and renews the lease.
func (s *Store) leased(ctx context.Context, id, token string, write func(redis.Pipeliner)) error {
	lease := CreatingKey(id)
	err := s.rdb.Watch(ctx, func(tx *redis.Tx) error {
		if cur, err := tx.Get(ctx, lease).Result(); err == redis.Nil || err == nil && cur != token {
			return errLeaseLost
		} else if err != nil {
			return err
		}
		_, err := tx.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
			write(pipe)
			pipe.PExpire(ctx, lease, createLease)
			return nil
		})
		return err
	}, lease)
	if errors.Is(err, redis.TxFailedErr) {
		return errLeaseLost
	}
	return err
}

// releaseCreationScript drops the creation lease if it is still ours.
var releaseCreationScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
`)

func jsonList(l []string) string {
	if l == nil {
		return "null"
	}
	b, _ := json.Marshal(l)
	return string(b)
}

func parseList(s string) []string {
	if s == "" || s == "null" {
		return nil
	}
	var l []string
	_ = json.Unmarshal([]byte(s), &l)
	return l
}

// Get reads a rollout's record and counters (one HGETALL: its cost does not
// grow with the number of CVMs).
func (s *Store) Get(ctx context.Context, id string) (*Rollout, error) {
	m, err := s.rdb.HGetAll(ctx, RolloutKey(id)).Result()
	if err != nil {
		return nil, err
	}
	if len(m) == 0 || m["ready"] != "1" {
		return nil, fmt.Errorf("%w: %s (rollout list shows the rollouts)", ErrNotFound, id)
	}
	return parseRollout(m), nil
}

func parseRollout(m map[string]string) *Rollout {
	r := &Rollout{ID: m["id"], Name: m["name"], State: m["state"], Reason: m["reason"], Spec: m["spec"],
		SpecHash: m["spec_hash"], CreatedBy: m["created_by"], Counts: map[string]int{}, Fields: m}
	r.CreatedAt, _ = time.Parse(time.RFC3339Nano, m["created_at"])
	r.UpdatedAt, _ = time.Parse(time.RFC3339Nano, m["updated_at"])
	r.Total, _ = strconv.Atoi(m["total"])
	r.Stage, _ = strconv.Atoi(m["stage"])
	n, _ := strconv.Atoi(m["stages"])
	for _, st := range CVMStates {
		r.Counts[st], _ = strconv.Atoi(m[countField(st)])
	}
	for i := range n {
		stg := Stage{Index: i, Name: m["s:"+strconv.Itoa(i)+":name"], Counts: map[string]int{}}
		stg.Size, _ = strconv.Atoi(m["s:"+strconv.Itoa(i)+":size"])
		for _, st := range CVMStates {
			stg.Counts[st], _ = strconv.Atoi(m[stageCountField(i, st)])
		}
		r.Stages = append(r.Stages, stg)
	}
	return r
}

// List returns every rollout, newest first.
func (s *Store) List(ctx context.Context) ([]*Rollout, error) {
	ids, err := s.rdb.ZRevRange(ctx, IndexKey, 0, -1).Result()
	if err != nil {
		return nil, err
	}
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.HGetAll(ctx, RolloutKey(id))
	}
	if _, err := pipe.Exec(ctx); err != nil && err != redis.Nil {
		return nil, err
	}
	out := make([]*Rollout, 0, len(ids))
	for _, c := range cmds {
		if m := c.Val(); len(m) > 0 {
			out = append(out, parseRollout(m))
		}
	}
	return out, nil
}

// Active lists the ids of rollouts that are not finished.
func (s *Store) Active(ctx context.Context) ([]string, error) {
	ids, err := s.rdb.SMembers(ctx, ActiveKey).Result()
	sort.Strings(ids)
	return ids, err
}

// Finished records that a rollout needs no more driving.
func (s *Store) Finished(ctx context.Context, id string) error {
	return s.rdb.SRem(ctx, ActiveKey, id).Err()
}

// Transition is the result of a CVM state change.
type Transition struct {
	RolloutState string // before the change
	From, To     string // CVM state before and after ("" From: no such record)
	Tripped      string // "paused" or "cancelled" when this change tripped the failure budget
	Attempts     int    // finished attempts of the CVM after the change
	Target       string // the CVM's own target (JSON), if it has one
}

// Changed reports whether the CVM's state changed.
func (t Transition) Changed() bool { return t.From != t.To }

// Mode names for transition; see transitionScript.
const (
	ModeBegin   = "begin"
	ModeFinish  = "finish"
	ModeRequeue = "requeue"
	ModeSnooze  = "snooze"
	ModeReset   = "reset"
	ModeCancel  = "cancel"
)

// Move changes one CVM's state under mode's rules and sets fields on its record.
func (s *Store) Move(ctx context.Context, id, cvm, to, mode string, now time.Time, fields ...string) (Transition, error) {
	args := make([]any, 0, 3+len(fields))
	args = append(args, to, mode, now.UTC().Format(time.RFC3339Nano))
	for _, f := range fields {
		args = append(args, f)
	}
	res, err := transitionScript.Run(ctx, s.rdb, []string{RolloutKey(id), CVMKey(id, cvm), FailuresKey(id), EventsKey(id)}, args...).StringSlice()
	if err != nil {
		return Transition{}, err
	}
	t := Transition{RolloutState: res[0], From: res[1], To: res[2], Tripped: res[3]}
	if len(res) > 5 {
		t.Attempts, _ = strconv.Atoi(res[4])
		t.Target = res[5]
	}
	return t, nil
}

// SetState changes the rollout's state if it is in one of from. It returns
// the state it found and whether it changed it.
func (s *Store) SetState(ctx context.Context, id, to, reason string, now time.Time, from ...string) (string, bool, error) {
	args := []any{to, reason, now.UTC().Format(time.RFC3339Nano)}
	for _, f := range from {
		args = append(args, f)
	}
	res, err := setStateScript.Run(ctx, s.rdb, []string{RolloutKey(id)}, args...).Slice()
	if err != nil {
		return "", false, err
	}
	cur, _ := res[0].(string)
	if cur == "" {
		return "", false, fmt.Errorf("%w: %s (rollout list shows the rollouts)", ErrNotFound, id)
	}
	return cur, res[1].(int64) == 1, nil
}

// SetFields sets plain fields of the rollout hash (controller bookkeeping).
func (s *Store) SetFields(ctx context.Context, id string, kv ...any) error {
	return s.rdb.HSet(ctx, RolloutKey(id), kv...).Err()
}

// StageMembers returns the CVM ids of a stage.
func (s *Store) StageMembers(ctx context.Context, id string, stage int) ([]string, error) {
	return s.rdb.LRange(ctx, StageKey(id, stage), 0, -1).Result()
}

// Records calls fn for every CVM record of a rollout in plan order,
// reading them in pipelined chunks.
func (s *Store) Records(ctx context.Context, id string, fn func(CVMRecord) error) error {
	n, err := s.rdb.LLen(ctx, OrderKey(id)).Result()
	if err != nil {
		return err
	}
	for start := int64(0); start < n; start += chunk {
		ids, err := s.rdb.LRange(ctx, OrderKey(id), start, start+chunk-1).Result()
		if err != nil {
			return err
		}
		pipe := s.rdb.Pipeline()
		cmds := make([]*redis.MapStringStringCmd, len(ids))
		for i, cvm := range ids {
			cmds[i] = pipe.HGetAll(ctx, CVMKey(id, cvm))
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return err
		}
		for i, c := range cmds {
			if err := fn(parseRecord(ids[i], c.Val())); err != nil {
				return err
			}
		}
	}
	return nil
}

// Record reads one CVM's record.
func (s *Store) Record(ctx context.Context, id, cvm string) (CVMRecord, error) {
	m, err := s.rdb.HGetAll(ctx, CVMKey(id, cvm)).Result()
	if err != nil {
		return CVMRecord{}, err
	}
	if len(m) == 0 {
		return CVMRecord{}, fmt.Errorf("rollout %s has no CVM %s", id, cvm)
	}
	return parseRecord(cvm, m), nil
}

func parseRecord(id string, m map[string]string) CVMRecord {
	r := CVMRecord{CVMID: id, Name: m["name"], State: m["state"], Reason: m["reason"], Worker: m["worker"], Patched: m["patched"] == "1"}
	r.Stage, _ = strconv.Atoi(m["stage"])
	r.Attempts, _ = strconv.Atoi(m["attempts"])
	r.Gen, _ = strconv.Atoi(m["gen"])
	r.HTTPStatus, _ = strconv.Atoi(m["http_status"])
	r.PrevKMS, r.PrevGW = parseList(m["prev_kms"]), parseList(m["prev_gw"])
	r.AppliedKMS, r.AppliedGW = parseList(m["applied_kms"]), parseList(m["applied_gw"])
	r.StartedAt, _ = time.Parse(time.RFC3339Nano, m["started_at"])
	r.FinishedAt, _ = time.Parse(time.RFC3339Nano, m["finished_at"])
	return r
}

// JSONList encodes a URL list for a record field (nil stays "null").
func JSONList(l []string) string { return jsonList(l) }

// Event is one line of a rollout's audit trail: who did what, when.
type Event struct {
	At   time.Time `json:"at"`
	By   string    `json:"by"`
	What string    `json:"what"`
}

// maxEvents caps a rollout's audit trail; the oldest lines go first.
const maxEvents = 1000

// Event appends a line to the rollout's audit trail. The line is
// "RFC3339 who: what", the format the transition script also writes when a
// failure budget trips.
func (s *Store) Event(ctx context.Context, id string, now time.Time, who, what string) error {
	line := now.UTC().Format(time.RFC3339) + " " + who + ": " + strings.ReplaceAll(what, "\n", " ")
	pipe := s.rdb.Pipeline()
	pipe.RPush(ctx, EventsKey(id), line)
	pipe.LTrim(ctx, EventsKey(id), -maxEvents, -1)
	_, err := pipe.Exec(ctx)
	return err
}

// Events returns the rollout's audit trail, oldest first; last > 0 keeps
// only the latest that many.
func (s *Store) Events(ctx context.Context, id string, last int) ([]Event, error) {
	start := int64(0)
	if last > 0 {
		start = -int64(last)
	}
	lines, err := s.rdb.LRange(ctx, EventsKey(id), start, -1).Result()
	if err != nil {
		return nil, err
	}
	out := make([]Event, 0, len(lines))
	for _, l := range lines {
		out = append(out, parseEvent(l))
	}
	return out, nil
}

func parseEvent(line string) Event {
	at, rest, _ := strings.Cut(line, " ")
	t, err := time.Parse(time.RFC3339, at)
	if err != nil {
		return Event{What: line}
	}
	by, what, ok := strings.Cut(rest, ": ")
	if !ok {
		return Event{At: t, What: rest}
	}
	return Event{At: t, By: by, What: what}
}

// MarkPatching is called just before a PATCH. Unless the rollout is no
// longer running (then it changes nothing and returns the state), it
// records that a PATCH was sent, and the CVM's before-image the first time
// only: a retry after a PATCH that landed must not take the new URLs for
// the old ones.
func (s *Store) MarkPatching(ctx context.Context, id, cvm string, prevKMS, prevGW []string) (rolloutState string, newlySent bool, err error) {
	res, err := prepatchScript.Run(ctx, s.rdb, []string{RolloutKey(id), CVMKey(id, cvm)}, jsonList(prevKMS), jsonList(prevGW)).Slice()
	if err != nil {
		return "", false, err
	}
	st, _ := res[0].(string)
	n, _ := res[1].(int64)
	return st, n == 1, nil
}

// UnmarkPatching takes back a patch_sent that MarkPatching set when the
// PATCH then did not go out (the rollout's own rate limit snoozed it), so a
// later try does not take someone else's change for ours.
func (s *Store) UnmarkPatching(ctx context.Context, id, cvm string) error {
	return s.rdb.HDel(ctx, CVMKey(id, cvm), "patch_sent").Err()
}

// PatchSent reports whether an earlier attempt sent a PATCH for this CVM.
func (s *Store) PatchSent(ctx context.Context, id, cvm string) (bool, error) {
	v, err := s.rdb.HGet(ctx, CVMKey(id, cvm), "patch_sent").Result()
	if err == redis.Nil {
		return false, nil
	}
	return v == "1", err
}

// RecentFailures returns the last failures ("cvm_id: reason"), oldest first.
func (s *Store) RecentFailures(ctx context.Context, id string) ([]string, error) {
	return s.rdb.LRange(ctx, FailuresKey(id), 0, -1).Result()
}

// ResetFailed puts every failed CVM back to pending (retry --failed) and
// returns their ids with the new task generation, so their tasks get ids
// of their own. Each CVM is reset by exactly one caller, however many race.
func (s *Store) ResetFailed(ctx context.Context, id string, now time.Time) (ids []string, gen int, err error) {
	g, err := s.rdb.HIncrBy(ctx, RolloutKey(id), "gen", 1).Result()
	if err != nil {
		return nil, 0, err
	}
	err = s.Records(ctx, id, func(r CVMRecord) error {
		if r.State != Failed {
			return nil
		}
		t, err := s.Move(ctx, id, r.CVMID, Pending, ModeReset, now, "reason", "retry requested", "attempts", "0", "finished_at", "",
			"gen", strconv.Itoa(int(g)), "patch_sent", "")
		if err != nil {
			return err
		}
		if t.Changed() {
			ids = append(ids, r.CVMID)
		}
		return nil
	})
	return ids, int(g), err
}

// Reactivate puts a rollout back in the controller's set.
func (s *Store) Reactivate(ctx context.Context, id string) error {
	return s.rdb.SAdd(ctx, ActiveKey, id).Err()
}

// Repeating lists the repeating rollouts.
func (s *Store) Repeating(ctx context.Context) ([]string, error) {
	return s.rdb.SMembers(ctx, RepeatingKey).Result()
}

// StopRepeating ends a rollout's repeats and reports whether it had any.
func (s *Store) StopRepeating(ctx context.Context, id string) (bool, error) {
	n, err := s.rdb.SRem(ctx, RepeatingKey, id).Result()
	return n > 0, err
}
