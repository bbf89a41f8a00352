package plan

import (
	"path"

	"github.com/phalafleet/rollout/internal/api"
)

// Matches reports whether the selector picks cvm.
func (s *Selector) Matches(c *api.CVM) bool {
	if contains(s.ExcludeIDs, c.ID) {
		return false
	}
	if s.All {
		return true
	}
	if len(s.IDs) > 0 && !contains(s.IDs, c.ID) {
		return false
	}
	if len(s.Names) > 0 && !anyGlob(s.Names, c.Name) {
		return false
	}
	if len(s.AppIDs) > 0 && !contains(s.AppIDs, c.AppIDValue()) {
		return false
	}
	if len(s.Nodes) > 0 && !contains(s.Nodes, c.NodeName()) {
		return false
	}
	if len(s.Regions) > 0 && !contains(s.Regions, c.NodeRegion()) {
		return false
	}
	if len(s.Statuses) > 0 && !contains(s.Statuses, c.Status) {
		return false
	}
	return true
}

func contains(l []Str, v string) bool {
	for _, s := range l {
		if s.V == v {
			return true
		}
	}
	return false
}

func anyGlob(l []Str, name string) bool {
	for _, g := range l {
		if ok, _ := matchGlob(g.V, name); ok {
			return true
		}
	}
	return false
}

// matchGlob is shell-glob matching (*, ?, [a-z]) on the whole name.
func matchGlob(pattern, name string) (bool, error) { return path.Match(pattern, name) }
