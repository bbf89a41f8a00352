package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/hibiken/asynq"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/tasks"
	"github.com/phalafleet/rollout/internal/textsafe"
)

// watchOpts says how a watch runs.
type watchOpts struct {
	format      string        // table: a live view on a terminal, else a line per change; json: see stream
	stream      bool          // json: a document per change (status --watch); else none (apply --wait prints one at the end)
	untilPaused bool          // a paused rollout ends the watch (apply --wait: it needs a person)
	timeout     time.Duration // 0: none
	every       time.Duration
}

// Redis read retries during a watch: a blip is waited out, never fatal.
const (
	retryFirst = 500 * time.Millisecond
	retryMax   = 15 * time.Second
)

// watch follows rollout id until it ends (or pauses, with untilPaused),
// and returns it as last read. On a terminal it redraws one view in
// place; otherwise it prints a line (or a JSON document) per change.
// Ctrl-C, --timeout and the end each have their own exit status.
func watch(ctx context.Context, e *Env, st *store.Store, id string, o watchOpts) (*store.Rollout, error) {
	var deadline <-chan time.Time
	if o.timeout > 0 {
		t := time.NewTimer(o.timeout)
		defer t.Stop()
		deadline = t.C
	}
	tick := time.NewTicker(o.every)
	defer tick.Stop()
	insp := asynq.NewInspectorFromRedisClient(st.Redis()) // not closed: it shares st's client
	p := &progress{}
	var last snapshot
	lastKey, drawn, backoff := "", 0, time.Duration(0)
	for {
		s, err := read(ctx, st, insp, id, time.Now())
		switch {
		case ctx.Err() != nil:
			return last.R, interrupted(id)
		case errors.Is(err, store.ErrNotFound):
			return nil, err
		case err != nil && last.R == nil:
			return nil, err // not one good read yet: a wrong URL, not a blip
		case err != nil:
			backoff = min(max(2*backoff, retryFirst), retryMax)
			s = last
			s.At, s.RedisErr, s.RetryIn = time.Now(), textsafe.Line(err.Error()), backoff
		default:
			backoff = 0
			p.observe(s)
			last = s
		}
		v := derive(s, p)
		width := e.width()
		switch {
		case o.format == "json" && o.stream:
			if k := changeKey(s, v); k != lastKey {
				lastKey = k
				b, _ := json.Marshal(watchDoc(s, v))
				fmt.Fprintf(e.Stdout, "%s\n", b)
			}
		case o.format == "json":
		case width > 0:
			if drawn > 0 {
				fmt.Fprintf(e.Stdout, "\x1b[%dA\x1b[J", drawn) // up to the view's top, clear below
			}
			lines := renderFrame(s, v, width)
			for _, l := range lines {
				fmt.Fprintln(e.Stdout, l)
			}
			drawn = len(lines)
		default:
			if k := changeKey(s, v); k != lastKey {
				lastKey = k
				fmt.Fprintln(e.Stdout, watchLine(s, v))
			}
		}
		if s.RedisErr != "" && o.format == "json" {
			fmt.Fprintf(e.Stderr, "rollout: %s\n", v.Warnings[0].Message)
		}
		if r := s.R; s.RedisErr == "" && (r.State.Finished() || o.untilPaused && r.State == store.RolloutPaused) {
			if o.format == "table" {
				fmt.Fprintln(e.Stdout)
				printStatus(e.Stdout, r)
			}
			return r, nil
		}
		next, retry := tick.C, (*time.Timer)(nil)
		if backoff > 0 {
			retry = time.NewTimer(backoff)
			next = retry.C
		}
		select {
		case <-ctx.Done():
			return last.R, interrupted(id)
		case <-deadline:
			r := last.R
			return r, withCode(ExitTimeout, fmt.Errorf("--timeout %s reached: rollout %s is %s; it goes on (rollout status %s --watch follows it again)", o.timeout, id, r.State, id))
		case <-next:
		}
		if retry != nil {
			retry.Stop()
		}
	}
}

// interrupted is a watch (or --wait) ended by Ctrl-C: the rollout is in
// Redis and the workers' hands, so it goes on.
func interrupted(id string) error {
	return withCode(ExitInterrupt, fmt.Errorf("interrupted: rollout %s goes on without this watch; `rollout pause %s` pauses it", id, id))
}

// read is one tick of a watch: the rollout (the one read that must work),
// and what the warnings need (each unknown if its read fails).
func read(ctx context.Context, st *store.Store, insp *asynq.Inspector, id string, now time.Time) (snapshot, error) {
	r, err := st.Get(ctx, id)
	if err != nil {
		return snapshot{}, err
	}
	s := snapshot{At: now, R: r, Workers: liveWorkers(insp)}
	lim := store.NewLimits(st.Redis())
	s.Dead, _ = lim.DeadWorkerSlots(ctx, id)
	s.Rate, s.RateSet, _ = lim.PaceRate(ctx, id)
	return s, nil
}

// liveWorkers is how many worker processes have a live heartbeat (asynq's
// server records, one or more per process: see runWorkers), -1 when
// Redis does not say.
func liveWorkers(insp *asynq.Inspector) int {
	servers, err := insp.Servers()
	if err != nil {
		return -1
	}
	return tasks.WorkerProcesses(servers)
}

// warnNoWorkers says on stderr (so -o json stays clean) that rollout id
// will not move until a worker runs.
func warnNoWorkers(e *Env, st *store.Store, id string) {
	if liveWorkers(asynq.NewInspectorFromRedisClient(st.Redis())) == 0 {
		fmt.Fprintf(e.Stderr, "warning: no worker is alive: rollout %s does not move until one starts (`worker`)\n", id)
	}
}
