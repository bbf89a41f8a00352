// Package store is the rollout state: every Redis key and every Lua script of
// the project's own records lives here, behind typed records and typed
// operations. A rollout's state moves only through the operations in
// rollout.go, each one script that checks the state it starts from and
// writes the new state, its fields, the set memberships and the audit line
// together.
//
// Key layout. A family (a rollout, its runs and its rollbacks) shares one
// hash tag, the family's root id, so every script over a family stays in one
// Redis Cluster slot: the root is rollout:{ROOT}, a member is
// rollout:{ROOT}@TAIL (TAIL is the id past "ROOT-", e.g. run2, rollback,
// run2-rollback2). Keys of every rollout (the index, the active and
// repeating sets, CVM ownership, the controller lock) share the tag {fleet},
// so scripts over them stay in one slot too; no script mixes the two.
package store

import (
	"strconv"
	"strings"
)

const prefix = "rollout:"

// Family is the root of id's family: id less a trailing "-rollback[N]"
// and then a trailing "-runN" (what runs and rollbacks add; base ids end in
// "-" and 8 hex digits, plan.Build, so the two never mix). claimScript's
// root() is the same rule in Lua. It runs for every key of every CVM, so
// it is plain string work, not a regexp.
func Family(id string) string {
	s := id
	if i := strings.LastIndex(s, "-rollback"); i > 0 && digits(s[i+len("-rollback"):]) {
		s = s[:i]
	}
	if i := strings.LastIndex(s, "-run"); i > 0 && len(s) > i+len("-run") && digits(s[i+len("-run"):]) {
		s = s[:i]
	}
	return s
}

func digits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// base is the common start of every key of rollout id.
func base(id string) string {
	root := Family(id)
	if root == id {
		return prefix + "{" + root + "}"
	}
	return prefix + "{" + root + "}@" + id[len(root)+1:]
}

// RolloutKey is the rollout's hash: spec, state, reason and all counters.
func RolloutKey(id string) string { return base(id) }

// CVMKey is one CVM's record in a rollout.
func CVMKey(id, cvm string) string { return base(id) + ":cvm:" + cvm }

// OrderKey lists every selected CVM id of a rollout in plan order.
func OrderKey(id string) string { return base(id) + ":cvms" }

// StageKey lists the CVM ids a stage will PATCH, in dispatch order.
func StageKey(id string, stage int) string { return base(id) + ":stage:" + strconv.Itoa(stage) }

// EventsKey is the rollout's audit trail: a capped list of JSON events.
func EventsKey(id string) string { return base(id) + ":events" }

// CreatingKey is held (a short lease) while one process records a rollout
// (or has reserved it as the next run).
func CreatingKey(id string) string { return base(id) + ":creating" }

// FailuresKey holds the latest failures of a rollout (capped at 20).
func FailuresKey(id string) string { return base(id) + ":failures" }

// GoingKey is the family's set of members that may still work CVMs (see
// familyBusyLua): a family works at most one member at a time.
func GoingKey(id string) string { return prefix + "{" + Family(id) + "}:going" }

const fleet = prefix + "{fleet}:"

// IndexKey is a sorted set of every rollout id by creation time.
const IndexKey = fleet + "index"

// ActiveKey is a hash of the rollouts that are not finished, or that hold
// CVM claims: what the controller drives, and what makes a claim valid. Each
// maps to the token of its latest activation, so Settle takes a rollout
// out only if nothing activated it again since it looked (releaseClaimsScript).
const ActiveKey = fleet + "active"

// RepeatingKey is the set of rollouts with schedule.repeat still to run.
const RepeatingKey = fleet + "repeating"

// ControllerLockKey elects the one process that drives progression.
const ControllerLockKey = fleet + "controller-lock"

// OwnersKey maps a CVM id to the rollout that claimed it. A claim counts
// only while its rollout is in ActiveKey, so a rollout that ended (or an
// apply that died) holds nothing, whether or not its release ran.
const OwnersKey = fleet + "owners"

// Fields of the rollout hash that count CVMs: "n:<state>" for the whole
// rollout, "s:<stage>:<state>" for one stage.
func countField(state CVMState) string { return "n:" + string(state) }

func stageField(stage int, name string) string { return "s:" + strconv.Itoa(stage) + ":" + name }

func stageCountField(stage int, state CVMState) string { return stageField(stage, string(state)) }
