package testutil

import (
	"context"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/phalafleet/rollout/internal/api"
	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// InBubble sets up a Bundle with no sockets, for use inside a
// testing/synctest bubble: miniredis over net.Pipe with ClockTTL (cheap
// with few keys), and the simulator through an in-process transport. Time
// then runs on the bubble's fake clock, so retries and schedules that take
// minutes finish in milliseconds.
func InBubble(t testing.TB, fleet sim.FleetOptions) *Bundle {
	t.Helper()
	m := miniredis.NewMiniRedis()
	m.ClockTTL(true)
	t.Cleanup(m.Close)
	rdb := redis.NewClient(&redis.Options{
		PoolSize:                 32,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
		Dialer: func(context.Context, string, string) (net.Conn, error) {
			c, err := m.Dial()
			if err != nil {
				return nil, err
			}
			return newBufferedConn(c), nil
		},
	})
	t.Cleanup(func() { rdb.Close() })
	b := &Bundle{RDB: rdb, Store: store.New(rdb), Key: sim.NewAPIKey(), Tick: time.Second}
	b.Sim = sim.New(sim.Options{APIKey: b.Key, Fleet: fleet})
	b.SimURL = "http://sim.invalid/api/v1"
	var err error
	b.API, err = api.New(api.Config{APIKey: b.Key, Prefix: b.SimURL, Timeout: 10 * time.Second,
		HTTPClient: &http.Client{Transport: b.Sim.Transport()}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// NoFleet is an empty fleet, for tests that need only Redis.
var NoFleet = sim.FleetOptions{}
