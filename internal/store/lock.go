package store

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"
)

// Lead takes the controller lock for owner, or renews it if owner holds
// it; it reports whether owner holds it now.
func (s *Store) Lead(ctx context.Context, owner string, ttl time.Duration) (bool, error) {
	n, err := leadScript.Run(ctx, s.rdb, []string{ControllerLockKey}, owner, ttl.Milliseconds()).Int()
	return n == 1, err
}

// Unlead gives the controller lock up if owner still holds it (one script:
// a GET then DEL could delete the lock of the process that took it since).
func (s *Store) Unlead(ctx context.Context, owner string) error {
	return releaseLeaseScript.Run(ctx, s.rdb, []string{ControllerLockKey}, owner).Err()
}

// Leader is the owner holding the controller lock now, "" when none does.
// The metrics ask it so that one process exports the gauges read from
// Redis, whatever the number of workers.
func (s *Store) Leader(ctx context.Context) (string, error) {
	v, err := s.rdb.Get(ctx, ControllerLockKey).Result()
	if err == redis.Nil {
		return "", nil
	}
	return v, err
}
