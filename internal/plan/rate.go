package plan

import (
	"gopkg.in/yaml.v3"
)

// Rate limits a rollout's API traffic across every worker. Unset fields
// fall back to the worker's defaults (`worker --rate`, `--max-in-flight`).
type Rate struct {
	PerSecond   float64 `yaml:"per_second" json:"per_second,omitempty"`
	PerMinute   float64 `yaml:"per_minute" json:"per_minute,omitempty"`
	Burst       int     `yaml:"burst" json:"burst,omitempty"`
	MaxInFlight int     `yaml:"max_in_flight" json:"max_in_flight,omitempty"`
	// Adaptive (default true) lowers the rate when the API answers 429 or
	// 503 and raises it again gradually while answers are good.
	Adaptive *bool `yaml:"adaptive" json:"adaptive,omitempty"`
}

// RequestsPerSecond is the configured rate (per_minute converted), or 0.
func (r Rate) RequestsPerSecond() float64 {
	if r.PerSecond > 0 {
		return r.PerSecond
	}
	return r.PerMinute / 60
}

// IsAdaptive reports whether adaptive backoff is on (the default).
func (r Rate) IsAdaptive() bool { return r.Adaptive == nil || *r.Adaptive }

func (r *Rate) validate(root *yaml.Node) error {
	switch {
	case r.PerSecond < 0 || r.PerMinute < 0:
		return &lineError{keyLine(root, "rate"), "rate.per_second and rate.per_minute must not be negative"}
	case r.PerSecond > 0 && r.PerMinute > 0:
		return &lineError{keyLine(root, "rate", "per_minute"), "give rate.per_second or rate.per_minute, not both"}
	case r.Burst < 0:
		return &lineError{keyLine(root, "rate", "burst"), "rate.burst must not be negative"}
	case r.MaxInFlight < 0:
		return &lineError{keyLine(root, "rate", "max_in_flight"), "rate.max_in_flight must not be negative"}
	}
	return nil
}
