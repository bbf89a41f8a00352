package store

import (
	"fmt"
	"strings"
)

// StateMove is one rollout state move as its operation makes it: the
// states it starts from and the state it leaves. This table is the one
// place the rollout state machine is written down in code: the operations
// of rollout.go take their from- and to-states from it (moveScript checks
// them atomically), and docs/state_machine.md shows it (TestStateMachineDoc
// keeps the two the same).
type StateMove struct {
	Op   string
	From []RolloutState
	To   RolloutState                  // "" keeps the state
	ToIf map[RolloutState]RolloutState // per state found; overrides To
	By   string                        // who makes the move
	Also string                        // what else the same step checks and writes
}

var (
	live    = []RolloutState{RolloutScheduled, RolloutRunning, RolloutPaused}
	anyward = []RolloutState{RolloutScheduled, RolloutRunning, RolloutPaused, RolloutCompleted, RolloutCancelled}
)

// Moves lists every rollout state move.
var Moves = []StateMove{
	{Op: "pause", From: []RolloutState{RolloutScheduled, RolloutRunning}, To: RolloutPaused, By: "`rollout pause`",
		Also: "reason (`--reason`, else \"paused by WHO\")"},
	{Op: "resume", From: []RolloutState{RolloutPaused}, To: RolloutRunning, By: "`rollout resume`",
		Also: "refused while another member of the family is going; `--max-failed N` sets the budget in the same step"},
	{Op: "cancel", From: live, To: RolloutCancelled, By: "`rollout cancel`", Also: "stops schedule.repeat (on a completed rollout, that is all it does)"},
	{Op: "open", From: []RolloutState{RolloutScheduled}, To: RolloutRunning, By: "controller", Also: "start_at passed and a window is open"},
	{Op: "close", From: []RolloutState{RolloutRunning}, To: RolloutScheduled, By: "controller", Also: "a window closed, or its cutoff"},
	{Op: "end-cancel", From: live, To: RolloutCancelled, By: "controller", Also: "end_at passed (end_action: cancel); once: sets `ended`"},
	{Op: "end-pause", From: live, To: RolloutPaused, By: "controller", Also: "end_at passed (end_action: pause); once: sets `ended`"},
	{Op: "complete", From: []RolloutState{RolloutRunning}, To: RolloutCompleted, By: "controller",
		Also: "no CVM pending or running; then Settle gives the CVM claims back"},
	{Op: "retry", From: []RolloutState{RolloutScheduled, RolloutRunning, RolloutPaused, RolloutCompleted},
		ToIf: map[RolloutState]RolloutState{RolloutCompleted: RolloutRunning}, By: "`rollout retry --failed`",
		Also: "at least one failed CVM; the family idle; resets the failed CVMs under a new task generation in the same step"},
	{Op: "promote", From: live, By: "`rollout promote`", Also: "the current stage done and not promoted yet: sets `promoted`"},
	{Op: "promote-full", From: live, By: "`rollout promote --full`",
		Also: "once (`full` 0 -> 1): sets `promoted` to the current stage (done or not) and `full`: every later manual gate is passed"},
	{Op: "advance", From: []RolloutState{RolloutRunning}, By: "controller", Also: "the current stage done, baked or promoted: `stage` + 1"},
	{Op: "stop repeats", From: anyward, By: "cancel, rollback, end_at", Also: "`repeat` 1 -> 0"},
	{Op: "note", From: anyward, By: "controller", Also: "the reason it waits (bake, manual gate, window), if still in the state it saw"},
	{Op: "budget-pause", From: []RolloutState{RolloutRunning}, To: RolloutPaused, By: "the worker recording a CVM",
		Also: "failure budget exceeded (action: pause); inside the CVM's own move (transitionScript)"},
	{Op: "budget-cancel", From: []RolloutState{RolloutRunning}, To: RolloutCancelled, By: "the worker recording a CVM",
		Also: "failure budget exceeded (action: cancel); inside the CVM's own move (transitionScript)"},
}

// mv starts the move of operation op from the table.
func mv(op string) move {
	for _, t := range Moves {
		if t.Op == op {
			return move{op: t.Op, From: t.From, To: t.To, ToIf: t.ToIf}
		}
	}
	panic("store: no transition " + op)
}

// MoveTable renders Moves as the Markdown table of
// docs/state_machine.md.
func MoveTable() string {
	var b strings.Builder
	b.WriteString("| operation | from | to | by | also, in the same step |\n|---|---|---|---|---|\n")
	for _, t := range Moves {
		from := make([]string, len(t.From))
		for i, f := range t.From {
			from[i] = string(f)
		}
		to := string(t.To)
		switch {
		case t.ToIf != nil:
			var parts []string
			for _, f := range t.From {
				if n, ok := t.ToIf[f]; ok {
					parts = append(parts, fmt.Sprintf("%s from %s", n, f))
				}
			}
			to = strings.Join(parts, ", ") + "; else unchanged"
		case to == "":
			to = "(unchanged)"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", t.Op, strings.Join(from, ", "), to, t.By, t.Also)
	}
	return b.String()
}
