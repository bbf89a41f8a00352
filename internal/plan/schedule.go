package plan

import (
	"fmt"
	"time"
	_ "time/tzdata" // windows work on machines without zoneinfo

	"github.com/robfig/cron/v3"
	"gopkg.in/yaml.v3"
)

// Schedule says when a rollout may start CVMs.
type Schedule struct {
	StartAt   time.Time     `yaml:"start_at" json:"start_at,omitzero"` // scheduled until then
	Windows   []Window      `yaml:"windows" json:"windows,omitempty"`  // none: always open
	Cutoff    time.Duration `yaml:"cutoff" json:"cutoff,omitempty"`    // start nothing in a window's last minutes
	EndAt     time.Time     `yaml:"end_at" json:"end_at,omitzero"`     // then stop
	EndAction string        `yaml:"end_action" json:"end_action,omitempty"`
	// Repeat re-plans the file on this period and rolls out to CVMs that
	// joined the selection or drifted from the target, as a new run.
	Repeat time.Duration `yaml:"repeat" json:"repeat,omitempty"`
}

// Window is a maintenance window: it opens at each time the cron spec
// names, in Timezone, and stays open for Duration.
type Window struct {
	Cron     string        `yaml:"cron" json:"cron"`
	Duration time.Duration `yaml:"duration" json:"duration"`
	Timezone string        `yaml:"timezone" json:"timezone,omitempty"`
	Line     int           `yaml:"-" json:"-"`
}

// UnmarshalYAML records the window's line.
func (w *Window) UnmarshalYAML(n *yaml.Node) error {
	type plain Window
	var p plain
	if err := n.Decode(&p); err != nil {
		return err
	}
	*w = Window(p)
	w.Line = n.Line
	return nil
}

func (w Window) schedule() (cron.Schedule, error) {
	tz := w.Timezone
	if tz == "" {
		tz = "UTC"
	}
	loc, err := time.LoadLocation(tz)
	if err != nil {
		return nil, fmt.Errorf("unknown timezone %s", quote(tz))
	}
	s, err := cron.ParseStandard(w.Cron)
	if err != nil {
		return nil, fmt.Errorf("cron %s: %v", quote(w.Cron), err)
	}
	return locSchedule{s, loc}, nil
}

// locSchedule evaluates a cron schedule in a time zone, so "0 2 * * *" in
// Europe/Berlin is 02:00 Berlin time on both sides of a DST change.
type locSchedule struct {
	s   cron.Schedule
	loc *time.Location
}

func (l locSchedule) Next(t time.Time) time.Time { return l.s.Next(t.In(l.loc)) }

// Gate says whether a CVM may start at now. It returns 0 when it may, or
// how long until it may, with the reason. Ended reports that end_at passed.
func (s *Schedule) Gate(now time.Time) (wait time.Duration, reason string, ended bool) {
	if s == nil {
		return 0, "", false
	}
	if !s.EndAt.IsZero() && !now.Before(s.EndAt) {
		return 0, fmt.Sprintf("end_at %s passed", s.EndAt.UTC().Format(time.RFC3339)), true
	}
	if !s.StartAt.IsZero() && now.Before(s.StartAt) {
		return s.StartAt.Sub(now), "starts at " + s.StartAt.UTC().Format(time.RFC3339), false
	}
	if len(s.Windows) == 0 {
		return 0, "", false
	}
	var next time.Time
	for _, w := range s.Windows {
		open, n := w.state(now, s.Cutoff)
		if open {
			return 0, "", false
		}
		if next.IsZero() || n.Before(next) {
			next = n
		}
	}
	if next.IsZero() {
		return time.Hour, "no maintenance window ahead", false
	}
	return next.Sub(now), "outside maintenance windows; next opens at " + next.UTC().Format(time.RFC3339), false
}

// state says whether w admits a new CVM at now (open, and not in the last
// cutoff of the window), and otherwise when it next does.
func (w Window) state(now time.Time, cutoff time.Duration) (open bool, next time.Time) {
	sch, err := w.schedule()
	if err != nil || w.Duration <= cutoff {
		return false, time.Time{}
	}
	// The earliest window start in (now-duration, now] contains now.
	if start := sch.Next(now.Add(-w.Duration)); !start.After(now) {
		if now.Before(start.Add(w.Duration - cutoff)) {
			return true, now
		}
	}
	return false, sch.Next(now)
}

func (s *Schedule) validate(root *yaml.Node) error {
	if s == nil {
		return nil
	}
	if !s.StartAt.IsZero() && !s.EndAt.IsZero() && !s.EndAt.After(s.StartAt) {
		return &lineError{keyLine(root, "schedule", "end_at"), "schedule.end_at is not after start_at"}
	}
	if s.Cutoff < 0 || s.Repeat < 0 {
		return &lineError{keyLine(root, "schedule"), "schedule durations must not be negative"}
	}
	if s.Repeat > 0 && s.Repeat < time.Minute {
		return &lineError{keyLine(root, "schedule", "repeat"), "schedule.repeat must be at least 1m"}
	}
	if s.EndAction != "" && s.EndAction != "cancel" && s.EndAction != "pause" {
		return &lineError{keyLine(root, "schedule", "end_action"), fmt.Sprintf("schedule.end_action is cancel or pause, not %s", quote(s.EndAction))}
	}
	for i, w := range s.Windows {
		if _, err := w.schedule(); err != nil {
			return &lineError{w.Line, fmt.Sprintf("schedule.windows[%d]: %v", i, err)}
		}
		if w.Duration <= 0 {
			return &lineError{w.Line, fmt.Sprintf("schedule.windows[%d]: duration is required", i)}
		}
		if w.Duration <= s.Cutoff {
			return &lineError{w.Line, fmt.Sprintf("schedule.windows[%d]: duration %s is not longer than cutoff %s", i, w.Duration, s.Cutoff)}
		}
	}
	return nil
}
