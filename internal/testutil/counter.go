package testutil

import (
	"context"
	"maps"
	"net"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// Counter is a go-redis hook that counts what a client sends Redis: round
// trips (a command or a pipeline), commands, and commands by name
// (lower case). Add it with AddHook.
type Counter struct {
	mu          sync.Mutex
	trips, cmds int64
	byName      map[string]int
}

func (c *Counter) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) { return next(ctx, network, addr) }
}

func (c *Counter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.add(cmd)
		return next(ctx, cmd)
	}
}

func (c *Counter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.add(cmds...)
		return next(ctx, cmds)
	}
}

func (c *Counter) add(cmds ...redis.Cmder) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byName == nil {
		c.byName = map[string]int{}
	}
	c.trips++
	c.cmds += int64(len(cmds))
	for _, cmd := range cmds {
		c.byName[strings.ToLower(cmd.Name())]++
	}
}

// Trips and Cmds are the round trips and commands counted so far.
func (c *Counter) Trips() int64 { c.mu.Lock(); defer c.mu.Unlock(); return c.trips }
func (c *Counter) Cmds() int64  { c.mu.Lock(); defer c.mu.Unlock(); return c.cmds }

// ByName is a copy of the commands counted so far, by name.
func (c *Counter) ByName() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.byName)
}

// Reset starts the count again.
func (c *Counter) Reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.trips, c.cmds, c.byName = 0, 0, nil
}
