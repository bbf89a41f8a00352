package testutil

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"
)

// ErrCrashed is what every command gets once a Crash has happened.
var ErrCrashed = errors.New("injected crash: this process is gone")

// Crash is a go-redis hook that lets the first After commands through and
// fails every one after them, as if the process had died there: what was
// sent before the crash is in Redis, nothing after it is. A pipeline or a
// MULTI counts as one command (Redis runs a MULTI whole or not at all).
type Crash struct {
	After int64
	n     atomic.Int64
}

// Crashed reports whether a command was refused.
func (c *Crash) Crashed() bool { return c.n.Load() > c.After }

func (c *Crash) pass() bool { return c.n.Add(1) <= c.After }

func (c *Crash) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *Crash) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if !c.pass() {
			cmd.SetErr(ErrCrashed)
			return ErrCrashed
		}
		return next(ctx, cmd)
	}
}

func (c *Crash) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if !c.pass() {
			for _, cmd := range cmds {
				cmd.SetErr(ErrCrashed)
			}
			return ErrCrashed
		}
		return next(ctx, cmds)
	}
}

// CrashingClient is a second client on the bundle's Redis that dies after
// its first after commands (see Crash).
func (b *Bundle) CrashingClient(t testing.TB, after int) (*redis.Client, *Crash) {
	t.Helper()
	c := &Crash{After: int64(after)}
	rdb := redis.NewClient(b.RDB.(*redis.Client).Options())
	rdb.AddHook(c)
	t.Cleanup(func() { rdb.Close() })
	return rdb, c
}

// Before is a go-redis hook that runs Fn once, just before the first
// command Match accepts: a way to land another operation in a window
// between two commands of the one under test.
type Before struct {
	Match func(redis.Cmder) bool
	Fn    func()
	once  sync.Once
}

func (h *Before) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *Before) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if h.Match(cmd) {
			h.once.Do(h.Fn)
		}
		return next(ctx, cmd)
	}
}

func (h *Before) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, c := range cmds {
			if h.Match(c) {
				h.once.Do(h.Fn)
			}
		}
		return next(ctx, cmds)
	}
}

// HookedClient is a second client on the bundle's Redis with hook added.
func (b *Bundle) HookedClient(t testing.TB, hook redis.Hook) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(b.RDB.(*redis.Client).Options())
	rdb.AddHook(hook)
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// Names reports whether cmd names key among its arguments.
func Names(cmd redis.Cmder, key string) bool {
	for _, a := range cmd.Args() {
		if s, ok := a.(string); ok && s == key {
			return true
		}
	}
	return false
}
