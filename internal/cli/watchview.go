package cli

import (
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/phalafleet/rollout/internal/control"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/textsafe"
)

// The watch view: what status --watch shows, as pure functions of a
// snapshot (one tick's Redis reads, watch.go) and the watch's memory of
// earlier ticks, so the golden tests render it at a fixed clock and width.

// snapshot is what one tick of a watch read.
type snapshot struct {
	At       time.Time
	R        *store.Rollout
	Workers  int // live worker processes; -1: could not tell
	Dead     []store.DeadWorkerSlots
	Rate     float64 // the adaptive rate now (requests/s); RateSet false: none set yet
	RateSet  bool
	RedisErr string        // the last read failed with this; the watch retries
	RetryIn  time.Duration // when it retries
}

// progress is what a watch remembers across ticks.
type progress struct {
	samples    []sample
	key        string    // the counts last seen
	lastChange time.Time // when they last changed
}

type sample struct {
	at        time.Time
	processed int
}

// rateWindow is how far back CVMs/s looks.
const rateWindow = time.Minute

// processed is the CVMs workers have finished (the plan's skipped and
// unchanged ones are counted at apply, and cancelled ones all at once, so
// neither tells a pace, but they are constant through a run).
func processed(r *store.Rollout) int {
	return r.Counts[store.Succeeded] + r.Counts[store.Failed] + r.Counts[store.Unchanged] + r.Counts[store.Skipped]
}

// observe records s in p.
func (p *progress) observe(s snapshot) {
	key := fmt.Sprint(s.R.State, s.R.Stage, s.R.Counts)
	if key != p.key || p.lastChange.IsZero() {
		p.key, p.lastChange = key, s.At
	}
	p.samples = append(p.samples, sample{s.At, processed(s.R)})
	// Keep one sample at or before the window's start, for a full window.
	for len(p.samples) > 2 && !p.samples[1].at.After(s.At.Add(-rateWindow)) {
		p.samples = p.samples[1:]
	}
}

// perSecond is CVMs finished per second over the window.
func (p *progress) perSecond() float64 {
	if len(p.samples) < 2 {
		return 0
	}
	a, b := p.samples[0], p.samples[len(p.samples)-1]
	dt := b.at.Sub(a.at).Seconds()
	if dt < 1 {
		return 0
	}
	return float64(b.processed-a.processed) / dt
}

// warning is one thing an operator should act on; Kind is stable (JSON,
// and a watch prints a line when the set of kinds changes).
type warning struct {
	Kind    string `json:"kind"`
	Message string `json:"message"`
}

// view is what a frame, a line and a JSON document show.
type view struct {
	PerSecond float64       // CVMs/s
	ETA       time.Duration // 0: unknown
	BakeLeft  time.Duration // the current stage's bake; 0: none
	Warnings  []warning
}

// stallAfter is how long a running rollout with work left may make no
// progress before the watch warns.
const stallAfter = 5 * time.Minute

func derive(s snapshot, p *progress) view {
	r := s.R
	v := view{PerSecond: p.perSecond()}
	left := r.Counts[store.Pending] + r.Counts[store.Running]
	if v.PerSecond > 0 && left > 0 && !r.State.Finished() {
		v.ETA = time.Duration(float64(left) / v.PerSecond * float64(time.Second)).Round(time.Second)
	}
	var cur store.Stage
	if r.Stage < len(r.Stages) {
		cur = r.Stages[r.Stage]
	}
	if !r.State.Finished() && cur.Left() == 0 && !cur.Manual && r.Promoted < r.Stage && r.Stage+1 < len(r.Stages) && !cur.DoneAt.IsZero() {
		if until := cur.DoneAt.Add(cur.Bake); s.At.Before(until) {
			v.BakeLeft = until.Sub(s.At).Round(time.Second)
		}
	}
	if s.RedisErr != "" {
		v.Warnings = append(v.Warnings, warning{"redis", fmt.Sprintf("Redis: %s; retrying in %s (the rollout goes on)", s.RedisErr, s.RetryIn)})
	}
	if s.Workers == 0 && !r.State.Finished() {
		v.Warnings = append(v.Warnings, warning{"no_workers", "no worker is alive: nothing moves until one starts (`worker`)"})
	}
	if quiet := s.At.Sub(p.lastChange); r.State == store.RolloutRunning && cur.Left() > 0 && quiet >= stallAfter {
		v.Warnings = append(v.Warnings, warning{"no_progress", fmt.Sprintf("no progress for %s (since %s)", dur(quiet.Round(time.Minute)), p.lastChange.UTC().Format("15:04:05 UTC"))})
	}
	for _, d := range s.Dead {
		v.Warnings = append(v.Warnings, warning{"dead_worker_slots", fmt.Sprintf("%d CVMs held by dead worker %s (asynq hands them out again once its lease ends)", d.Slots, d.Worker)})
	}
	return v
}

// toPatch is how many CVMs the rollout PATCHes: its stages' sizes.
func toPatch(r *store.Rollout) int {
	n := 0
	for _, s := range r.Stages {
		n += s.Size
	}
	if len(r.Stages) == 0 {
		n = r.Total - r.Counts[store.Unchanged] - r.Counts[store.Skipped]
	}
	return n
}

// countsLine says what the counts count: "patched 282/1718  failed 3 ...",
// then (leftAlone) what the rollout does not PATCH.
func countsLine(r *store.Rollout) string {
	if l := leftAlone(r); l != "" {
		return patchLine(r) + "  (" + l + ")"
	}
	return patchLine(r)
}

// patchLine is the progress of the PATCHes.
func patchLine(r *store.Rollout) string {
	var b strings.Builder
	fmt.Fprintf(&b, "patched %d/%d", r.Counts[store.Succeeded], toPatch(r))
	for _, st := range []store.CVMState{store.Failed, store.Cancelled, store.Running, store.Pending} {
		if n := r.Counts[st]; n > 0 {
			fmt.Fprintf(&b, "  %s %d", st, n)
		}
	}
	return b.String()
}

// leftAlone is "of 1760 selected: 40 unchanged, 2 skipped", or "".
func leftAlone(r *store.Rollout) string {
	if u, k := r.Counts[store.Unchanged], r.Counts[store.Skipped]; u+k > 0 {
		return fmt.Sprintf("of %d selected: %d unchanged, %d skipped", r.Total, u, k)
	}
	return ""
}

// dur is a duration as people write it: 7m, 5m18s, 2h10m.
func dur(d time.Duration) string {
	if d >= time.Hour {
		d = d.Round(time.Minute)
	}
	s := d.Round(time.Second).String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// rateLine is the API rate now, CVMs/s and the ETA.
func rateLine(s snapshot, v view) string {
	var b strings.Builder
	limit := ""
	if l := rateLimit(s.R); l > 0 {
		limit = fmt.Sprintf(" of %g/s", l)
	}
	switch {
	case s.RateSet:
		fmt.Fprintf(&b, "rate %.1f/s%s (adaptive)", s.Rate, limit)
	case limit != "":
		fmt.Fprintf(&b, "rate limit %s", strings.TrimPrefix(limit, " of "))
	default:
		b.WriteString("rate: the workers' default")
	}
	fmt.Fprintf(&b, "   %.1f CVMs/s", v.PerSecond)
	if v.ETA > 0 {
		fmt.Fprintf(&b, "   ETA %s", dur(v.ETA))
	}
	return b.String()
}

// rateLimit is the rollout file's request rate, 0 when it sets none (the
// workers' --rate applies).
func rateLimit(r *store.Rollout) float64 {
	spec, err := control.Spec(r)
	if err != nil {
		return 0
	}
	return spec.Rate.RequestsPerSecond()
}

// renderFrame is the watch's screen at width columns.
func renderFrame(s snapshot, v view, width int) []string {
	r := s.R
	lines := []string{
		fmt.Sprintf("Rollout %s (%s)  %s  %s", r.ID, textsafe.Cell(r.Name), strings.ToUpper(string(r.State)), s.At.UTC().Format("15:04:05 UTC")),
		patchLine(r),
	}
	if l := leftAlone(r); l != "" {
		lines = append(lines, l+" (left alone)")
	}
	if r.Reason != "" {
		lines = append(lines, "  "+textsafe.Cell(r.Reason))
	}
	label, tails := 0, make([]string, len(r.Stages))
	for i, st := range r.Stages {
		label = max(label, len(stageLabel(st)))
		tails[i] = fmt.Sprintf("%d/%d  patched %d", st.Done(), st.Size, st.Counts[store.Succeeded])
		if n := st.Counts[store.Failed]; n > 0 {
			tails[i] += fmt.Sprintf(" failed %d", n)
		}
		if n := st.Counts[store.Running]; n > 0 {
			tails[i] += fmt.Sprintf(" running %d", n)
		}
	}
	tail := 0
	for _, t := range tails {
		tail = max(tail, len(t))
	}
	barW := min(max(width-2-label-4-tail, 10), 50) // "> " label " [" bar "] " tail
	for i, st := range r.Stages {
		mark := "  "
		if st.Index == r.Stage && !r.State.Finished() {
			mark = "> "
		}
		filled := 0
		if st.Size > 0 {
			filled = min(barW*st.Done()/st.Size, barW)
		}
		lines = append(lines, fmt.Sprintf("%s%-*s [%s%s] %s", mark, label, stageLabel(st),
			strings.Repeat("#", filled), strings.Repeat(".", barW-filled), tails[i]))
	}
	lines = append(lines, rateLine(s, v))
	if v.BakeLeft > 0 {
		lines = append(lines, fmt.Sprintf("bake: %s left (`rollout promote %s` ends it now)", dur(v.BakeLeft), r.ID))
	}
	switch {
	case s.Workers > 0:
		lines = append(lines, fmt.Sprintf("workers: %d alive", s.Workers))
	case s.Workers < 0:
		lines = append(lines, "workers: could not tell")
	}
	for _, w := range v.Warnings {
		lines = append(lines, "! "+w.Message)
	}
	lines = append(lines, "Ctrl-C ends this view; the rollout goes on.")
	for i, l := range lines {
		lines[i] = clip(l, width)
	}
	return lines
}

func stageLabel(st store.Stage) string {
	return fmt.Sprintf("%d %s", st.Index+1, textsafe.Cell(st.Name))
}

// clip cuts s to width runes (a longer line would wrap, and the redraw
// would move up too few lines).
func clip(s string, width int) string {
	if width <= 0 || utf8.RuneCountInString(s) <= width {
		return s
	}
	rs := []rune(s)
	if width == 1 {
		return string(rs[:1])
	}
	return string(rs[:width-1]) + "~"
}

// watchLine is the watch's line when stdout is not a terminal.
func watchLine(s snapshot, v view) string {
	r := s.R
	var b strings.Builder
	fmt.Fprintf(&b, "%s  %-9s %s", s.At.Local().Format("15:04:05"), r.State, countsLine(r))
	if len(r.Stages) > 1 {
		fmt.Fprintf(&b, "  stage %d/%d", r.Stage+1, len(r.Stages))
	}
	if v.PerSecond > 0 {
		fmt.Fprintf(&b, "  %.1f CVMs/s", v.PerSecond)
	}
	if v.ETA > 0 {
		fmt.Fprintf(&b, "  ETA %s", dur(v.ETA))
	}
	if r.Reason != "" {
		fmt.Fprintf(&b, "  (%s)", textsafe.Cell(r.Reason)) // an operator's --reason may hold anything
	}
	for _, w := range v.Warnings {
		b.WriteString("  ! " + w.Message)
	}
	return b.String()
}

// changeKey is what makes a watch print a new line or JSON document: the
// rollout's state, stage, reason and counts, and which warnings stand
// (not the clock, the pace or a countdown).
func changeKey(s snapshot, v view) string {
	var b strings.Builder
	fmt.Fprint(&b, s.R.State, s.R.Stage, s.R.Reason, s.R.Counts, s.Workers > 0)
	for _, w := range v.Warnings {
		b.WriteString(" " + w.Kind)
	}
	for _, d := range s.Dead {
		fmt.Fprint(&b, " ", d)
	}
	return b.String()
}

// WatchDoc is one document of `status --watch -o json` (NDJSON: one per
// change, each on one line).
type WatchDoc struct {
	At              time.Time               `json:"at"`
	Rollout         Status                  `json:"rollout"`
	WorkersAlive    int                     `json:"workers_alive"` // -1: could not tell
	DeadWorkerSlots []store.DeadWorkerSlots `json:"dead_worker_slots,omitempty"`
	Rate            *float64                `json:"rate_per_second,omitempty"`       // the adaptive rate now
	RateLimit       float64                 `json:"rate_limit_per_second,omitempty"` // the file's rate (0: the workers' default)
	CVMsPerSecond   float64                 `json:"cvms_per_second"`
	ETASeconds      int                     `json:"eta_seconds,omitempty"`
	BakeLeftSeconds int                     `json:"bake_left_seconds,omitempty"`
	Warnings        []warning               `json:"warnings,omitempty"`
}

func watchDoc(s snapshot, v view) WatchDoc {
	d := WatchDoc{At: s.At.UTC(), Rollout: statusJSON(s.R), WorkersAlive: s.Workers, DeadWorkerSlots: s.Dead,
		CVMsPerSecond: v.PerSecond, ETASeconds: int(v.ETA.Seconds()), BakeLeftSeconds: int(v.BakeLeft.Seconds()), Warnings: v.Warnings}
	if s.RateSet {
		d.Rate = &s.Rate
	}
	d.RateLimit = rateLimit(s.R)
	return d
}
