package store

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Reads for the web dashboard (internal/dashboard). Each is a bounded
// number of commands, whatever the number of CVMs: the dashboard renders a
// 100,000-CVM rollout as fast as a 1,000-CVM one.

// View is what the dashboard shows of one rollout, read in one pipelined
// round trip (see View).
type View struct {
	Rollout  *Rollout
	Events   []Event  // the latest, oldest first
	Failures []string // "cvm_id: reason", oldest first (capped at 20 by the scripts)
	// PaceRate is the adaptive rate (requests/s) last set; HasPace is
	// false when none was (no 429 or 503 seen yet: the configured rate).
	PaceRate float64
	HasPace  bool
	// PaceReason is why the adaptive rate last changed (PaceState).
	PaceReason string
	InFlight   int // in-flight slots held now (the semaphore's size)
}

// View reads a rollout's record with its latest events and failures, its
// adaptive rate and in-flight count: one pipeline of five commands, all in
// the family's slot.
func (s *Store) View(ctx context.Context, id string, events int) (*View, error) {
	pipe := s.rdb.Pipeline()
	rec := pipe.HGetAll(ctx, RolloutKey(id))
	ev := pipe.LRange(ctx, EventsKey(id), -int64(max(events, 1)), -1)
	fl := pipe.LRange(ctx, FailuresKey(id), 0, -1)
	pace := pipe.HMGet(ctx, PaceKey(id), "rate", "reason")
	slots := pipe.ZCard(ctx, SlotHoldersKey(id))
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	m := rec.Val()
	if len(m) == 0 || m["ready"] != "1" {
		return nil, notFound(id)
	}
	v := &View{Rollout: parseRollout(m), Failures: fl.Val(), InFlight: int(slots.Val())}
	for _, l := range ev.Val() {
		v.Events = append(v.Events, parseEvent(l))
	}
	if p := pace.Val(); len(p) == 2 {
		if r, ok := p[0].(string); ok {
			v.PaceRate, _ = strconv.ParseFloat(r, 64)
			v.HasPace = true
		}
		v.PaceReason, _ = p[1].(string)
	}
	return v, nil
}

// CVMQuery asks for one page of a rollout's CVM table.
type CVMQuery struct {
	// From is the position in plan order to start at (a page's Next).
	From int
	// Limit is the page size (at most MaxPage).
	Limit int
	// State keeps only CVMs in this state ("" all).
	State CVMState
	// Match keeps only CVMs whose id, name or reason holds it (case
	// folded); a CVM id given whole is looked up directly.
	Match string
}

// MaxPage bounds a page; ScanBudget bounds how many records one filtered
// page reads before it returns what it found with a Next to go on from.
const (
	MaxPage    = 200
	ScanBudget = 5000
)

// CVMPage is one page of the table.
type CVMPage struct {
	Rows  []CVMRecord
	Total int // CVMs in the rollout
	From  int // the position this page started at
	// Next is where the next page starts; -1 at the end.
	Next int
	// Scanned is how many records a filtered page read (at most
	// ScanBudget): a filter that matches rarely returns a short page
	// with a Next, not a scan of the whole rollout.
	Scanned int
}

// CVMs reads one page of a rollout's CVMs in plan order. Unfiltered, it is
// one LRANGE of the order list and one HGETALL per row; filtered, it reads
// records in chunks from q.From until the page is full or ScanBudget
// records were read. Either way its cost is bounded by the page, never by
// the fleet.
func (s *Store) CVMs(ctx context.Context, id string, q CVMQuery) (CVMPage, error) {
	q.Limit = min(max(q.Limit, 1), MaxPage)
	q.From = max(q.From, 0)
	match := strings.ToLower(strings.TrimSpace(q.Match))
	total, err := s.rdb.LLen(ctx, OrderKey(id)).Result()
	if err != nil {
		return CVMPage{}, err
	}
	page := CVMPage{Total: int(total), From: q.From, Next: -1}
	if match != "" && q.From == 0 {
		// A whole CVM id: one HGETALL, wherever it is in the rollout.
		if m, err := s.rdb.HGetAll(ctx, CVMKey(id, strings.TrimSpace(q.Match))).Result(); err != nil {
			return CVMPage{}, err
		} else if len(m) > 0 {
			r := parseRecord(strings.TrimSpace(q.Match), m)
			if q.State == "" || r.State == q.State {
				page.Rows = []CVMRecord{r}
			}
			return page, nil
		}
	}
	filtered := match != "" || q.State != ""
	keep := func(cvm, name, state, reason string) bool {
		if q.State != "" && CVMState(state) != q.State {
			return false
		}
		return match == "" || strings.Contains(strings.ToLower(cvm), match) ||
			strings.Contains(strings.ToLower(name), match) || strings.Contains(strings.ToLower(reason), match)
	}
	step := q.Limit
	if filtered {
		step = chunk
	}
	pos := q.From
	var ids []string // the page's CVMs
	for pos < int(total) && len(ids) < q.Limit && page.Scanned < ScanBudget {
		part, err := s.rdb.LRange(ctx, OrderKey(id), int64(pos), int64(pos+step-1)).Result()
		if err != nil {
			return CVMPage{}, err
		}
		if len(part) == 0 {
			break
		}
		if !filtered {
			ids, pos, page.Scanned = part, pos+len(part), len(part)
			break
		}
		// Filtering reads only the fields it looks at; the page's rows
		// are read whole below.
		pipe := s.rdb.Pipeline()
		cmds := make([]*redis.SliceCmd, len(part))
		for i, cvm := range part {
			cmds[i] = pipe.HMGet(ctx, CVMKey(id, cvm), "name", "state", "reason")
		}
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return CVMPage{}, err
		}
		for i, c := range cmds {
			pos++
			page.Scanned++
			v := c.Val()
			if keep(part[i], asString(v[0]), asString(v[1]), asString(v[2])) {
				if ids = append(ids, part[i]); len(ids) == q.Limit {
					break
				}
			}
		}
	}
	if pos < int(total) {
		page.Next = pos
	}
	if len(ids) == 0 {
		return page, nil
	}
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(ids))
	for i, cvm := range ids {
		cmds[i] = pipe.HGetAll(ctx, CVMKey(id, cvm))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return CVMPage{}, err
	}
	for i, c := range cmds {
		page.Rows = append(page.Rows, parseRecord(ids[i], c.Val()))
	}
	return page, nil
}

// asString is an HMGET answer's field ("" when missing).
func asString(v any) string {
	s, _ := v.(string)
	return s
}

// Holders is the rollout's in-flight slot holders a heartbeat vouches for,
// by worker heartbeat id (host/pid#nonce): the CVMs each holds now.
func (l *Limits) Holders(ctx context.Context, id string) (map[string][]string, error) {
	return l.slotHolders(ctx, id)
}

// HeartbeatTTL is how long each worker's heartbeat has left (0: gone, the
// worker is dead), one PTTL each, pipelined.
func (l *Limits) HeartbeatTTL(ctx context.Context, workers []string) (map[string]time.Duration, error) {
	p := l.rdb.Pipeline()
	cmds := make([]*redis.DurationCmd, len(workers))
	for i, w := range workers {
		cmds[i] = p.PTTL(ctx, WorkerKey(w))
	}
	if _, err := p.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	out := make(map[string]time.Duration, len(workers))
	for i, w := range workers {
		out[w] = max(cmds[i].Val(), 0)
	}
	return out, nil
}
