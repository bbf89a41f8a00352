package version

import (
	"runtime/debug"
	"strings"
	"testing"
)

func info(version string, settings ...string) func() (*debug.BuildInfo, bool) {
	return func() (*debug.BuildInfo, bool) {
		bi := &debug.BuildInfo{GoVersion: "go1.0", Main: debug.Module{Version: version}}
		for i := 0; i+1 < len(settings); i += 2 {
			bi.Settings = append(bi.Settings, debug.BuildSetting{Key: settings[i], Value: settings[i+1]})
		}
		return bi, true
	}
}

// TestLdflagsWin: values set at link time are what Get says, whatever the
// build info holds.
func TestLdflagsWin(t *testing.T) {
	i := get("v1.2.3", "abc123", "2026-12-01T00:00:00Z", info("v0.0.1", "vcs.revision", "fff", "vcs.time", "2020-01-01T00:00:00Z", "vcs.modified", "true"))
	if i.Version != "v1.2.3" || i.Commit != "abc123" || i.Date != "2026-12-01T00:00:00Z" || !strings.HasPrefix(i.GoVersion, "go") {
		t.Fatalf("%+v", i)
	}
}

// TestBuildInfoFallback: without -ldflags, the module version and the VCS
// stamp of the build; a dirty tree says so; nothing at all says so too.
func TestBuildInfoFallback(t *testing.T) {
	i := get("", "", "", info("v0.4.0", "vcs.revision", "0123abcd", "vcs.time", "2026-11-30T10:00:00Z", "vcs.modified", "true"))
	if i.Version != "v0.4.0" || i.Commit != "0123abcd-dirty" || i.Date != "2026-11-30T10:00:00Z" {
		t.Fatalf("%+v", i)
	}
	i = get("", "", "", info("(devel)"))
	if i.Version != "dev" || i.Commit != "unknown" || i.Date != "unknown" {
		t.Fatalf("%+v", i)
	}
	if s := i.String(); !strings.HasPrefix(s, "dev (commit unknown, built unknown, go") {
		t.Fatalf("String: %q", s)
	}
	i = get("", "", "", func() (*debug.BuildInfo, bool) { return nil, false })
	if i.Version != "dev" || i.Commit != "unknown" {
		t.Fatalf("%+v", i)
	}
}
