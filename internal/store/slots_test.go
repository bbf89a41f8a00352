package store

import (
	"strings"
	"testing"
)

// tag is the part of a key Redis Cluster hashes: the first {...} with
// something in it, else the whole key.
func tag(key string) string {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			return key[i+1 : i+1+j]
		}
	}
	return key
}

// TestKeysShareTheirSlot: every key of a family member (the rollout, its
// runs and rollbacks), limiter keys and redis_rate's prefixed GCRA key
// included, hashes on the family's root, and every fleet-wide key on
// "fleet": the scripts that take them together stay in one Cluster slot
// (docs/redis.md).
func TestKeysShareTheirSlot(t *testing.T) {
	root := "kms-migration-0a1b2c3d"
	for _, id := range []string{root, RunID(root, 2), RollbackID(root, 1), RollbackID(RunID(root, 3), 2)} {
		for _, k := range []string{RolloutKey(id), CVMKey(id, "cvm_x"), OrderKey(id), StageKey(id, 1), EventsKey(id), CreatingKey(id),
			FailuresKey(id), GoingKey(id), "rate:" + GCRAKey(id), PaceKey(id), SlotHoldersKey(id), SlotWakeKey(id), SlotOrphansKey(id)} {
			if tag(k) != root {
				t.Errorf("%s (of %s) hashes on %q, not the family's root %q", k, id, tag(k), root)
			}
		}
	}
	for _, k := range []string{IndexKey, ActiveKey, RepeatingKey, ControllerLockKey, OwnersKey} {
		if tag(k) != "fleet" {
			t.Errorf("%s hashes on %q, not fleet", k, tag(k))
		}
	}
}
