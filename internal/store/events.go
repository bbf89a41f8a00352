package store

import (
	"context"
	"encoding/json"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Event is one line of a rollout's audit trail: who did what, when. It is
// stored as JSON, so no text in it (a --reason with a newline, say) can
// forge another line.
type Event struct {
	At   time.Time `json:"at"`
	By   string    `json:"by"`
	What string    `json:"what"`
}

// maxEvents caps a rollout's audit trail; the oldest lines go first (the
// scripts' event() trims to the same).
const maxEvents = 1000

func pushEvent(ctx context.Context, pipe redis.Pipeliner, id string, now time.Time, who, what string) {
	b, _ := json.Marshal(Event{At: now.UTC().Truncate(time.Second), By: who, What: what})
	pipe.RPush(ctx, EventsKey(id), b)
	pipe.LTrim(ctx, EventsKey(id), -maxEvents, -1)
}

// Event appends a line to the rollout's audit trail, for what is not a
// state move (those write their own line in the same step).
func (s *Store) Event(ctx context.Context, id string, now time.Time, who, what string) error {
	pipe := s.rdb.Pipeline()
	pushEvent(ctx, pipe, id, now, who, what)
	_, err := pipe.Exec(ctx)
	return err
}

// Events returns the rollout's audit trail, oldest first; last > 0 keeps
// only the latest that many.
func (s *Store) Events(ctx context.Context, id string, last int) ([]Event, error) {
	start := int64(0)
	if last > 0 {
		start = -int64(last)
	}
	lines, err := s.rdb.LRange(ctx, EventsKey(id), start, -1).Result()
	if err != nil {
		return nil, err
	}
	out := make([]Event, 0, len(lines))
	for _, l := range lines {
		out = append(out, parseEvent(l))
	}
	return out, nil
}

// parseEvent reads a JSON event, or a line "RFC3339 who: what" of the
// format before it.
func parseEvent(line string) Event {
	var e Event
	if strings.HasPrefix(line, "{") && json.Unmarshal([]byte(line), &e) == nil {
		return e
	}
	at, rest, _ := strings.Cut(line, " ")
	t, err := time.Parse(time.RFC3339, at)
	if err != nil {
		return Event{What: line}
	}
	by, what, ok := strings.Cut(rest, ": ")
	if !ok {
		return Event{At: t, What: rest}
	}
	return Event{At: t, By: by, What: what}
}
