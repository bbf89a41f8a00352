package plan

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// Notify is one notification target of a rollout file: where the events
// of the rollout (and of its runs and rollbacks) are POSTed. The secret is
// never in the file: SecretEnv names the environment variable of the
// workers that holds it.
type Notify struct {
	URL       Str   `yaml:"url" json:"url"`
	Events    []Str `yaml:"events" json:"events,omitempty"` // none: every event
	SecretEnv Str   `yaml:"secret_env" json:"secret_env,omitzero"`
	Format    Str   `yaml:"format" json:"format,omitzero"` // json (default) or slack
	Line      int   `yaml:"-" json:"-"`
}

// NotifyEvents are the events a notification target can ask for, in the
// order a rollout goes through them.
var NotifyEvents = []string{"applied", "stage_started", "stage_completed", "paused", "resumed", "budget_tripped",
	"completed", "cancelled", "rollback_started", "rollback_completed", "stalled"}

var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

func validateNotify(l []Notify, line func(i int) int) error {
	seen := map[string]int{}
	for i, n := range l {
		where := fmt.Sprintf("notify[%d]", i)
		at := n.URL.Line
		if at == 0 {
			at = line(i)
		}
		if n.URL.V == "" {
			return &lineError{at, where + ": url is required"}
		}
		if err := checkURL(n.URL.V); err != nil {
			return &lineError{at, fmt.Sprintf("%s.url: %s %s", where, quote(redactURL(n.URL.V)), err)}
		}
		if first, ok := seen[n.URL.V]; ok {
			return &lineError{at, fmt.Sprintf("%s: url %s listed twice (first on line %d)", where, quote(redactURL(n.URL.V)), first)}
		}
		seen[n.URL.V] = at
		for _, e := range n.Events {
			if !slices.Contains(NotifyEvents, e.V) {
				return &lineError{e.Line, fmt.Sprintf("%s.events: %s is not an event (one of %s)", where, quote(e.V), strings.Join(NotifyEvents, ", "))}
			}
		}
		if n.SecretEnv.V != "" && !envName.MatchString(n.SecretEnv.V) {
			return &lineError{n.SecretEnv.Line, where + ".secret_env is not an environment variable name (it names the variable that holds the secret, never the secret; the value is not repeated here)"}
		}
		if f := n.Format.V; f != "" && f != "json" && f != "slack" {
			return &lineError{n.Format.Line, fmt.Sprintf("%s.format: json or slack, not %s", where, quote(f))}
		}
	}
	return nil
}
