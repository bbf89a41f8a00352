package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// The rollout state machine (docs/state_machine.md draws it). Each
// operation below is one run of moveScript: it checks the state it starts
// from (and its other conditions), then writes the state, the reason, its
// fields, the family's going set and the audit line together, or nothing.
// A refusal is a *NotAllowedError (or *BusyError) saying why; the state
// found comes back either way.
//
// The fleet-wide sets (active, repeating) are in another slot and are
// kept as supersets: an operation that may need driving adds to them
// before its move, one that ends removes after it, and the controller
// settles an entry a crash left behind (Settle, StopRepeats).

// move is moveScript's argument.
type move struct {
	op        string
	ID        string                        `json:"id"`
	Root      string                        `json:"root"`
	From      []RolloutState                `json:"from"`
	To        RolloutState                  `json:"to,omitempty"`
	ToIf      map[RolloutState]RolloutState `json:"to_if,omitempty"` // per state found; overrides To
	Reason    *string                       `json:"reason,omitempty"`
	Set       map[string]string             `json:"set,omitempty"`
	SetNX     map[string]string             `json:"setnx,omitempty"`
	Require   map[string]string             `json:"require,omitempty"` // field == value
	Unless    map[string]string             `json:"unless,omitempty"`  // field != value
	Zero      []string                      `json:"zero,omitempty"`    // counters that must be 0
	NonZero   []string                      `json:"nonzero,omitempty"`
	Exclusive bool                          `json:"exclusive,omitempty"` // no other family member going
	Going     string                        `json:"going,omitempty"`     // add | rem
	Incr      string                        `json:"incr,omitempty"`      // a counter to bump, returned
	Reset     []string                      `json:"reset,omitempty"`     // failed CVMs to reset under the bumped generation
	Event     *Event                        `json:"event,omitempty"`
	Notify    *notice                       `json:"notify,omitempty"` // the notification event the move is (outbox.go)
	Now       string                        `json:"now"`
}

func str(s string) *string { return &s }

// run applies m to rollout id at now, with the audit line by: what (none
// if what is ""). It returns the state found and the incremented value.
func (s *Store) run(ctx context.Context, id string, now time.Time, by, what string, m move) (RolloutState, []int64, error) {
	m.ID, m.Root, m.Now = id, Family(id), now.UTC().Format(time.RFC3339Nano)
	if what != "" {
		m.Event = &Event{At: now.UTC().Truncate(time.Second), By: by, What: what}
	}
	arg, err := json.Marshal(m)
	if err != nil {
		return "", nil, err
	}
	res, err := moveScript.Run(ctx, s.rdb, []string{RolloutKey(id), EventsKey(id), GoingKey(id)}, arg).Slice()
	if err != nil {
		return "", nil, err
	}
	cur, _ := res[0].(string)
	verdict, _ := res[1].(string)
	var nums []int64
	for _, v := range res[2:] {
		n, _ := v.(int64)
		nums = append(nums, n)
	}
	state := RolloutState(cur)
	switch {
	case verdict == "ok":
		return state, nums, nil
	case verdict == "missing":
		return "", nil, notFound(id)
	case verdict == "state":
		return state, nil, &NotAllowedError{Op: m.op, ID: id, State: state}
	case strings.HasPrefix(verdict, "busy:"):
		return state, nil, &BusyError{Op: m.op, ID: id, Other: strings.TrimPrefix(verdict, "busy:")}
	}
	return state, nil, &NotAllowedError{Op: m.op, ID: id, State: state, Why: refusal(m.op, verdict)}
}

// refusal words a failed condition of an operation for the operator.
func refusal(op, verdict string) string {
	switch {
	case op == "promote" && strings.HasPrefix(verdict, "zero:"):
		return "its current stage still has CVMs to do; promote it once it is done (status says when it waits)"
	case op == "promote":
		return "the stage moved on meanwhile (or was promoted already)"
	case op == "promote-full" && verdict == "unless:full":
		return "promote --full was given already: its remaining manual gates are passed"
	case op == "promote-full":
		return "the stage moved on meanwhile; run it again"
	case op == "retry" && verdict == "nonzero:n:failed":
		return "it has no failed CVMs"
	case verdict == "unless:ended":
		return "schedule.end_at was applied already"
	case verdict == "require:repeat":
		return "it does not repeat"
	}
	return "not allowed now (" + verdict + ")"
}

// operatorWords are an operator's move's reason (the operator's own, or
// "<done> by <who>") and its audit line.
func operatorWords(op, done, by, reason string) (why, what string) {
	why, what = reason, op+" {move}"
	if reason == "" {
		return done + " by " + by, what
	}
	return why, what + ": " + reason
}

// Pause stops a running or scheduled rollout from starting CVMs.
func (s *Store) Pause(ctx context.Context, id, by, reason string, now time.Time) (RolloutState, error) {
	why, what := operatorWords("pause", "paused", by, reason)
	m := mv("pause")
	m.Reason, m.Notify = str(why), &notice{Kind: "paused", Cause: "operator"}
	return s.state(ctx, id, now, by, what, m)
}

// Resume continues a paused rollout, unless another member of its family
// is going. maxFailed >= 0 raises the failure budget to that many failures
// in the same step (and only if the resume goes ahead).
func (s *Store) Resume(ctx context.Context, id, by string, maxFailed int, now time.Time) (RolloutState, error) {
	m := mv("resume")
	m.Reason, m.Exclusive, m.Going = str(""), true, "add"
	m.Notify = &notice{Kind: "resumed", Cause: "operator"}
	what := "resume {move}"
	if maxFailed >= 0 {
		m.Set = map[string]string{"budget_max_failed": strconv.Itoa(maxFailed)}
		what += fmt.Sprintf(", failure budget raised to max_failed %d", maxFailed)
	}
	if err := s.activate(ctx, id); err != nil {
		return "", err
	}
	return s.state(ctx, id, now, by, what, m)
}

// Cancel ends a rollout that has not finished; CVMs not started become
// cancelled (the controller marks them). It also stops the rollout's
// repeats, and for a completed repeating rollout that is all it does:
// stopped says whether repeats were stopped.
func (s *Store) Cancel(ctx context.Context, id, by, reason string, now time.Time) (before RolloutState, stopped bool, err error) {
	why, what := operatorWords("cancel", "cancelled", by, reason)
	m := mv("cancel")
	m.Reason, m.Set = str(why), map[string]string{"repeat": "0"}
	m.Notify = &notice{Kind: "cancelled", Cause: "operator"}
	before, err = s.state(ctx, id, now, by, what, m)
	if ne := (*NotAllowedError)(nil); errors.As(err, &ne) && ne.State == RolloutCompleted {
		// Completed: stopping its repeats is all a cancel does, if it has any.
		if stopped, serr := s.StopRepeats(ctx, id, by, "repeats stopped by cancel", now); serr != nil || stopped {
			return before, stopped, serr
		}
		return before, false, err
	}
	if err != nil {
		return before, false, err
	}
	n, err := s.rdb.SRem(ctx, RepeatingKey, id).Result() // the set is a superset of what repeats
	return before, n > 0, err
}

// StopRepeats ends a rollout's schedule.repeat (a cancel of its completed
// root, a rollback, end_at). It reports whether it was repeating.
func (s *Store) StopRepeats(ctx context.Context, id, by, what string, now time.Time) (bool, error) {
	m := mv("stop repeats")
	m.Require, m.Set = map[string]string{"repeat": "1"}, map[string]string{"repeat": "0"}
	_, err := s.state(ctx, id, now, by, what, m)
	was := err == nil
	var ne *NotAllowedError
	if errors.As(err, &ne) {
		err = nil // it was not repeating
	}
	if err != nil {
		return false, err
	}
	return was, s.rdb.SRem(ctx, RepeatingKey, id).Err()
}

// Open lets a scheduled rollout run (its schedule allows it now).
func (s *Store) Open(ctx context.Context, id string, now time.Time) error {
	m := mv("open")
	m.Reason = str("")
	_, err := s.state(ctx, id, now, "controller", "started dispatching (schedule allows it)", m)
	return err
}

// Close stops dispatching a running rollout until its schedule opens.
func (s *Store) Close(ctx context.Context, id, why string, now time.Time) error {
	m := mv("close")
	m.Reason = str(why)
	_, err := s.state(ctx, id, now, "controller", "stopped dispatching: "+why, m)
	return err
}

// End applies schedule.end_at, once: to is cancelled or paused. An
// operator who resumes after it means it.
func (s *Store) End(ctx context.Context, id string, to RolloutState, why string, now time.Time) error {
	op := "end-cancel"
	if to == RolloutPaused {
		op = "end-pause"
	}
	m := mv(op)
	m.Reason, m.Unless, m.Set = str(why), map[string]string{"ended": "1"}, map[string]string{"ended": "1", "repeat": "0"}
	m.Notify = &notice{Kind: string(to), Cause: "end_at"}
	_, err := s.state(ctx, id, now, "controller", why, m)
	return err
}

// Complete finishes a running rollout with no CVM left to do. Settle
// then gives its claims back.
func (s *Store) Complete(ctx context.Context, id string, now time.Time) error {
	m := mv("complete")
	m.Reason, m.Zero, m.Going = str(""), []string{countField(Pending), countField(Running)}, "rem"
	m.Notify = &notice{Kind: "completed"}
	_, err := s.state(ctx, id, now, "controller", "completed", m)
	return err
}

// Promote lets stage (the current one, done) move on: past a manual gate,
// or before its bake has run out. Of two promotes at once, one is recorded.
func (s *Store) Promote(ctx context.Context, id string, stage int, by string, now time.Time) error {
	n := strconv.Itoa(stage)
	m := mv("promote")
	m.Require, m.Unless, m.Set = map[string]string{"stage": n}, map[string]string{"promoted": n}, map[string]string{"promoted": n}
	m.Zero = []string{stageCountField(stage, Pending), stageCountField(stage, Running)}
	_, err := s.state(ctx, id, now, by, fmt.Sprintf("stage %d promoted", stage+1), m)
	return err
}

// PromoteFull is promote --full: stage (the current one) and every later
// manual gate are passed, in one move, once: the current stage moves on
// when it is done (its bake, if any, cut short), and each later stage
// with promote: manual moves on when it is done. Later bakes still run
// (each is a wait the file asked for; promote ends one early).
func (s *Store) PromoteFull(ctx context.Context, id string, stage int, by string, now time.Time) error {
	n := strconv.Itoa(stage)
	m := mv("promote-full")
	m.Require, m.Unless, m.Set = map[string]string{"stage": n}, map[string]string{"full": "1"}, map[string]string{"promoted": n, "full": "1"}
	_, err := s.state(ctx, id, now, by, fmt.Sprintf("promote --full: stage %d and every later manual gate promoted", stage+1), m)
	return err
}

// Advance starts the stage after from (the current one, done and past its
// gate).
func (s *Store) Advance(ctx context.Context, id string, from int, name string, now time.Time) error {
	m := mv("advance")
	m.Require, m.Set, m.Reason = map[string]string{"stage": strconv.Itoa(from)}, map[string]string{"stage": strconv.Itoa(from + 1)}, str("")
	m.Notify = &notice{Kind: "stage_started"}
	_, err := s.state(ctx, id, now, "controller", fmt.Sprintf("stage %d (%s) started", from+2, name), m)
	return err
}

// Retry is retry's move (how: "--failed" or "--ids", for the audit line):
// unless the rollout is cancelled, has no
// failed CVM, or another member of its family is going, it bumps the task
// generation, resets the failed CVMs of cvms (those still failed) to
// pending under it, puts a completed rollout back to running (a paused or
// scheduled one keeps its state) and marks it going, in one step: a run
// or rollback starting at the same moment either sees it going or wins,
// and the controller never sees it running with nothing to do. The caller
// then queues the CVMs (and the controller does, if the caller dies:
// Requeue).
func (s *Store) Retry(ctx context.Context, id, by, how string, cvms []string, now time.Time) (gen, reset int, err error) {
	if err := s.activate(ctx, id); err != nil {
		return 0, 0, err
	}
	m := mv("retry")
	m.NonZero, m.Exclusive, m.Going, m.Incr, m.Reset = []string{countField(Failed)}, true, "add", "gen", cvms
	_, nums, err := s.run(ctx, id, now, by, fmt.Sprintf("retry %s: %d failed CVMs to queue again", how, len(cvms)), m)
	if err != nil {
		return 0, 0, err
	}
	return int(nums[0]), int(nums[1]), nil
}

// Requeued records that every CVM reset up to task generation gen was
// queued (see Rollout.Requeued).
func (s *Store) Requeued(ctx context.Context, id string, gen int) error {
	return s.rdb.HSet(ctx, RolloutKey(id), "requeued", gen).Err()
}

// Busy is the member of id's family, other than id, that is going, or "".
// A check for a clear early answer; the operations check again atomically.
func (s *Store) Busy(ctx context.Context, id string) (string, error) {
	return busyScript.Run(ctx, s.rdb, []string{GoingKey(id)}, Family(id), id).Text()
}

// SetReason notes why a rollout in state waits (a bake, a manual gate, a
// window), if it is still in that state. No audit line: it is not a move.
func (s *Store) SetReason(ctx context.Context, id string, state RolloutState, why string, now time.Time) error {
	m := mv("note")
	m.From, m.Reason = []RolloutState{state}, str(why)
	_, err := s.state(ctx, id, now, "", "", m)
	if _, ok := err.(*NotAllowedError); ok {
		return nil // it moved on meanwhile
	}
	return err
}

// StageDone records when the controller first saw stage done, and returns
// that time (the bake counts from it, whatever restarts).
func (s *Store) StageDone(ctx context.Context, id string, stage int, now time.Time) (time.Time, error) {
	// The first to record it also writes its stage_completed notification.
	v, err := stageDoneScript.Run(ctx, s.rdb, []string{RolloutKey(id)}, stage, now.UTC().Format(time.RFC3339Nano)).Text()
	return parseTime(v), err
}

// Dispatched records that stage's tasks were queued.
func (s *Store) Dispatched(ctx context.Context, id string, stage int) error {
	return s.rdb.HSet(ctx, RolloutKey(id), "dispatched", stage).Err()
}

// NoteCheck records a repeat's re-plan that found nothing to do.
func (s *Store) NoteCheck(ctx context.Context, id string, now time.Time, what string) error {
	return s.rdb.HSet(ctx, RolloutKey(id), "last_check_at", now.UTC().Format(time.RFC3339Nano), "last_check", what).Err()
}

// state is run for operations whose caller needs only the state found.
func (s *Store) state(ctx context.Context, id string, now time.Time, by, what string, m move) (RolloutState, error) {
	st, _, err := s.run(ctx, id, now, by, what, m)
	return st, err
}

// activate puts id in the active set under a fresh token, before a move
// that may need driving (see ActiveKey).
func (s *Store) activate(ctx context.Context, id string) error {
	return s.rdb.HSet(ctx, ActiveKey, id, newToken()).Err()
}

// Settle takes a rollout out of the controller's hands once it needs no
// more driving (completed, or cancelled with no CVM left in flight), or
// once it is known never to be recorded (an apply that died before ready,
// its creation lease gone): its CVM claims go back and it leaves the
// active set, in one script, and only if nothing activated it since Settle
// read its activation token before judging its state (a retry, resume or
// re-apply at that moment keeps it, and its claims, in). Otherwise, or if
// it is not finished, it does nothing and reports false.
func (s *Store) Settle(ctx context.Context, id string) (bool, error) {
	token, err := s.rdb.HGet(ctx, ActiveKey, id).Result()
	if err == redis.Nil {
		return true, nil // settled already
	} else if err != nil {
		return false, err
	}
	r, err := s.Get(ctx, id)
	var ids []string
	switch {
	case err == nil:
		if !(r.State == RolloutCompleted || r.State == RolloutCancelled && r.Counts[Pending]+r.Counts[Running] == 0) {
			return false, nil
		}
		if r.Notify != "" {
			// Its notifications stay found once it leaves the active set.
			if err := s.rdb.SAdd(ctx, OutboxFamiliesKey, r.Family).Err(); err != nil {
				return false, err
			}
		}
		if ids, err = s.CVMIDs(ctx, id); err != nil {
			return false, err
		}
	case errors.Is(err, ErrNotFound):
		if held, err := s.Creating(ctx, id); err != nil || held {
			return false, err
		}
		// Its claims are stale once it is out of the set; the owners
		// hash forgets them when a claim of another rollout lands.
	default:
		return false, err
	}
	return s.release(ctx, id, token, ids, true)
}
