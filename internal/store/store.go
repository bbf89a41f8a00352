package store

import (
	"context"
	"encoding/json"
	"sort"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Store reads and writes rollout records.
type Store struct {
	rdb redis.UniversalClient
}

// New wraps a Redis client.
func New(rdb redis.UniversalClient) *Store { return &Store{rdb: rdb} }

// Redis returns the client, for what shares the connection but keeps keys
// of its own (the asynq queue and its inspector, the GCRA limiter).
func (s *Store) Redis() redis.UniversalClient { return s.rdb }

const chunk = 500

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

// JSONList encodes a URL list for a record field (nil stays "null").
func JSONList(l []string) string { return jsonList(l) }

// Get reads a rollout's record and counters (one HGETALL: its cost does not
// grow with the number of CVMs).
func (s *Store) Get(ctx context.Context, id string) (*Rollout, error) {
	m, err := s.rdb.HGetAll(ctx, RolloutKey(id)).Result()
	if err != nil {
		return nil, err
	}
	if len(m) == 0 || m["ready"] != "1" {
		return nil, notFound(id)
	}
	return parseRollout(m), nil
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

func atoiOr(s string, def int) int {
	if n, err := strconv.Atoi(s); err == nil {
		return n
	}
	return def
}

func parseTime(s string) time.Time {
	t, _ := time.Parse(time.RFC3339Nano, s)
	return t
}

func parseRollout(m map[string]string) *Rollout {
	r := &Rollout{ID: m["id"], Name: m["name"], State: RolloutState(m["state"]), Reason: m["reason"], Spec: m["spec"],
		SpecHash: m["spec_hash"], CreatedBy: m["created_by"], Counts: map[CVMState]int{},
		CreatedAt: parseTime(m["created_at"]), UpdatedAt: parseTime(m["updated_at"]),
		Total: atoi(m["total"]), Stage: atoi(m["stage"]),
		Family: m["family"], RunOf: m["run_of"], RollbackOf: m["rollback_of"],
		Ended: m["ended"] == "1", Dispatched: atoiOr(m["dispatched"], -1), Promoted: atoiOr(m["promoted"], -1), Full: m["full"] == "1",
		Runs: atoiOr(m["runs"], 1), LatestRun: m["latest_run"], Repeat: m["repeat"] == "1", LatestRollback: m["latest_rollback"],
		LastCheckAt: parseTime(m["last_check_at"]), LastCheck: m["last_check"],
		OwnTargets: m["own_targets"] == "1", Gen: atoi(m["gen"]), Requeued: atoi(m["requeued"]), Notify: m["notify"],
		Pruning: m["pruning"], PrunedAt: parseTime(m["pruned_at"])}
	if r.Family == "" {
		r.Family = Family(r.ID)
	}
	if v, ok := m["budget_max_failed"]; ok {
		r.Budget = &Budget{MaxFailed: atoi(v), MinExecuted: atoi(m["budget_min_executed"]), Action: RolloutState(m["budget_action"])}
		if r.Budget.Action == "" {
			r.Budget.Action = RolloutPaused
		}
	}
	for _, st := range CVMStates {
		r.Counts[st] = atoi(m[countField(st)])
	}
	for i := range atoi(m["stages"]) {
		stg := Stage{Index: i, Name: m[stageField(i, "name")], Size: atoi(m[stageField(i, "size")]), Counts: map[CVMState]int{},
			Manual: m[stageField(i, "promote")] == "manual", DoneAt: parseTime(m[stageField(i, "done_at")])}
		stg.Bake, _ = time.ParseDuration(m[stageField(i, "bake")])
		for _, st := range CVMStates {
			stg.Counts[st] = atoi(m[stageCountField(i, st)])
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
		if m := c.Val(); m["ready"] == "1" {
			out = append(out, parseRollout(m))
		}
	}
	return out, nil
}

// Active lists the rollouts the controller drives: every one not
// finished, and any that still holds claims (a superset: the controller
// settles the rest, see Settle).
func (s *Store) Active(ctx context.Context) ([]string, error) {
	ids, err := s.rdb.HKeys(ctx, ActiveKey).Result()
	sort.Strings(ids)
	return ids, err
}

// Creating says whether a process holds the creation lease of rollout id
// (it is being recorded, or reserved as a run, right now).
func (s *Store) Creating(ctx context.Context, id string) (bool, error) {
	n, err := s.rdb.Exists(ctx, CreatingKey(id)).Result()
	return n > 0, err
}

// Repeating lists the rollouts whose schedule.repeat may still start runs
// (a superset: RepeatStopped settles the rest).
func (s *Store) Repeating(ctx context.Context) ([]string, error) {
	return s.rdb.SMembers(ctx, RepeatingKey).Result()
}

// StageMembers returns the CVM ids of a stage.
func (s *Store) StageMembers(ctx context.Context, id string, stage int) ([]string, error) {
	return s.rdb.LRange(ctx, StageKey(id, stage), 0, -1).Result()
}

// CVMIDs returns every CVM id of a rollout, in plan order.
func (s *Store) CVMIDs(ctx context.Context, id string) ([]string, error) {
	return s.rdb.LRange(ctx, OrderKey(id), 0, -1).Result()
}

// Spec returns a rollout's stored file (JSON) and when it was recorded,
// in one read, for a worker's cache.
func (s *Store) Spec(ctx context.Context, id string) (spec string, created time.Time, err error) {
	spec, created, _, err = s.TaskSpec(ctx, id)
	return spec, created, err
}

// TaskSpec is Spec with whether the rollout's CVMs carry targets of their
// own (a rollback's before-images), which never changes after creation.
func (s *Store) TaskSpec(ctx context.Context, id string) (spec string, created time.Time, ownTargets bool, err error) {
	vals, err := s.rdb.HMGet(ctx, RolloutKey(id), "spec", "created_at", "own_targets").Result()
	if err != nil {
		return "", time.Time{}, false, err
	}
	raw, _ := vals[0].(string)
	at, _ := vals[1].(string)
	own, _ := vals[2].(string)
	if raw == "" {
		return "", time.Time{}, false, notFound(id)
	}
	return raw, parseTime(at), own == "1", nil
}
