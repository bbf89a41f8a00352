package dashboard

import (
	"context"
	"encoding/json"
	"errors"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/phalafleet/rollout/internal/control"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/tasks"
)

// The JSON each page polls. Field names are snake_case like the CLI's -o json.

type rolloutRow struct {
	ID         string             `json:"id"`
	Name       string             `json:"name"`
	State      store.RolloutState `json:"state"`
	Reason     string             `json:"reason,omitempty"`
	Total      int                `json:"total"`
	Done       int                `json:"done"`
	Patched    int                `json:"patched"`
	Failed     int                `json:"failed"`
	CreatedAt  time.Time          `json:"created_at"`
	Family     string             `json:"family"`
	RunOf      string             `json:"run_of,omitempty"`
	RollbackOf string             `json:"rollback_of,omitempty"`
}

type familyView struct {
	Family   string       `json:"family"`
	Rollouts []rolloutRow `json:"rollouts"` // the root, its runs, then rollbacks, oldest first
}

type listView struct {
	Now      time.Time    `json:"now"`
	Families []familyView `json:"families"`
}

func row(r *store.Rollout) rolloutRow {
	return rolloutRow{ID: r.ID, Name: r.Name, State: r.State, Reason: r.Reason, Total: r.Total, Done: store.DoneOf(r.Counts),
		Patched: r.Counts[store.Succeeded], Failed: r.Counts[store.Failed], CreatedAt: r.CreatedAt,
		Family: r.Family, RunOf: r.RunOf, RollbackOf: r.RollbackOf}
}

// list groups every rollout by family (runs and rollbacks with the
// rollout they came from), the family with the newest member first.
func (h *Handler) list(ctx context.Context) (listView, error) {
	rs, err := h.st.List(ctx) // newest first
	if err != nil {
		return listView{}, err
	}
	v := listView{Now: h.now(), Families: []familyView{}}
	at := map[string]int{}
	for _, r := range rs {
		i, ok := at[r.Family]
		if !ok {
			i, at[r.Family] = len(v.Families), len(v.Families)
			v.Families = append(v.Families, familyView{Family: r.Family})
		}
		v.Families[i].Rollouts = append(v.Families[i].Rollouts, row(r))
	}
	for _, f := range v.Families {
		sort.SliceStable(f.Rollouts, func(a, b int) bool {
			ra, rb := f.Rollouts[a], f.Rollouts[b]
			if (ra.RollbackOf == "") != (rb.RollbackOf == "") {
				return ra.RollbackOf == ""
			}
			return ra.CreatedAt.Before(rb.CreatedAt)
		})
	}
	return v, nil
}

type stageView struct {
	Index   int                    `json:"index"`
	Name    string                 `json:"name"`
	Size    int                    `json:"size"`
	Counts  map[store.CVMState]int `json:"counts"`
	Done    int                    `json:"done"`
	Current bool                   `json:"current"`
	Manual  bool                   `json:"manual"`
	BakeS   float64                `json:"bake_seconds"`
}

// waitView says why the rollout is not moving on now.
type waitView struct {
	// Kind: bake, promote, window (scheduled: not open yet, or between
	// windows), paused, or "" (working, or finished).
	Kind  string     `json:"kind"`
	Text  string     `json:"text,omitempty"`
	Until *time.Time `json:"until,omitempty"` // a bake's end
}

type budgetView struct {
	MaxFailed   int                `json:"max_failed"` // trips at one more
	Failed      int                `json:"failed"`
	Left        int                `json:"left"` // failures still allowed
	MinExecuted int                `json:"min_executed"`
	Executed    int                `json:"executed"`
	Action      store.RolloutState `json:"action"`
}

type rateView struct {
	CVMsPerSecond float64  `json:"cvms_per_second"`       // measured over the last window
	ETASeconds    *float64 `json:"eta_seconds,omitempty"` // nil: not moving
	LimitPerSec   float64  `json:"limit_per_second"`      // the file's rate (0: the workers' default)
	Adaptive      bool     `json:"adaptive"`
	AdaptiveRate  *float64 `json:"adaptive_rate,omitempty"` // requests/s the adaptive limiter allows now; nil: none set yet
	// AdaptiveReason is why the adaptive rate last changed (store.View's
	// PaceReason); the page shows it when set.
	AdaptiveReason string `json:"adaptive_reason,omitempty"`
	InFlight       int    `json:"in_flight"`
	MaxInFlight    int    `json:"max_in_flight"` // 0: the workers' default
}

type failureView struct {
	CVM       string `json:"cvm_id"`
	Message   string `json:"message"`
	RequestID string `json:"request_id,omitempty"`
}

type rolloutView struct {
	Now            time.Time              `json:"now"`
	ID             string                 `json:"id"`
	Name           string                 `json:"name"`
	State          store.RolloutState     `json:"state"`
	Reason         string                 `json:"reason,omitempty"`
	CreatedAt      time.Time              `json:"created_at"`
	CreatedBy      string                 `json:"created_by"`
	Family         string                 `json:"family"`
	RunOf          string                 `json:"run_of,omitempty"`
	RollbackOf     string                 `json:"rollback_of,omitempty"`
	LatestRollback string                 `json:"latest_rollback,omitempty"`
	Total          int                    `json:"total"`
	Done           int                    `json:"done"`
	Counts         map[store.CVMState]int `json:"counts"`
	Stages         []stageView            `json:"stages"`
	Stage          int                    `json:"current_stage"`
	Wait           waitView               `json:"wait"`
	Budget         *budgetView            `json:"budget,omitempty"`
	Rate           rateView               `json:"rate"`
	Failures       []failureView          `json:"failures"`
	Events         []store.Event          `json:"events"`
	// Actions are the operations the rollout's state allows now (the
	// buttons shown to a signed-in operator; control decides in the end).
	Actions []string `json:"actions"`
}

// eventsShown is how much of the audit trail the rollout page shows.
const eventsShown = 50

var requestID = regexp.MustCompile(`\s*\(request_id ([^)]*)\)`)

// rollout builds the rollout page's snapshot from one store.View.
func (h *Handler) rollout(ctx context.Context, id string) (rolloutView, error) {
	sv, err := h.st.View(ctx, id, eventsShown)
	if err != nil {
		return rolloutView{}, err
	}
	r, now := sv.Rollout, h.now()
	v := rolloutView{Now: now, ID: r.ID, Name: r.Name, State: r.State, Reason: r.Reason, CreatedAt: r.CreatedAt, CreatedBy: r.CreatedBy,
		Family: r.Family, RunOf: r.RunOf, RollbackOf: r.RollbackOf, LatestRollback: r.LatestRollback,
		Total: r.Total, Done: store.DoneOf(r.Counts), Counts: r.Counts, Stage: r.Stage, Events: sv.Events, Failures: []failureView{}}
	if v.Events == nil {
		v.Events = []store.Event{}
	}
	for _, s := range r.Stages {
		v.Stages = append(v.Stages, stageView{Index: s.Index, Name: s.Name, Size: s.Size, Counts: s.Counts, Done: s.Done(),
			Current: s.Index == r.Stage && !r.State.Finished(), Manual: s.Manual, BakeS: s.Bake.Seconds()})
	}
	v.Wait = wait(r, now)
	if b := r.Budget; b != nil {
		f, x := r.Counts[store.Failed], r.Counts[store.Failed]+r.Counts[store.Succeeded]
		v.Budget = &budgetView{MaxFailed: b.MaxFailed, Failed: f, Left: max(b.MaxFailed-f, 0), MinExecuted: b.MinExecuted, Executed: x, Action: b.Action}
	}
	v.Rate = rateView{InFlight: sv.InFlight, Adaptive: true}
	if spec, err := control.Spec(r); err == nil {
		v.Rate.LimitPerSec, v.Rate.MaxInFlight = spec.Rate.RequestsPerSecond(), spec.Rate.MaxInFlight
		v.Rate.Adaptive = spec.Rate.Adaptive == nil || *spec.Rate.Adaptive
	}
	if sv.HasPace {
		p := sv.PaceRate
		v.Rate.AdaptiveRate, v.Rate.AdaptiveReason = &p, sv.PaceReason
	}
	left := r.Counts[store.Pending] + r.Counts[store.Running]
	v.Rate.CVMsPerSecond = h.speed.observe(r.ID, now, v.Done, r.State == store.RolloutRunning)
	if v.Rate.CVMsPerSecond > 0 && left > 0 {
		eta := float64(left) / v.Rate.CVMsPerSecond
		v.Rate.ETASeconds = &eta
	}
	for _, f := range sv.Failures {
		cvm, msg, _ := strings.Cut(f, ": ")
		fv := failureView{CVM: cvm, Message: msg}
		if m := requestID.FindStringSubmatch(msg); m != nil {
			fv.RequestID, fv.Message = m[1], strings.TrimSpace(requestID.ReplaceAllString(msg, ""))
		}
		v.Failures = append(v.Failures, fv)
	}
	v.Actions = actions(r)
	return v, nil
}

// wait words why the rollout waits, from its record (the controller's
// note in Reason, the stage's bake and gate).
func wait(r *store.Rollout, now time.Time) waitView {
	switch r.State {
	case store.RolloutPaused:
		return waitView{Kind: "paused", Text: r.Reason}
	case store.RolloutScheduled:
		return waitView{Kind: "window", Text: r.Reason}
	case store.RolloutRunning:
	default:
		return waitView{}
	}
	if r.Stage >= len(r.Stages) || r.Stage == len(r.Stages)-1 || r.Promoted >= r.Stage {
		return waitView{}
	}
	s := r.Stages[r.Stage]
	if s.Left() > 0 {
		return waitView{}
	}
	if s.Manual {
		return waitView{Kind: "promote", Text: r.Reason}
	}
	if s.Bake > 0 && !s.DoneAt.IsZero() {
		until := s.DoneAt.Add(s.Bake)
		if now.Before(until) {
			return waitView{Kind: "bake", Text: r.Reason, Until: &until}
		}
	}
	return waitView{}
}

// actions are the operations r's state allows, in button order.
func actions(r *store.Rollout) []string {
	var out []string
	switch r.State {
	case store.RolloutScheduled, store.RolloutRunning:
		out = append(out, "pause")
	case store.RolloutPaused:
		out = append(out, "resume")
	}
	if !r.State.Finished() {
		out = append(out, "cancel")
		// control.Promote's rule: a finished stage that is not the last.
		if r.Stage < len(r.Stages)-1 && r.Promoted < r.Stage && r.Stages[r.Stage].Left() == 0 {
			out = append(out, "promote")
		}
	}
	if r.Counts[store.Failed] > 0 && r.State != store.RolloutCancelled {
		out = append(out, "retry")
	}
	if out == nil {
		out = []string{}
	}
	return out
}

// speed measures each rollout's CVMs per second from the done counts of
// its snapshots (one sample per tick), over the last speedWindow.
type speed struct {
	mu      sync.Mutex
	samples map[string][]sample
}

type sample struct {
	at   time.Time
	done int
}

const speedWindow = 30 * time.Second

func (s *speed) observe(id string, now time.Time, done int, running bool) float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !running {
		delete(s.samples, id)
		return 0
	}
	if s.samples == nil {
		s.samples = map[string][]sample{}
	}
	for k, l := range s.samples { // rollouts nobody looks at any more
		if now.Sub(l[len(l)-1].at) > 2*speedWindow {
			delete(s.samples, k)
		}
	}
	l := append(s.samples[id], sample{now, done})
	for len(l) > 1 && now.Sub(l[0].at) > speedWindow {
		l = l[1:]
	}
	s.samples[id] = l
	dt := now.Sub(l[0].at).Seconds()
	if dt <= 0 {
		return 0
	}
	return float64(done-l[0].done) / dt
}

type queueInfo struct {
	Pending   int     `json:"pending"`
	Active    int     `json:"active"`
	Scheduled int     `json:"scheduled"`
	Retry     int     `json:"retry"`
	Archived  int     `json:"archived"`
	Completed int     `json:"completed"`
	Processed int     `json:"processed_today"`
	Failed    int     `json:"failed_today"`
	OldestS   float64 `json:"oldest_pending_seconds"`
}

type workerTask struct {
	Rollout string    `json:"rollout"`
	CVM     string    `json:"cvm_id"`
	Started time.Time `json:"started"`
}

type workerView struct {
	Host        string       `json:"host"`
	PID         int          `json:"pid"`
	Concurrency int          `json:"concurrency"`
	Status      string       `json:"status"`
	Started     time.Time    `json:"started"`
	Tasks       []workerTask `json:"tasks"`
}

// holderView is one worker's in-flight slots of one rollout, with its
// heartbeat (the rollout's own, rollout:worker:*).
type holderView struct {
	Worker     string   `json:"worker"`
	Rollout    string   `json:"rollout"`
	CVMs       []string `json:"cvm_ids"`
	Alive      bool     `json:"alive"`
	HeartbeatS float64  `json:"heartbeat_ttl_seconds"`
}

type deadView struct {
	Rollout string `json:"rollout"`
	store.DeadWorkerSlots
}

type queueView struct {
	Now     time.Time    `json:"now"`
	Queue   string       `json:"queue"`
	Info    queueInfo    `json:"info"`
	Workers []workerView `json:"workers"`
	Holders []holderView `json:"holders"`
	Dead    []deadView   `json:"dead"`
}

// queue builds the queue-and-workers page: asynq's counters and server
// heartbeats, and for each active rollout its slot holders and the slots
// dead workers still hold.
func (h *Handler) queue(ctx context.Context) (queueView, error) {
	v := queueView{Now: h.now(), Queue: tasks.Queue, Workers: []workerView{}, Holders: []holderView{}, Dead: []deadView{}}
	if q, err := h.insp.GetQueueInfo(tasks.Queue); err == nil {
		v.Info = queueInfo{Pending: q.Pending, Active: q.Active, Scheduled: q.Scheduled, Retry: q.Retry, Archived: q.Archived,
			Completed: q.Completed, Processed: q.Processed, Failed: q.Failed, OldestS: q.Latency.Seconds()}
	} else if !isQueueNotFound(err) {
		return v, err
	}
	servers, err := h.insp.Servers()
	if err != nil {
		return v, err
	}
	at := map[string]int{}
	for _, s := range servers {
		k := s.Host + "/" + strconv.Itoa(s.PID)
		i, ok := at[k]
		if !ok {
			i, at[k] = len(v.Workers), len(v.Workers)
			v.Workers = append(v.Workers, workerView{Host: s.Host, PID: s.PID, Status: s.Status, Started: s.Started, Tasks: []workerTask{}})
		}
		w := &v.Workers[i]
		w.Concurrency += s.Concurrency
		if s.Started.Before(w.Started) {
			w.Started = s.Started
		}
		for _, a := range s.ActiveWorkers {
			t := workerTask{Started: a.Started}
			var p tasks.Payload
			if json.Unmarshal(a.TaskPayload, &p) == nil {
				t.Rollout, t.CVM = p.Rollout, p.CVM
			}
			w.Tasks = append(w.Tasks, t)
		}
	}
	sort.Slice(v.Workers, func(a, b int) bool {
		return v.Workers[a].Host+strconv.Itoa(v.Workers[a].PID) < v.Workers[b].Host+strconv.Itoa(v.Workers[b].PID)
	})
	ids, err := h.st.Active(ctx)
	if err != nil {
		return v, err
	}
	for _, id := range ids {
		held, err := h.lim.Holders(ctx, id)
		if err != nil {
			return v, err
		}
		names := make([]string, 0, len(held))
		for w := range held {
			names = append(names, w)
		}
		sort.Strings(names)
		ttl, err := h.lim.HeartbeatTTL(ctx, names)
		if err != nil {
			return v, err
		}
		for _, w := range names {
			v.Holders = append(v.Holders, holderView{Worker: w, Rollout: id, CVMs: held[w], Alive: ttl[w] > 0, HeartbeatS: ttl[w].Seconds()})
		}
		dead, err := h.lim.DeadWorkerSlots(ctx, id)
		if err != nil {
			return v, err
		}
		for _, d := range dead {
			v.Dead = append(v.Dead, deadView{Rollout: id, DeadWorkerSlots: d})
		}
	}
	return v, nil
}

// isQueueNotFound: no task was ever queued (an empty queue, not an error).
// (asynq's inspector wraps its own error type here, so the text decides.)
func isQueueNotFound(err error) bool {
	return errors.Is(err, asynq.ErrQueueNotFound) || strings.Contains(err.Error(), "not found") || strings.Contains(err.Error(), "does not exist")
}
