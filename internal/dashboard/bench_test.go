package dashboard

import (
	"fmt"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/testutil"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// benchRedis is the Redis at $REDIS_URL (testutil.Redis), else a bare
// miniredis: testutil's one moves its clock every 100ms, which sorts every
// key (100,000 CVM records) and stalls the server, an artefact of the test
// harness and not what a render costs.
func benchRedis(b *testing.B) redis.UniversalClient {
	if os.Getenv("REDIS_URL") != "" {
		rdb, _ := testutil.Redis(b)
		return rdb
	}
	m := miniredis.RunT(b)
	rdb := redis.NewClient(&redis.Options{Addr: m.Addr(), MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}})
	b.Cleanup(func() { rdb.Close() })
	return rdb
}

// BenchmarkRolloutPage is the server time of one render of the rollout
// page: its snapshot (store.View, the view, JSON) and the first page of
// its CVM table, each read from Redis (the clock moves a tick per render,
// so nothing comes from the cache). It reports the Redis round trips and
// commands per render, which must not grow with the fleet
// (TestCommandsPerRenderConstantInFleetSize asserts it).
//
//	go test -run '^$' -bench RolloutPage -benchtime 200x ./internal/dashboard/
//	REDIS_URL=redis://127.0.0.1:6379/1 go test -run '^$' -bench RolloutPage -benchtime 200x ./internal/dashboard/
func BenchmarkRolloutPage(b *testing.B) {
	for _, n := range []int{1000, 100000} {
		b.Run(fmt.Sprintf("cvms=%d", n), func(b *testing.B) {
			rdb := benchRedis(b)
			st := store.New(rdb)
			clock := &fakeClock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
			id := seed(b, st, n, clock.Now())
			count := &testutil.Counter{}
			rdb.AddHook(count)
			h := New(Config{RDB: rdb, Now: clock.Now, Tick: time.Second})
			paths := []string{"/api/rollouts/" + id, "/api/rollouts/" + id + "/cvms?limit=50"}
			render := func() {
				clock.Add(time.Second)
				for _, p := range paths {
					w := httptest.NewRecorder()
					h.ServeHTTP(w, httptest.NewRequest("GET", p, nil))
					if w.Code != 200 {
						b.Fatalf("%s: %d %s", p, w.Code, w.Body)
					}
				}
			}
			render() // warm: scripts loaded, connections open
			count.Reset()
			b.ResetTimer()
			for b.Loop() {
				render()
			}
			b.StopTimer()
			b.ReportMetric(float64(count.Trips())/float64(b.N), "roundtrips/render")
			b.ReportMetric(float64(count.Cmds())/float64(b.N), "cmds/render")
		})
	}
}

// BenchmarkCVMSearch is the worst filtered page: a search that matches
// nothing reads ScanBudget records and stops, whatever the fleet's size.
func BenchmarkCVMSearch(b *testing.B) {
	for _, n := range []int{10000, 100000} {
		b.Run(fmt.Sprintf("cvms=%d", n), func(b *testing.B) {
			rdb := benchRedis(b)
			clock := &fakeClock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
			id := seed(b, store.New(rdb), n, clock.Now())
			h := New(Config{RDB: rdb, Now: clock.Now, Tick: time.Second})
			for b.Loop() {
				clock.Add(time.Second)
				w := httptest.NewRecorder()
				h.ServeHTTP(w, httptest.NewRequest("GET", "/api/rollouts/"+id+"/cvms?limit=50&q=no-such-name", nil))
				if w.Code != 200 {
					b.Fatalf("%d %s", w.Code, w.Body)
				}
			}
		})
	}
}
