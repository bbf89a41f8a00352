package cli

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/phalafleet/rollout/internal/notify"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/textsafe"
)

// runEvents prints a rollout's audit trail: who applied, paused, resumed,
// cancelled, promoted or retried it, and what the controller and the
// failure budget did, oldest first.
func runEvents(ctx context.Context, e *Env, args []string) error {
	c := newRedisCmd("events", "table", "json")
	last := c.fs.Int("last", 0, "only the latest N events (0: all, up to 1,000 are kept)")
	notes := c.fs.Bool("notifications", false, "-o json: the notifications and their delivery instead of the audit trail")
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
	ns, err := st.Notifications(ctx, pos[0])
	if err != nil {
		return err
	}
	if c.format() == "json" {
		if *notes {
			return writeJSON(e.Stdout, notificationViews(ns))
		}
		return writeJSON(e.Stdout, evs)
	}
	printEvents(e.Stdout, "", evs)
	if len(ns) > 0 {
		fmt.Fprintln(e.Stdout, "\nnotifications:")
		printNotifications(e.Stdout, ns)
	}
	return nil
}

// notificationView is a notification as shown: its target by scheme and
// host only (a webhook URL's path may be its secret).
type notificationView struct {
	ID          string `json:"id"`
	Event       string `json:"event"`
	At          string `json:"at"`
	Target      string `json:"target"`
	Outcome     string `json:"outcome"` // delivered, pending, given up
	Attempts    int    `json:"attempts"`
	DeliveredAt string `json:"delivered_at,omitempty"`
	LastError   string `json:"last_error,omitempty"`
}

func notificationViews(ns []store.Notification) []notificationView {
	out := make([]notificationView, 0, len(ns))
	for _, n := range ns {
		v := notificationView{ID: n.ID, Event: n.Event, At: n.At, Target: notify.Host(n.URL), Outcome: "pending",
			Attempts: n.Attempts, DeliveredAt: n.DeliveredAt, LastError: n.LastError}
		switch {
		case n.DeliveredAt != "":
			v.Outcome = "delivered"
		case n.FailedAt != "":
			v.Outcome = "given up"
		}
		out = append(out, v)
	}
	return out
}

func printNotifications(w io.Writer, ns []store.Notification) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  EVENT\tTARGET\tOUTCOME\tATTEMPTS\tDELIVERED AT\tLAST ERROR\tID")
	for _, v := range notificationViews(ns) {
		at := "-"
		if t, err := time.Parse(time.RFC3339Nano, v.DeliveredAt); err == nil {
			at = t.Local().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\t%s\t%s\t%s\n", v.Event, textsafe.Cell(v.Target), v.Outcome, v.Attempts, at,
			textsafe.Cell(v.LastError), v.ID)
	}
	tw.Flush()
}

func printEvents(w io.Writer, indent string, evs []store.Event) {
	for _, ev := range evs {
		// By names a user or host, What may quote an API error: escape both.
		fmt.Fprintf(w, "%s%s  %-22s %s\n", indent, ev.At.Local().Format(time.RFC3339), textsafe.Cell(ev.By), textsafe.Line(ev.What))
	}
}
