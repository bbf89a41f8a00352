package store

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// ErrFull wraps a write Redis refused for want of memory.
type ErrFull struct{ Err error }

func (e *ErrFull) Error() string {
	return "Redis is full (maxmemory): raise maxmemory or prune finished rollouts (rollout prune), then run the same command again; what was refused is finished then: " + e.Err.Error()
}

func (e *ErrFull) Unwrap() error { return e.Err }

// Full gives err the clear words if it is Redis's OOM refusal.
func Full(err error) error {
	if err != nil && strings.Contains(err.Error(), "OOM command not allowed") {
		if _, ok := err.(*ErrFull); !ok {
			return &ErrFull{err}
		}
	}
	return err
}

// Memory is Redis's used_memory and maxmemory (0: none set), from INFO memory.
func (s *Store) Memory(ctx context.Context) (used, limit int64, err error) {
	info, err := s.rdb.Info(ctx, "memory").Result()
	if err != nil {
		return 0, 0, err
	}
	for line := range strings.SplitSeq(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		switch k {
		case "used_memory":
			used, _ = strconv.ParseInt(v, 10, 64)
		case "maxmemory":
			limit, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	if used == 0 {
		return 0, 0, fmt.Errorf("INFO memory: no used_memory")
	}
	return used, limit, nil
}

// txErr is a MULTI's error: Redis refuses a queued command (OOM, say) and
// then the whole EXEC with EXECABORT; the first refusal says why.
func txErr(cmds []redis.Cmder, err error) error {
	if err == nil || !strings.HasPrefix(err.Error(), "EXECABORT") {
		return err
	}
	for _, c := range cmds {
		if c.Err() != nil && !strings.HasPrefix(c.Err().Error(), "EXECABORT") {
			return Full(c.Err())
		}
	}
	return err
}
