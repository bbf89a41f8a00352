package store

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"
)

// Pruning a finished rollout (control.Prune decides which). The steps are
// each idempotent and in an order a kill can stop anywhere: MarkPruning
// (the record says what is going: "records", or "all" with the audit
// trail and the summary), DropRecords (per-CVM records in batches, the
// CVM list last, as it is how the batches are found), then MarkPruned, or
// for "all" DropAll. A rollout found marked is pruned again to the end
// by the next run, whatever its age.

// Prune modes.
const (
	PruneRecords = "records" // per-CVM records and tasks; the summary and audit trail stay
	PruneAll     = "all"     // everything
)

// MarkPruning records that rollout id is being pruned (mode), unless it
// is marked already (a re-run keeps the first mode, and all wins).
func (s *Store) MarkPruning(ctx context.Context, id, mode string) error {
	key := RolloutKey(id)
	if mode == PruneAll {
		return s.rdb.HSet(ctx, key, "pruning", PruneAll).Err()
	}
	return s.rdb.HSetNX(ctx, key, "pruning", mode).Err()
}

// DropRecords deletes the per-CVM records of id (batches of chunk), then
// its CVM and stage lists and recent failures; each calls done with the
// CVM ids of a batch first (the caller deletes their tasks). It keeps the
// rollout's hash (the summary) and audit trail.
func (s *Store) DropRecords(ctx context.Context, id string, stages int, done func([]string) error) error {
	for start := int64(0); ; start += chunk {
		ids, err := s.rdb.LRange(ctx, OrderKey(id), start, start+chunk-1).Result()
		if err != nil {
			return err
		}
		if len(ids) == 0 {
			break
		}
		if err := done(ids); err != nil {
			return err
		}
		keys := make([]string, len(ids))
		for i, c := range ids {
			keys[i] = CVMKey(id, c)
		}
		if err := s.rdb.Del(ctx, keys...).Err(); err != nil {
			return err
		}
	}
	keys := []string{FailuresKey(id), OrderKey(id)} // the CVM list last
	for i := range stages {
		keys = append([]string{StageKey(id, i)}, keys...)
	}
	for _, k := range keys {
		if err := s.rdb.Del(ctx, k).Err(); err != nil {
			return err
		}
	}
	return nil
}

// DropNotifications deletes id's notifications that are no longer due
// (delivered or given up); due ones stay until they are.
func (s *Store) DropNotifications(ctx context.Context, id string) error {
	ns, err := s.Notifications(ctx, id)
	if err != nil {
		return err
	}
	var gone []string
	for _, n := range ns {
		if n.DeliveredAt != "" || n.FailedAt != "" {
			gone = append(gone, n.ID)
		}
	}
	if len(gone) == 0 {
		return nil
	}
	return s.rdb.HDel(ctx, OutboxKey(id), gone...).Err()
}

// MarkPruned ends a records prune: the summary says when.
func (s *Store) MarkPruned(ctx context.Context, id string, now time.Time) error {
	pipe := s.rdb.TxPipeline()
	pipe.HSet(ctx, RolloutKey(id), "pruned_at", now.UTC().Format(time.RFC3339Nano))
	pipe.HDel(ctx, RolloutKey(id), "pruning")
	pushEvent(ctx, pipe, id, now, "prune", "per-CVM records and tasks pruned (summary and audit trail kept)")
	return txErr(pipe.Exec(ctx))
}

// DropAll ends an all prune: the audit trail, the record, then the index
// entry (last: it is how a re-run finds the rollout).
func (s *Store) DropAll(ctx context.Context, id string) error {
	// A finished member left in the going set is dropped there lazily
	// (familyBusy); drop it now, with the rest.
	if err := s.rdb.SRem(ctx, GoingKey(id), id).Err(); err != nil {
		return err
	}
	for _, k := range []string{EventsKey(id), RolloutKey(id)} {
		if err := s.rdb.Del(ctx, k).Err(); err != nil {
			return err
		}
	}
	return s.rdb.ZRem(ctx, IndexKey, id).Err()
}

// Listed is every rollout id in the index, with its record if it has a
// ready one (nil: not recorded, or pruned with --all part-way).
func (s *Store) Listed(ctx context.Context) (map[string]*Rollout, error) {
	ids, err := s.rdb.ZRange(ctx, IndexKey, 0, -1).Result()
	if err != nil {
		return nil, err
	}
	out := make(map[string]*Rollout, len(ids))
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.HGetAll(ctx, RolloutKey(id))
	}
	if _, err := pipe.Exec(ctx); err != nil && err != redis.Nil {
		return nil, err
	}
	for i, id := range ids {
		out[id] = nil
		if m := cmds[i].Val(); m["ready"] == "1" {
			out[id] = parseRollout(m)
		}
	}
	return out, nil
}

// InActive says whether id is in the active set.
func (s *Store) InActive(ctx context.Context, id string) (bool, error) {
	return s.rdb.HExists(ctx, ActiveKey, id).Result()
}

// IsRepeating says whether id is in the repeating set.
func (s *Store) IsRepeating(ctx context.Context, id string) (bool, error) {
	return s.rdb.SIsMember(ctx, RepeatingKey, id).Result()
}
