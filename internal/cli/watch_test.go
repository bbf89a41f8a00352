package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/testutil"
	"github.com/redis/go-redis/v9"
)

const watchFile = "name: w\nselector: {all: true}\ntarget: {kms_urls: [\"https://kms-new.example:8000\"]}\n"

var watchFleet = sim.FleetOptions{CVMs: 8, Seed: 4, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9}

// watchEnv is an Env on buffers with the bubble's clock.
func watchEnv(width int) (*Env, *testutil.Buffer, *testutil.Buffer) {
	var out, errb testutil.Buffer
	e := &Env{Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }}
	if width > 0 {
		e.Width = func() int { return width }
	}
	return e, &out, &errb
}

// docs parses NDJSON, one document a line.
func docs(t *testing.T, s string) []WatchDoc {
	t.Helper()
	var ds []WatchDoc
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var d WatchDoc
		if err := json.Unmarshal(sc.Bytes(), &d); err != nil {
			t.Fatalf("not one JSON document a line: %v\n%s", err, sc.Text())
		}
		ds = append(ds, d)
	}
	return ds
}

// TestWatchStreamsNDJSON: --watch -o json writes one document per change
// (not per tick), each with the warnings that stand; the end is the
// rollout's own exit status.
func TestWatchStreamsNDJSON(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := testutil.InBubble(t, watchFleet)
		p := b.Apply(t, watchFile)
		e, out, _ := watchEnv(0)
		done := make(chan error, 1)
		go func() {
			r, err := watch(context.Background(), e, b.Store, p.ID, watchOpts{format: "json", stream: true, every: time.Second})
			if err == nil {
				err = outcome(r)
			}
			done <- err
		}()
		time.Sleep(10 * time.Second) // ten ticks, no change: one document
		if _, err := b.Control().Pause(context.Background(), p.ID, "op", "", time.Now()); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Second)
		if _, err := b.Control().Cancel(context.Background(), p.ID, "op", "enough", time.Now()); err != nil {
			t.Fatal(err)
		}
		err := <-done
		if ExitCode(context.Background(), err) != ExitCancelled {
			t.Fatalf("watch of a cancelled rollout: %v", err)
		}
		ds := docs(t, out.String())
		var states []store.RolloutState
		for _, d := range ds {
			states = append(states, d.Rollout.State)
		}
		if len(ds) != 3 || states[0] != store.RolloutRunning || states[1] != store.RolloutPaused || states[2] != store.RolloutCancelled {
			t.Fatalf("documents' states %v, want running, paused, cancelled", states)
		}
		if d := ds[0]; d.WorkersAlive != 0 || len(d.Warnings) != 1 || d.Warnings[0].Kind != "no_workers" || d.Rollout.ToPatch != len(p.Items) {
			t.Fatalf("first document: %+v", d)
		}
		if len(ds[2].Warnings) != 0 {
			t.Fatalf("a cancelled rollout needs no worker: %+v", ds[2].Warnings)
		}
	})
}

// TestWatchFollowsWorkers: with workers running, the watch's documents
// show progress and the live worker, and it ends with the rollout.
func TestWatchFollowsWorkers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := testutil.InBubble(t, watchFleet)
		p := b.Apply(t, watchFile)
		b.Workers(t, 1, 2)
		e, out, _ := watchEnv(0)
		r, err := watch(context.Background(), e, b.Store, p.ID, watchOpts{format: "json", stream: true, every: time.Second})
		if err != nil || r.State != store.RolloutCompleted || outcome(r) != nil {
			t.Fatalf("watch: %v %+v", err, r)
		}
		ds := docs(t, out.String())
		last := ds[len(ds)-1]
		if last.Rollout.Patched != len(p.Items) || last.WorkersAlive != 1 {
			t.Fatalf("last document: patched %d/%d, workers %d", last.Rollout.Patched, last.Rollout.ToPatch, last.WorkersAlive)
		}
	})
}

// failingHook fails the rollout hash's reads while down is set.
type failingHook struct {
	key   string
	down  atomic.Bool
	fails atomic.Int32
}

func (h *failingHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *failingHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if h.down.Load() && cmd.Name() == "hgetall" && testutil.Names(cmd, h.key) {
			h.fails.Add(1)
			err := errors.New("dial tcp 10.0.0.5:6379: connect: connection refused")
			cmd.SetErr(err)
			return err
		}
		return next(ctx, cmd)
	}
}
func (h *failingHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestWatchRidesOutRedisBlip: a Redis outage during a watch is retried
// with backoff (0.5s, 1s, 2s, ...), said on stderr and in the stream, and
// the watch goes on when Redis is back.
func TestWatchRidesOutRedisBlip(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := testutil.InBubble(t, watchFleet)
		p := b.Apply(t, watchFile)
		h := &failingHook{key: store.RolloutKey(p.ID)}
		st := store.New(b.HookedClient(t, h))
		e, out, errb := watchEnv(0)
		done := make(chan error, 1)
		go func() {
			r, err := watch(context.Background(), e, st, p.ID, watchOpts{format: "json", stream: true, every: time.Second})
			if err == nil {
				err = outcome(r)
			}
			done <- err
		}()
		time.Sleep(1500 * time.Millisecond)
		h.down.Store(true)
		time.Sleep(7 * time.Second) // failed reads at the next tick, then 0.5s, 1s, 2s and 4s later
		h.down.Store(false)
		if h.fails.Load() < 3 || h.fails.Load() > 5 {
			t.Fatalf("%d failed reads in 7s of outage: want backoff (about 4)", h.fails.Load())
		}
		if _, err := b.Control().Cancel(context.Background(), p.ID, "op", "", time.Now()); err != nil {
			t.Fatal(err)
		}
		if err := <-done; ExitCode(context.Background(), err) != ExitCancelled {
			t.Fatalf("watch after the outage: %v", err)
		}
		for _, want := range []string{"retrying in 500ms", "retrying in 1s", "retrying in 2s", "connection refused"} {
			if !strings.Contains(errb.String(), want) {
				t.Errorf("stderr lacks %q:\n%s", want, errb.String())
			}
		}
		ds := docs(t, out.String())
		sawRedis := false
		for _, d := range ds {
			for _, w := range d.Warnings {
				sawRedis = sawRedis || w.Kind == "redis"
			}
		}
		if !sawRedis || ds[len(ds)-1].Rollout.State != store.RolloutCancelled {
			t.Fatalf("stream: redis warning %v, last state %s", sawRedis, ds[len(ds)-1].Rollout.State)
		}
	})
}

// TestWatchRedrawsOnTerminal: on a terminal the view is redrawn in place
// (cursor up over the last frame, clear below), no line wider than the
// terminal; Ctrl-C ends it with 130 and the line that the rollout goes on.
func TestWatchRedrawsOnTerminal(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := testutil.InBubble(t, watchFleet)
		p := b.Apply(t, "name: w\nselector: {all: true}\ntarget: {kms_urls: [\"https://kms-new.example:8000\"]}\nstages: [2, \"100%\"]\n")
		e, out, _ := watchEnv(60)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			_, err := watch(ctx, e, b.Store, p.ID, watchOpts{format: "table", every: time.Second})
			done <- err
		}()
		time.Sleep(3500 * time.Millisecond)
		cancel()
		err := <-done
		if ExitCode(ctx, err) != ExitInterrupt || !strings.Contains(err.Error(), "goes on") || !strings.Contains(err.Error(), "rollout pause "+p.ID) {
			t.Fatalf("Ctrl-C: %v", err)
		}
		s := out.String()
		frames := regexp.MustCompile(`\x1b\[(\d+)A\x1b\[J`).FindAllStringSubmatch(s, -1)
		if len(frames) != 3 { // 4 frames: the first drawn, 3 redrawn over it
			t.Fatalf("%d redraws in 3.5s, want 3:\n%q", len(frames), s)
		}
		first := strings.SplitN(s, "\x1b[", 2)[0]
		if n := strings.Count(first, "\n"); frames[0][1] != strconv.Itoa(n) {
			t.Fatalf("moved up %s lines over a frame of %d", frames[0][1], n)
		}
		for _, l := range strings.Split(regexp.MustCompile(`\x1b\[\d+A\x1b\[J`).ReplaceAllString(s, "\n"), "\n") {
			if len([]rune(l)) > 60 {
				t.Fatalf("line wider than the terminal: %q", l)
			}
		}
		if !strings.Contains(first, "> 1 stage-1 [") || !strings.Contains(first, "no worker is alive") || !strings.Contains(first, "patched 0/") {
			t.Fatalf("frame:\n%s", first)
		}
	})
}
