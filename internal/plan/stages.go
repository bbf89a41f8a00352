package plan

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// StageSpec is one entry of `stages:`. Written as a number (a count of
// CVMs), a percentage string ("10%", of all CVMs to patch), or a mapping
// {name, count | percent, bake, promote}.
type StageSpec struct {
	Name    string         `yaml:"name" json:"name,omitempty"`
	Count   int            `yaml:"count" json:"count,omitempty"`
	Percent float64        `yaml:"percent" json:"percent,omitempty"`
	Bake    *time.Duration `yaml:"bake" json:"bake,omitempty"`       // nil: the file's bake
	Promote string         `yaml:"promote" json:"promote,omitempty"` // auto (default) or manual
	Line    int            `yaml:"-" json:"-"`
}

// UnmarshalYAML takes the short forms (10, "10%") and the mapping form.
func (s *StageSpec) UnmarshalYAML(n *yaml.Node) error {
	s.Line = n.Line
	switch n.Kind {
	case yaml.ScalarNode:
		q, err := parseQuantity(n.Value)
		if err != nil {
			return &lineError{n.Line, "stages: " + err.Error()}
		}
		s.Count, s.Percent = q.Count, q.Percent
		return nil
	case yaml.MappingNode:
		type plain StageSpec // no UnmarshalYAML: decode the fields
		var p plain
		if err := n.Decode(&p); err != nil {
			return err
		}
		*s = StageSpec(p)
		s.Line = n.Line
		return nil
	}
	return &lineError{n.Line, "stages: each stage is a count (10), a percentage (\"10%\") or a mapping {name, count|percent, bake, promote}"}
}

// Quantity is a count or a percentage ("2%").
type Quantity struct {
	Count   int     `json:"count,omitempty"`
	Percent float64 `json:"percent,omitempty"`
	Set     bool    `json:"set,omitempty"`
}

// UnmarshalYAML takes 5 or "2%".
func (q *Quantity) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return &lineError{n.Line, "expected a count (5) or a percentage (\"2%\")"}
	}
	v, err := parseQuantity(n.Value)
	if err != nil {
		return &lineError{n.Line, err.Error()}
	}
	*q = v
	return nil
}

func parseQuantity(s string) (Quantity, error) {
	s = strings.TrimSpace(s)
	if p, ok := strings.CutSuffix(s, "%"); ok {
		f, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil || f <= 0 || f > 100 || math.IsNaN(f) {
			return Quantity{}, fmt.Errorf("%s is not a percentage between 0 and 100", quote(s))
		}
		return Quantity{Percent: f, Set: true}, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return Quantity{}, fmt.Errorf("%s is not a count or a percentage", quote(s))
	}
	return Quantity{Count: n, Set: true}, nil
}

// Of is the quantity of total: a count as is, a percentage rounded down.
func (q Quantity) Of(total int) int {
	if q.Percent > 0 {
		return int(math.Floor(q.Percent * float64(total) / 100))
	}
	return q.Count
}

// Stage is one stage of a plan: its name, members and gate.
type Stage struct {
	Name    string        `json:"name"`
	Size    int           `json:"size"`
	Bake    time.Duration `json:"-"`
	Promote string        `json:"promote"`
}

// stageJSON is Stage as -o json shows it: the bake as a duration string
// ("15m0s"), as the file writes it, not in nanoseconds.
type stageJSON struct {
	Name    string `json:"name"`
	Size    int    `json:"size"`
	Bake    string `json:"bake"`
	Promote string `json:"promote"`
}

func (s Stage) MarshalJSON() ([]byte, error) {
	return json.Marshal(stageJSON{s.Name, s.Size, s.Bake.String(), s.Promote})
}

func (s *Stage) UnmarshalJSON(b []byte) error {
	var j stageJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	d, err := time.ParseDuration(j.Bake)
	if err != nil {
		return fmt.Errorf("stage %q: bake: %v", j.Name, err)
	}
	*s = Stage{j.Name, j.Size, d, j.Promote}
	return nil
}

// StagePlan sizes the stages for total CVMs to patch, Ansible `serial`
// style: each entry is the size of one stage (a percentage is of total,
// rounded down, at least 1); the last entry repeats until every CVM has a
// stage; entries past the last CVM are dropped. No stages: one stage "all".
func StagePlan(specs []StageSpec, total int, defaultBake time.Duration) []Stage {
	if len(specs) == 0 {
		return []Stage{{Name: "all", Size: total, Promote: "auto"}}
	}
	var out []Stage
	left := total
	for i := 0; left > 0; i++ {
		sp := specs[min(i, len(specs)-1)]
		size := max(1, Quantity{Count: sp.Count, Percent: sp.Percent}.Of(total))
		size = min(size, left)
		st := Stage{Name: sp.Name, Size: size, Bake: defaultBake, Promote: sp.Promote}
		if st.Name == "" || i >= len(specs) {
			st.Name = fmt.Sprintf("stage-%d", i+1)
		}
		if sp.Bake != nil {
			st.Bake = *sp.Bake
		}
		if st.Promote == "" {
			st.Promote = "auto"
		}
		out = append(out, st)
		left -= size
	}
	if len(out) == 0 { // nothing to patch
		out = []Stage{{Name: "all", Promote: "auto"}}
	}
	return out
}

func validateStages(specs []StageSpec, bake time.Duration, root *yaml.Node) error {
	if bake < 0 {
		return &lineError{keyLine(root, "bake"), "bake must not be negative"}
	}
	names := map[string]int{}
	for i, s := range specs {
		where := fmt.Sprintf("stages[%d]", i)
		switch {
		case s.Count < 0:
			return &lineError{s.Line, where + ": count must not be negative"}
		case s.Count > 0 && s.Percent > 0:
			return &lineError{s.Line, where + ": give count or percent, not both"}
		case s.Count == 0 && s.Percent == 0:
			return &lineError{s.Line, where + ": a stage needs a count (> 0) or a percent"}
		case s.Percent < 0 || s.Percent > 100:
			return &lineError{s.Line, where + ": percent must be between 0 and 100"}
		case s.Promote != "" && s.Promote != "auto" && s.Promote != "manual":
			return &lineError{s.Line, fmt.Sprintf("%s: promote is auto or manual, not %s", where, quote(s.Promote))}
		case s.Bake != nil && *s.Bake < 0:
			return &lineError{s.Line, where + ": bake must not be negative"}
		}
		if s.Name != "" {
			if first, ok := names[s.Name]; ok {
				return &lineError{s.Line, fmt.Sprintf("%s: stage name %s used twice (first on line %d)", where, quote(s.Name), first)}
			}
			names[s.Name] = s.Line
		}
	}
	return nil
}

// FailureBudget pauses (or cancels) a rollout when too many CVMs fail.
//
// Exact rule: failures and executions count over the whole rollout (every
// stage); executed = succeeded + failed (skipped, unchanged and cancelled
// never count). Once executed >= min_executed, the rollout trips as soon as
// failed > max_failed, where a percentage of max_failed is of the CVMs the
// plan will patch, rounded down. So max_failed: 0 pauses at the first
// failure, and `plan` prints "pauses after max_failed+1 failures".
// CVMs already in flight when it trips finish and are recorded.
type FailureBudget struct {
	MaxFailed   Quantity `yaml:"max_failed" json:"max_failed"`
	MinExecuted int      `yaml:"min_executed" json:"min_executed,omitempty"`
	Action      string   `yaml:"action" json:"action,omitempty"` // pause (default) or cancel
}

// Limit is max_failed as a count for total CVMs to patch.
func (b *FailureBudget) Limit(total int) int { return b.MaxFailed.Of(total) }

// TripState is the rollout state the budget leads to.
func (b *FailureBudget) TripState() string {
	if b.Action == "cancel" {
		return "cancelled"
	}
	return "paused"
}

func (b *FailureBudget) validate(root *yaml.Node) error {
	if b == nil {
		return nil
	}
	if !b.MaxFailed.Set {
		return &lineError{keyLine(root, "failure_budget"), "failure_budget.max_failed is required (a count or a percentage)"}
	}
	if b.MinExecuted < 0 {
		return &lineError{keyLine(root, "failure_budget", "min_executed"), "failure_budget.min_executed must not be negative"}
	}
	if b.Action != "" && b.Action != "pause" && b.Action != "cancel" {
		return &lineError{keyLine(root, "failure_budget", "action"), fmt.Sprintf("failure_budget.action is pause or cancel, not %s", quote(b.Action))}
	}
	return nil
}
