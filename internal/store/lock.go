package store

import (
	"context"
	"time"
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
