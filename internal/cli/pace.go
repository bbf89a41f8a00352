package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/phalafleet/rollout/internal/plan"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/textsafe"
)

// RateStatus is `status -o json`'s "rate": the rollout's request rate,
// as the adaptive rate last set it, and why.
type RateStatus struct {
	PerSecond         float64    `json:"per_second,omitempty"` // the file's
	Adaptive          bool       `json:"adaptive"`
	AdaptivePerSecond float64    `json:"adaptive_per_second,omitempty"` // 0: none set yet
	Reason            string     `json:"reason,omitempty"`
	ChangedAt         *time.Time `json:"changed_at,omitempty"`
}

// rateStatus reads r's rate: nil when its file sets none (the workers'
// --rate may still pace it; their adaptive rate is then shown if set).
func rateStatus(ctx context.Context, st *store.Store, r *store.Rollout) (*RateStatus, error) {
	var f plan.File
	_ = json.Unmarshal([]byte(r.Spec), &f) // a spec that does not decode shows no file rate
	rs := &RateStatus{PerSecond: f.Rate.RequestsPerSecond(), Adaptive: f.Rate.IsAdaptive()}
	rate, reason, at, err := store.NewLimits(st.Redis()).PaceState(ctx, r.ID)
	if err != nil {
		return nil, err
	}
	rs.AdaptivePerSecond, rs.Reason = rate, reason
	if !at.IsZero() {
		rs.ChangedAt = &at
	}
	if rs.PerSecond == 0 && rate == 0 {
		return nil, nil
	}
	return rs, nil
}

// printRate prints status's "Rate:" line, if the rollout has a rate.
func printRate(ctx context.Context, w io.Writer, st *store.Store, r *store.Rollout) {
	rs, err := rateStatus(ctx, st, r)
	switch {
	case err != nil:
		fmt.Fprintf(w, "Rate:     could not read: %v\n", err)
	case rs == nil:
	case !rs.Adaptive || rs.AdaptivePerSecond == 0:
		fmt.Fprintf(w, "Rate:     %g req/s (the file's)\n", rs.PerSecond)
	default:
		fmt.Fprintf(w, "Rate:     %.1f req/s adaptive", rs.AdaptivePerSecond)
		if rs.PerSecond > 0 {
			fmt.Fprintf(w, " (file %g)", rs.PerSecond)
		}
		if rs.Reason != "" {
			fmt.Fprintf(w, ": %s", textsafe.Cell(rs.Reason))
		}
		if rs.ChangedAt != nil {
			fmt.Fprintf(w, ", %s", rs.ChangedAt.Local().Format(time.TimeOnly))
		}
		fmt.Fprintln(w)
	}
}
