package store

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// CVMState is a CVM's state in a rollout (product.md). pending and running
// are the only non-terminal ones.
type CVMState string

const (
	Pending   CVMState = "pending"
	Running   CVMState = "running"
	Succeeded CVMState = "succeeded"
	Unchanged CVMState = "unchanged"
	Skipped   CVMState = "skipped"
	Failed    CVMState = "failed"
	Cancelled CVMState = "cancelled"
)

// CVMStates lists every CVM state in display order.
var CVMStates = []CVMState{Pending, Running, Succeeded, Unchanged, Skipped, Failed, Cancelled}

// Terminal reports whether a CVM state is final.
func (s CVMState) Terminal() bool { return s != Pending && s != Running && s != "" }

// RolloutState is a rollout's state (docs/state_machine.md).
type RolloutState string

const (
	RolloutScheduled RolloutState = "scheduled"
	RolloutRunning   RolloutState = "running"
	RolloutPaused    RolloutState = "paused"
	RolloutCompleted RolloutState = "completed"
	RolloutCancelled RolloutState = "cancelled"
)

// Finished reports whether a rollout state is final (completed may still be
// retried back to running; cancelled never moves again).
func (s RolloutState) Finished() bool { return s == RolloutCompleted || s == RolloutCancelled }

// Budget is a rollout's failure budget: more than MaxFailed failures once
// at least MinExecuted CVMs were executed moves the rollout to Action.
type Budget struct {
	MaxFailed   int          `json:"max_failed"`
	MinExecuted int          `json:"min_executed"`
	Action      RolloutState `json:"action"` // paused or cancelled
}

// BudgetReason starts the reason a tripped failure budget writes on the
// rollout (transitionScript in scripts.go writes the text).
const BudgetReason = "failure budget exceeded"

// BudgetTripped reports whether the failure budget stopped the rollout:
// it is paused or cancelled, and the budget said so.
func (r *Rollout) BudgetTripped() bool {
	return (r.State == RolloutPaused || r.State == RolloutCancelled) && strings.HasPrefix(r.Reason, BudgetReason)
}

// BudgetLeft is how many more failures the budget allows before it trips
// (0 once it has); ok is false without a budget.
func (r *Rollout) BudgetLeft() (left int, ok bool) {
	if r.Budget == nil {
		return 0, false
	}
	return max(0, r.Budget.MaxFailed-r.Counts[Failed]), true
}

// Rollout is a rollout's record, without its per-CVM rows.
type Rollout struct {
	ID         string           `json:"id"`
	Name       string           `json:"name"`
	State      RolloutState     `json:"state"`
	Reason     string           `json:"reason,omitempty"`
	Spec       string           `json:"-"` // the rollout file as JSON
	SpecHash   string           `json:"spec_hash"`
	CreatedAt  time.Time        `json:"created_at"`
	CreatedBy  string           `json:"created_by"`
	UpdatedAt  time.Time        `json:"updated_at"`
	Total      int              `json:"total"`
	Counts     map[CVMState]int `json:"counts"`
	Stages     []Stage          `json:"stages"`
	Stage      int              `json:"current_stage"`
	Family     string           `json:"family,omitempty"` // the root: the rollout the file names
	RunOf      string           `json:"run_of,omitempty"`
	RollbackOf string           `json:"rollback_of,omitempty"`
	Budget     *Budget          `json:"budget,omitempty"`
	// Controller and operator bookkeeping.
	Ended          bool      `json:"-"`                      // schedule.end_at was applied (once)
	Dispatched     int       `json:"-"`                      // the last stage whose tasks were queued; -1 none
	Promoted       int       `json:"-"`                      // the last stage promoted; -1 none
	Full           bool      `json:"promote_full,omitempty"` // promote --full: every manual gate from Promoted on is passed
	Runs           int       `json:"runs,omitempty"`         // on a root: the latest run number reserved (1: the root itself)
	LatestRun      string    `json:"latest_run,omitempty"`
	Repeat         bool      `json:"repeat,omitempty"`          // schedule.repeat still starts runs of it
	LatestRollback string    `json:"latest_rollback,omitempty"` // the newest rollback recorded of this rollout
	LastCheckAt    time.Time `json:"last_check_at,omitzero"`
	LastCheck      string    `json:"last_check,omitempty"`
	OwnTargets     bool      `json:"-"` // each CVM has its own target (a rollback)
	Gen            int       `json:"-"` // the latest task generation (retry --failed)
	Requeued       int       `json:"-"` // the generation up to which reset CVMs were queued
	// Notify holds the notification targets (JSON; their URLs may carry
	// tokens, so never shown whole).
	Notify string `json:"-"`
	// Retention: a prune under way (its mode), or when it pruned.
	Pruning  string    `json:"pruning,omitempty"`
	PrunedAt time.Time `json:"pruned_at,omitzero"`
}

// Stage is one wave of a rollout.
type Stage struct {
	Index  int              `json:"index"`
	Name   string           `json:"name"`
	Size   int              `json:"size"` // CVMs the stage will PATCH
	Counts map[CVMState]int `json:"counts"`
	Bake   time.Duration    `json:"-"`
	Manual bool             `json:"-"` // promote: manual
	DoneAt time.Time        `json:"-"` // when the controller first saw it done
}

// Done reports how many of the stage's CVMs reached a terminal state.
func (s Stage) Done() int { return DoneOf(s.Counts) }

// DoneOf is how many CVMs of counts reached a terminal state.
func DoneOf(counts map[CVMState]int) int {
	n := 0
	for st, c := range counts {
		if st.Terminal() {
			n += c
		}
	}
	return n
}

// Left is how many of the stage's CVMs are still to do.
func (s Stage) Left() int { return s.Counts[Pending] + s.Counts[Running] }

// CVMRecord is one CVM's row in a rollout.
type CVMRecord struct {
	CVMID      string    `json:"cvm_id"`
	Name       string    `json:"name"`
	Stage      int       `json:"stage"`
	State      CVMState  `json:"state"`
	Reason     string    `json:"reason,omitempty"`
	Attempts   int       `json:"attempts"`
	PrevKMS    []string  `json:"previous_kms_urls"`
	PrevGW     []string  `json:"previous_gateway_urls"`
	AppliedKMS []string  `json:"applied_kms_urls"`
	AppliedGW  []string  `json:"applied_gateway_urls"`
	HTTPStatus int       `json:"http_status,omitempty"`
	StartedAt  time.Time `json:"started_at,omitzero"`
	FinishedAt time.Time `json:"finished_at,omitzero"`
	Worker     string    `json:"worker,omitempty"`
	Patched    bool      `json:"patched"` // a PATCH was answered 200 at least once
	PatchSent  bool      `json:"-"`       // a PATCH went out (its answer may be lost)
	Gen        int       `json:"-"`       // task generation (retry --failed)
}

// ErrNotFound is returned for a rollout id Redis does not hold.
var ErrNotFound = errors.New("rollout not found")

func notFound(id string) error {
	return fmt.Errorf("%w: %s (rollout list shows the rollouts)", ErrNotFound, id)
}

// ErrNotAllowed is what every refused operation wraps: the rollout's state
// (or its family) does not allow it now.
var ErrNotAllowed = errors.New("not allowed")

// NotAllowedError says why an operation was refused.
type NotAllowedError struct {
	Op    string       // pause, resume, ...
	ID    string       // the rollout
	State RolloutState // its state when refused
	Why   string       // what stood in the way
}

func (e *NotAllowedError) Error() string {
	if e.Why != "" {
		return fmt.Sprintf("%s: rollout %s: %s", e.Op, e.ID, e.Why)
	}
	return fmt.Sprintf("%s: rollout %s is %s", e.Op, e.ID, e.State)
}

func (e *NotAllowedError) Unwrap() error { return ErrNotAllowed }

// BusyError: another member of the rollout's family is still going, and
// works the same CVMs.
type BusyError struct {
	Op, ID, Other string
}

func (e *BusyError) Error() string {
	return fmt.Sprintf("%s: %s is still going, and works the same CVMs as %s; wait for it to end (or pause, then cancel it)", e.Op, e.Other, e.ID)
}

func (e *BusyError) Unwrap() error { return ErrNotAllowed }

// OverlapError: CVMs of a new rollout belong to another active rollout.
type OverlapError struct {
	ID      string
	Owners  map[string]int // other rollout -> CVMs of ours it holds
	Overlap int
}

func (e *OverlapError) Error() string {
	first, n := "", 0
	for o, c := range e.Owners {
		if c > n || c == n && o < first {
			first, n = o, c
		}
	}
	more := ""
	if len(e.Owners) > 1 {
		more = fmt.Sprintf(" (and %d other rollouts)", len(e.Owners)-1)
	}
	return fmt.Sprintf("%d selected CVMs are in active rollout %s%s: a CVM belongs to one active rollout at a time; wait for it to end, cancel it, or apply with --allow-overlap to skip those CVMs",
		e.Overlap, first, more)
}

func (e *OverlapError) Unwrap() error { return ErrNotAllowed }
