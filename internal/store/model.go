package store

import "time"

// CVM states in a rollout (product.md). pending and running are the only
// non-terminal ones.
const (
	Pending   = "pending"
	Running   = "running"
	Succeeded = "succeeded"
	Unchanged = "unchanged"
	Skipped   = "skipped"
	Failed    = "failed"
	Cancelled = "cancelled"
)

// CVMStates lists every CVM state in display order.
var CVMStates = []string{Pending, Running, Succeeded, Unchanged, Skipped, Failed, Cancelled}

// Terminal reports whether a CVM state is final.
func Terminal(state string) bool {
	return state != Pending && state != Running && state != ""
}

// Rollout states.
const (
	RolloutScheduled = "scheduled"
	RolloutRunning   = "running"
	RolloutPaused    = "paused"
	RolloutCompleted = "completed"
	RolloutCancelled = "cancelled"
)

// Rollout is a rollout's record, without its per-CVM rows.
type Rollout struct {
	ID        string         `json:"id"`
	Name      string         `json:"name"`
	State     string         `json:"state"`
	Reason    string         `json:"reason,omitempty"`
	Spec      string         `json:"-"` // the rollout file as JSON
	SpecHash  string         `json:"spec_hash"`
	CreatedAt time.Time      `json:"created_at"`
	CreatedBy string         `json:"created_by"`
	UpdatedAt time.Time      `json:"updated_at"`
	Total     int            `json:"total"`
	Counts    map[string]int `json:"counts"`
	Stages    []Stage        `json:"stages"`
	Stage     int            `json:"current_stage"`
	// Fields the controller and later features keep; raw for forward use.
	Fields map[string]string `json:"-"`
}

// Stage is one wave of a rollout.
type Stage struct {
	Index  int            `json:"index"`
	Name   string         `json:"name"`
	Size   int            `json:"size"` // CVMs the stage will PATCH
	Counts map[string]int `json:"counts"`
}

// Done reports how many of the stage's CVMs reached a terminal state.
func (s Stage) Done() int {
	n := 0
	for st, c := range s.Counts {
		if Terminal(st) {
			n += c
		}
	}
	return n
}

// CVMRecord is one CVM's row in a rollout.
type CVMRecord struct {
	CVMID      string    `json:"cvm_id"`
	Name       string    `json:"name"`
	Stage      int       `json:"stage"`
	State      string    `json:"state"`
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
	Gen        int       `json:"-"`       // task generation (retry --failed)
}
