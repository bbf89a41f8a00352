package store

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Transition is the result of a CVM state change.
type Transition struct {
	RolloutState RolloutState // before the change
	From, To     CVMState     // CVM state before and after ("" From: no such record)
	Tripped      RolloutState // paused or cancelled when this change tripped the failure budget
	Attempts     int          // finished attempts of the CVM after the change
	Target       string       // the CVM's own target (JSON), if it has one
	// Start only: this call set patch_sent (NewlySent), or the try is out
	// of attempts and nothing was marked (OutOfAttempts).
	NewlySent, OutOfAttempts bool
}

// Changed reports whether the CVM's state changed.
func (t Transition) Changed() bool { return t.From != t.To }

// Mode is a kind of CVM move; see transitionScript.
type Mode string

const (
	ModeBegin   Mode = "begin"
	ModeStart   Mode = "start" // see Start
	ModeFinish  Mode = "finish"
	ModeTried   Mode = "tried" // a worker's try that never made Start
	ModePark    Mode = "park"  // the same, throttled: no attempt used
	ModeRequeue Mode = "requeue"
	ModeSnooze  Mode = "snooze"
	ModeReset   Mode = "reset"
	ModeCancel  Mode = "cancel"
)

// Move changes one CVM's state under mode's rules and sets fields on its record.
func (s *Store) Move(ctx context.Context, id, cvm string, to CVMState, mode Mode, now time.Time, fields ...string) (Transition, error) {
	return s.move(ctx, id, cvm, to, mode, now, nil, fields)
}

// Start begins a worker's try of a CVM just before its PATCH, in one step:
// the begin move (running, only while the rollout runs; a cancelled
// rollout's CVM turns cancelled) and, unless the CVM's attempts are used
// up (OutOfAttempts, counting a try that died mid-way), what MarkPatching
// records: the before-image the first time only, and patch_sent.
func (s *Store) Start(ctx context.Context, id, cvm string, now time.Time, maxAttempts int, prevKMS, prevGW []string, fields ...string) (Transition, error) {
	return s.move(ctx, id, cvm, Running, ModeStart, now, []any{maxAttempts, jsonList(prevKMS), jsonList(prevGW)}, fields)
}

func (s *Store) move(ctx context.Context, id, cvm string, to CVMState, mode Mode, now time.Time, extra []any, fields []string) (Transition, error) {
	args := make([]any, 0, 3+len(extra)+len(fields))
	args = append(args, string(to), string(mode), now.UTC().Format(time.RFC3339Nano))
	args = append(args, extra...)
	for _, f := range fields {
		args = append(args, f)
	}
	res, err := transitionScript.Run(ctx, s.rdb, []string{RolloutKey(id), CVMKey(id, cvm), FailuresKey(id), EventsKey(id)}, args...).StringSlice()
	if err != nil {
		return Transition{}, err
	}
	t := Transition{RolloutState: RolloutState(res[0]), From: CVMState(res[1]), To: CVMState(res[2]), Tripped: RolloutState(res[3])}
	if len(res) > 5 {
		t.Attempts, _ = strconv.Atoi(res[4])
		t.Target = res[5]
	}
	if len(res) > 7 {
		t.NewlySent, t.OutOfAttempts = res[6] == "1", res[7] == "1"
	}
	return t, nil
}

// TryInfo is what a worker's try reads of a CVM when it did not make
// Start: its own target (JSON, "" for the rollout's) and its attempts,
// counting a try that left it running and died, as the moves will.
func (s *Store) TryInfo(ctx context.Context, id, cvm string) (target string, attempts int, err error) {
	v, err := s.rdb.HMGet(ctx, CVMKey(id, cvm), "target", "attempts", "state").Result()
	if err != nil {
		return "", 0, err
	}
	target, _ = v[0].(string)
	a, _ := v[1].(string)
	attempts = atoi(a)
	if st, _ := v[2].(string); CVMState(st) == Running {
		attempts++
	}
	return target, attempts, nil
}

// State is a rollout's state alone ("" when there is no such rollout).
func (s *Store) State(ctx context.Context, id string) (RolloutState, error) {
	v, err := s.rdb.HGet(ctx, RolloutKey(id), "state").Result()
	if err == redis.Nil {
		return "", nil
	}
	return RolloutState(v), err
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
	return CVMRecord{CVMID: id, Name: m["name"], State: CVMState(m["state"]), Reason: m["reason"], Worker: m["worker"], Patched: m["patched"] == "1", PatchSent: m["patch_sent"] == "1",
		Stage: atoi(m["stage"]), Attempts: atoi(m["attempts"]), Gen: atoi(m["gen"]), HTTPStatus: atoi(m["http_status"]),
		PrevKMS: parseList(m["prev_kms"]), PrevGW: parseList(m["prev_gw"]),
		AppliedKMS: parseList(m["applied_kms"]), AppliedGW: parseList(m["applied_gw"]),
		StartedAt: parseTime(m["started_at"]), FinishedAt: parseTime(m["finished_at"])}
}

// PendingByGen keeps the ids whose record is still pending, by task
// generation (what Dispatch queues and a cancel marks).
func (s *Store) PendingByGen(ctx context.Context, id string, ids []string) (map[int][]string, error) {
	out := map[int][]string{}
	for start := 0; start < len(ids); start += 1000 {
		part := ids[start:min(start+1000, len(ids))]
		pipe := s.rdb.Pipeline()
		cmds := make([]*redis.SliceCmd, len(part))
		for i, cvm := range part {
			cmds[i] = pipe.HMGet(ctx, CVMKey(id, cvm), "state", "gen")
		}
		if _, err := pipe.Exec(ctx); err != nil && err != redis.Nil {
			return nil, err
		}
		for i, cmd := range cmds {
			v := cmd.Val()
			if st, _ := v[0].(string); CVMState(st) == Pending {
				g, _ := v[1].(string)
				out[atoi(g)] = append(out[atoi(g)], part[i])
			}
		}
	}
	return out, nil
}

// MarkPatching is called just before a PATCH. Unless the rollout is no
// longer running (then it changes nothing and returns the state), it
// records that a PATCH was sent, and the CVM's before-image the first time
// only: a retry after a PATCH that landed must not take the new URLs for
// the old ones.
func (s *Store) MarkPatching(ctx context.Context, id, cvm string, prevKMS, prevGW []string) (rolloutState RolloutState, newlySent bool, err error) {
	res, err := prepatchScript.Run(ctx, s.rdb, []string{RolloutKey(id), CVMKey(id, cvm)}, jsonList(prevKMS), jsonList(prevGW)).Slice()
	if err != nil {
		return "", false, err
	}
	st, _ := res[0].(string)
	n, _ := res[1].(int64)
	return RolloutState(st), n == 1, nil
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

// FailedIDs lists a rollout's failed CVMs.
func (s *Store) FailedIDs(ctx context.Context, id string) ([]string, error) {
	var ids []string
	err := s.Records(ctx, id, func(r CVMRecord) error {
		if r.State == Failed {
			ids = append(ids, r.CVMID)
		}
		return nil
	})
	return ids, err
}
