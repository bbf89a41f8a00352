package api

import (
	"fmt"
	"strconv"
	"strings"
)

// Version is a parsed VMM version. The API's strings are inconsistent
// ("0.5.7", "v0.5.7", "0.5.7-rc1", "v0.6.0 (git:abc)", null), so they are
// compared as numeric tuples, never as strings ("0.5.10" > "0.5.7").
type Version struct {
	Major, Minor, Patch int
	Pre                 string // "-rc1", "-dev": a pre-release sorts below its release
	Raw                 string
}

// MinNetworkConfigVMM is the lowest VMM that accepts PATCH network-config.
var MinNetworkConfigVMM = Version{Major: 0, Minor: 5, Patch: 7, Raw: "0.5.7"}

// ParseVersion parses a VMM version string. It returns an error for an
// empty or unparseable string; callers treat that as "VMM version unknown".
func ParseVersion(s string) (Version, error) {
	raw := s
	s = strings.TrimSpace(s)
	if i := strings.IndexAny(s, " ("); i >= 0 { // " (git:...)" build suffix
		s = s[:i]
	}
	s = strings.TrimPrefix(strings.TrimPrefix(s, "v"), "V")
	if s == "" {
		return Version{}, fmt.Errorf("empty VMM version")
	}
	v := Version{Raw: raw}
	if i := strings.IndexByte(s, '+'); i >= 0 { // build metadata: ignored in ordering
		s = s[:i]
	}
	if i := strings.IndexByte(s, '-'); i >= 0 {
		v.Pre, s = s[i:], s[:i]
	}
	parts := strings.Split(s, ".")
	if len(parts) > 3 {
		return Version{}, fmt.Errorf("VMM version %q has more than three parts", raw)
	}
	nums := [3]int{}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return Version{}, fmt.Errorf("VMM version %q is not numeric", raw)
		}
		nums[i] = n
	}
	v.Major, v.Minor, v.Patch = nums[0], nums[1], nums[2]
	return v, nil
}

// Compare returns -1, 0 or 1. A pre-release is below the same release;
// two pre-releases of one release compare by their suffix text.
func (v Version) Compare(o Version) int {
	for _, d := range [3]int{v.Major - o.Major, v.Minor - o.Minor, v.Patch - o.Patch} {
		if d < 0 {
			return -1
		}
		if d > 0 {
			return 1
		}
	}
	switch {
	case v.Pre == o.Pre:
		return 0
	case v.Pre == "":
		return 1
	case o.Pre == "":
		return -1
	case v.Pre < o.Pre:
		return -1
	}
	return 1
}

// Less reports v < o.
func (v Version) Less(o Version) bool { return v.Compare(o) < 0 }

func (v Version) String() string {
	return fmt.Sprintf("%d.%d.%d%s", v.Major, v.Minor, v.Patch, v.Pre)
}

// VMMGate says whether a CVM on this VMM version can take a network-config
// PATCH. ok is false with a reason for a VMM below 0.5.7 or an unknown one.
// This is the one place that decides it; plan and worker both call it.
func VMMGate(raw string) (ok bool, reason string) {
	if strings.TrimSpace(raw) == "" {
		return false, "VMM version unknown"
	}
	v, err := ParseVersion(raw)
	if err != nil {
		return false, fmt.Sprintf("VMM version unknown (%q)", raw)
	}
	if v.Less(MinNetworkConfigVMM) {
		return false, fmt.Sprintf("VMM %s is below %s", strings.TrimSpace(raw), MinNetworkConfigVMM.Raw)
	}
	return true, ""
}
