package cli

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/textsafe"
)

// runEvents prints a rollout's audit trail: who applied, paused, resumed,
// cancelled, promoted or retried it, and what the controller and the
// failure budget did, oldest first.
func runEvents(ctx context.Context, e *Env, args []string) error {
	c := newRedisCmd("events", "table", "json")
	last := c.fs.Int("last", 0, "only the latest N events (0: all, up to 1,000 are kept)")
	pos, st, closeRedis, err := c.open(ctx, e, args, 1)
	if err != nil {
		return err
	}
	defer closeRedis()
	if *last < 0 {
		return usageErr("events: --last %d: must be 0 (all) or more", *last)
	}
	id, err := resolve(ctx, st, "events", pos[0])
	if err != nil {
		return err
	}
	evs, err := st.Events(ctx, id, *last)
	if err != nil {
		return err
	}
	if c.format() == "json" {
		return writeJSON(e.Stdout, evs)
	}
	printEvents(e.Stdout, "", evs)
	return nil
}

func printEvents(w io.Writer, indent string, evs []store.Event) {
	for _, ev := range evs {
		// By names a user or host, What may quote an API error: escape both.
		fmt.Fprintf(w, "%s%s  %-22s %s\n", indent, ev.At.Local().Format(time.RFC3339), textsafe.Cell(ev.By), textsafe.Line(ev.What))
	}
}
