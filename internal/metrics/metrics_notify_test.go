package metrics

import (
	"slices"
	"testing"
)

// TestForget: a pruned rollout's series go, the others stay.
func TestForget(t *testing.T) {
	m := New(nil)
	m.Outcome("a", "succeeded")
	m.Snoozed("a")
	m.Outcome("b", "failed")
	if got := m.Rollouts(); len(got) != 2 {
		t.Fatalf("rollouts %v", got)
	}
	m.Forget("a")
	if got := m.Rollouts(); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("after Forget(a): %v", got)
	}
}
