// Package plan reads a rollout file and turns it, against the live API, into
// a plan: per selected CVM, what a rollout would do (patch, unchanged, skip).
package plan

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"gopkg.in/yaml.v3"
)

// File is a parsed, validated rollout file. The YAML keys are the contract
// in ../shared/docs/product.md; extend them, never rename.
type File struct {
	Name     string   `yaml:"name" json:"name"`
	Selector Selector `yaml:"selector" json:"selector"`
	Target   Target   `yaml:"target" json:"target"`
	Retry    Retry    `yaml:"retry" json:"retry"`
	Rate     Rate     `yaml:"rate" json:"rate"`

	// Stages split the CVMs to patch into waves; Bake is the default wait
	// after a stage before the next starts.
	Stages        []StageSpec    `yaml:"stages" json:"stages,omitempty"`
	Bake          time.Duration  `yaml:"bake" json:"bake,omitempty"`
	FailureBudget *FailureBudget `yaml:"failure_budget" json:"failure_budget,omitempty"`
	Schedule      *Schedule      `yaml:"schedule" json:"schedule,omitempty"`
	// Notify lists where the rollout's events are POSTed (notify.go).
	Notify []Notify `yaml:"notify" json:"notify,omitempty"`

	// Path is where the file was read from (for error lines); not YAML.
	Path string `yaml:"-" json:"-"`
}

// Selector picks CVMs. Every given condition must hold; the items of one
// list are alternatives. An empty selector is an error: `all: true` selects
// the whole workspace on purpose.
type Selector struct {
	All        bool  `yaml:"all" json:"all,omitempty"`
	IDs        []Str `yaml:"ids" json:"ids,omitempty"`
	Names      []Str `yaml:"names" json:"names,omitempty"` // shell globs on the name
	AppIDs     []Str `yaml:"app_ids" json:"app_ids,omitempty"`
	Nodes      []Str `yaml:"nodes" json:"nodes,omitempty"`     // node_info.name
	Regions    []Str `yaml:"regions" json:"regions,omitempty"` // node_info.region
	Statuses   []Str `yaml:"statuses" json:"statuses,omitempty"`
	ExcludeIDs []Str `yaml:"exclude_ids" json:"exclude_ids,omitempty"`
}

// Target is the desired network config. A nil list leaves that list as it
// is; an empty list ([]) resets it to the node's default.
type Target struct {
	KMSURLs     *[]Str `yaml:"kms_urls" json:"kms_urls,omitempty"`
	GatewayURLs *[]Str `yaml:"gateway_urls" json:"gateway_urls,omitempty"`
	Restart     bool   `yaml:"restart" json:"restart,omitempty"`
}

// Retry is the per-CVM retry policy. Zero values take the defaults below.
type Retry struct {
	MaxAttempts int     `yaml:"max_attempts" json:"max_attempts,omitempty"` // tries per CVM, counting the first
	Backoff     Backoff `yaml:"backoff" json:"backoff"`
	// AttemptTimeout bounds one HTTP call; Deadline one whole try of a CVM
	// (reads, PATCH, and waiting for a restart).
	AttemptTimeout time.Duration `yaml:"attempt_timeout" json:"attempt_timeout,omitempty"`
	Deadline       time.Duration `yaml:"deadline" json:"deadline,omitempty"`
}

// Backoff is exponential with "equal jitter" between Base and Max.
type Backoff struct {
	Base time.Duration `yaml:"base" json:"base,omitempty"`
	Max  time.Duration `yaml:"max" json:"max,omitempty"`
}

// Retry defaults.
const (
	DefaultMaxAttempts    = 8 // with the backoff below, rides out an API outage of at least 2 minutes (7 waits of 2s, 4s, ... 120s, each at least half that)
	DefaultBackoffBase    = 2 * time.Second
	DefaultBackoffMax     = 2 * time.Minute
	DefaultAttemptTimeout = 30 * time.Second
	DefaultDeadline       = 5 * time.Minute
)

// WithDefaults returns r with every unset field at its default.
func (r Retry) WithDefaults() Retry {
	if r.MaxAttempts == 0 {
		r.MaxAttempts = DefaultMaxAttempts
	}
	if r.Backoff.Base == 0 {
		r.Backoff.Base = DefaultBackoffBase
	}
	if r.Backoff.Max == 0 {
		r.Backoff.Max = DefaultBackoffMax
	}
	if r.AttemptTimeout == 0 {
		r.AttemptTimeout = DefaultAttemptTimeout
	}
	if r.Deadline == 0 {
		r.Deadline = DefaultDeadline
	}
	return r
}

// Delay is the wait before retry n (1-based): with d = min(Max,
// Base*2^(n-1)), a random duration in [d/2, d] ("equal jitter": spread out,
// yet the total wait of n retries has a floor, so a short API outage does
// not use up every attempt), at least one second since asynq schedules
// retries in whole seconds.
func (b Backoff) Delay(n int) time.Duration {
	d := b.Base
	for i := 1; i < n && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max)
	return max(time.Second, d/2+time.Duration(rand.Int64N(int64(d/2)+1)))
}

// Str is a string that remembers the file line it came from, so an error
// about one list item can name its line.
type Str struct {
	V    string
	Line int
}

// UnmarshalYAML accepts a scalar only.
func (s *Str) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		return &lineError{n.Line, fmt.Sprintf("expected a string, got %s", kindName(n))}
	}
	s.V, s.Line = n.Value, n.Line
	return nil
}

// MarshalJSON writes the plain string.
func (s Str) MarshalJSON() ([]byte, error) { return []byte(strconv.Quote(s.V)), nil }

// UnmarshalJSON reads the plain string (a stored spec read back).
func (s *Str) UnmarshalJSON(b []byte) error {
	v, err := strconv.Unquote(string(b))
	s.V = v
	return err
}

// Values returns the plain strings.
func Values(l []Str) []string {
	out := make([]string, len(l))
	for i, s := range l {
		out[i] = s.V
	}
	return out
}

// KMS and Gateway return the target lists as plain strings (nil: unchanged).
func (t Target) KMS() []string     { return ptrValues(t.KMSURLs) }
func (t Target) Gateway() []string { return ptrValues(t.GatewayURLs) }

func ptrValues(p *[]Str) []string {
	if p == nil {
		return nil
	}
	return Values(*p)
}
