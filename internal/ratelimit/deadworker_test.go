package ratelimit_test

import (
	"context"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/phalafleet/rollout/internal/ratelimit"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/testutil"
	"github.com/redis/go-redis/v9"
)

// TestDeadWorkerSlotsReaped: a worker process that dies (its heartbeat
// stops, nothing is released) loses its in-flight slots at the first Reap
// after its heartbeat lapses, long before their leases end; a live
// worker's holder keeps its own; status's view names the dead worker
// until the CVM is taken up again.
func TestDeadWorkerSlotsReaped(t *testing.T) {
	// In a bubble the dead worker's key lapses by its TTL, in fake time.
	synctest.Test(t, func(t *testing.T) {
		deadWorkerSlotsReaped(t, testutil.InBubble(t, testutil.NoFleet).RDB, true)
	})
}

// TestDeadWorkerSlotsReapedRedis is the same on testutil.Redis (the real
// one at $REDIS_URL), in real time: the dead worker's heartbeat is deleted
// rather than waited out.
func TestDeadWorkerSlotsReapedRedis(t *testing.T) {
	rdb, _ := testutil.Redis(t)
	deadWorkerSlotsReaped(t, rdb, false)
}

func deadWorkerSlotsReaped(t *testing.T, rdb redis.UniversalClient, fakeTime bool) {
	ctx := context.Background()
	live, dead := ratelimit.New(rdb), ratelimit.New(rdb)
	var warned atomic.Int32
	stopLive, err := live.Heartbeat(ctx, "host-a/100", func(string, ...any) { warned.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	defer stopLive()
	// The dead worker's heartbeat stops without a goodbye, as after
	// kill -9: its key is left to lapse.
	dctx, kill := context.WithCancel(ctx)
	_, err = dead.Heartbeat(dctx, "host-b/200", nil)
	if err != nil {
		t.Fatal(err)
	}
	lim := ratelimit.Limits{MaxInFlight: 3}
	const lease = 6 * time.Minute
	if rel, err := live.Slot(ctx, "r", lim, time.Second, lease, "cvm-a"); err != nil || rel == nil {
		t.Fatal("no slot", err)
	}
	for _, cvm := range []string{"cvm-b", "cvm-c"} {
		if rel, err := dead.Slot(ctx, "r", lim, time.Second, lease, cvm); err != nil || rel == nil {
			t.Fatal("no slot", err)
		}
	}
	// While it lives, nothing is reaped.
	if n, err := live.Reap(ctx, "r"); err != nil || n != 0 {
		t.Fatalf("reaped %d, %v while every worker lives", n, err)
	}
	kill()
	start := time.Now()
	if fakeTime {
		time.Sleep(ratelimit.HeartbeatTTL + time.Second)
	} else {
		keys, _ := rdb.Keys(ctx, store.WorkerKey("host-b/200")+"#*").Result()
		if len(keys) != 1 {
			t.Fatalf("dead worker's heartbeat keys: %v", keys)
		}
		rdb.Del(ctx, keys[0])
	}
	ds, err := store.NewLimits(rdb).DeadWorkerSlots(ctx, "r")
	if err != nil || len(ds) != 1 || ds[0].Worker != "host-b/200" || ds[0].Slots != 2 || ds[0].Freed != 0 {
		t.Fatalf("dead worker slots before the reap: %+v, %v", ds, err)
	}
	n, err := live.Reap(ctx, "r")
	if err != nil || n != 2 {
		t.Fatalf("reaped %d, %v %s after the dead worker's last beat (lease %s); want its 2 slots", n, err, time.Since(start), lease)
	}
	// The CVMs stay the dead worker's until asynq hands their tasks
	// out again: status still names it, with the slots freed. (No CVM
	// record here: count them as running.)
	for _, cvm := range []string{"cvm-b", "cvm-c"} {
		rdb.HSet(ctx, store.CVMKey("r", cvm), "state", string(store.Running))
	}
	ds, err = store.NewLimits(rdb).DeadWorkerSlots(ctx, "r")
	if err != nil || len(ds) != 1 || ds[0].Slots != 2 || ds[0].Freed != 2 {
		t.Fatalf("dead worker slots after the reap: %+v, %v", ds, err)
	}
	for i := range 3 {
		rel, _ := live.Slot(ctx, "r", lim, time.Second, lease, []string{"cvm-b", "cvm-d", "cvm-e"}[i])
		if got := rel != nil; got != (i < 2) {
			t.Fatalf("slot %d after the reap: got one = %v (the live holder still has its own)", i+1, got)
		}
	}
	// cvm-b was taken up again (by the live worker): only cvm-c is left.
	ds, err = store.NewLimits(rdb).DeadWorkerSlots(ctx, "r")
	if err != nil || len(ds) != 1 || ds[0].Slots != 1 {
		t.Fatalf("dead worker slots after cvm-b came back: %+v, %v", ds, err)
	}
	if n, err := live.Reap(ctx, "r"); err != nil || n != 0 {
		t.Fatalf("reaped %d more, %v: the live worker's holders are its own", n, err)
	}
	if !fakeTime {
		return
	}
	// A live worker whose heartbeat lapsed says so, and beats again.
	keys, _ := rdb.Keys(ctx, store.WorkerKey("host-a/100")+"#*").Result()
	if len(keys) != 1 || warned.Load() != 0 {
		t.Fatalf("heartbeat keys %v, %d warnings", keys, warned.Load())
	}
	rdb.Del(ctx, keys[0])
	time.Sleep(ratelimit.HeartbeatEvery + 100*time.Millisecond)
	if n, _ := rdb.Exists(ctx, keys[0]).Result(); n != 1 || warned.Load() != 1 {
		t.Fatalf("after a lapse: heartbeat key exists = %d, %d warnings; want it back and 1 warning", n, warned.Load())
	}
	// A clean exit unregisters.
	stopLive()
	if n, _ := rdb.Exists(ctx, keys[0]).Result(); n != 0 {
		t.Fatal("heartbeat key left after stop")
	}
}
