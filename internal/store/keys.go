// Package store keeps rollout and per-CVM records in Redis. Every key this
// project writes is named in this file; a rollout's keys share the hash tag
// {id}, so on a Redis Cluster they live on one node and its Lua scripts stay
// slot-safe.
package store

import "strconv"

const prefix = "rollout:"

// RolloutKey is the rollout's hash: spec, state, reason and all counters.
func RolloutKey(id string) string { return prefix + "{" + id + "}" }

// CVMKey is one CVM's record in a rollout.
func CVMKey(id, cvm string) string { return prefix + "{" + id + "}:cvm:" + cvm }

// OrderKey lists every selected CVM id of a rollout in plan order.
func OrderKey(id string) string { return prefix + "{" + id + "}:cvms" }

// StageKey lists the CVM ids a stage will PATCH, in dispatch order.
func StageKey(id string, stage int) string {
	return prefix + "{" + id + "}:stage:" + strconv.Itoa(stage)
}

// EventsKey is the rollout's audit trail: a capped list of "RFC3339 who: what" lines.
func EventsKey(id string) string { return prefix + "{" + id + "}:events" }

// CreatingKey is held (a short lease) while one process records a rollout.
func CreatingKey(id string) string { return prefix + "{" + id + "}:creating" }

// FailuresKey holds the latest failures of a rollout (capped at 20).
func FailuresKey(id string) string { return prefix + "{" + id + "}:failures" }

// IndexKey is a sorted set of every rollout id by creation time.
const IndexKey = prefix + "index"

// ActiveKey is the set of rollouts that are not finished: what the
// controller drives.
const ActiveKey = prefix + "active"

// RepeatingKey is the set of rollouts with schedule.repeat still to run.
const RepeatingKey = prefix + "repeating"

// ControllerLockKey elects the one process that drives progression.
const ControllerLockKey = prefix + "controller-lock"

// Fields of the rollout hash that count CVMs: "n:<state>" for the whole
// rollout, "s:<stage>:<state>" for one stage.
func countField(state string) string { return "n:" + state }

func stageCountField(stage int, state string) string {
	return "s:" + strconv.Itoa(stage) + ":" + state
}
