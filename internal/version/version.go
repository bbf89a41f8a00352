// Package version says which build is running: set at link time by a
// release build (-ldflags "-X github.com/phalafleet/rollout/internal/version.Version=v1.2.3
// -X ...Commit=... -X ...Date=..."; deploy/Dockerfile and README show it),
// else taken from what the Go toolchain stamps into every binary
// (runtime/debug.ReadBuildInfo: the module version of `go install
// ...@v1.2.3`, vcs.revision and vcs.time of a build in a git checkout).
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Set with -ldflags -X; empty means "ask the build info".
var (
	Version string
	Commit  string
	Date    string // RFC 3339, UTC
)

// Info is the running build. rollout --version prints it; the worker's
// rollout_build_info metric carries it as labels.
type Info struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	Date      string `json:"date"`
	GoVersion string `json:"go_version"`
}

// Get is the running build: the -ldflags values where set, the build info
// for the rest, "unknown" where neither says.
func Get() Info {
	return get(Version, Commit, Date, readBuildInfo)
}

func readBuildInfo() (*debug.BuildInfo, bool) { return debug.ReadBuildInfo() }

func get(v, commit, date string, read func() (*debug.BuildInfo, bool)) Info {
	i := Info{Version: v, Commit: commit, Date: date, GoVersion: runtime.Version()}
	if bi, ok := read(); ok {
		if i.GoVersion == "" {
			i.GoVersion = bi.GoVersion
		}
		if i.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			i.Version = bi.Main.Version
		}
		modified := false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				if i.Commit == "" {
					i.Commit = s.Value
				}
			case "vcs.time":
				if i.Date == "" {
					i.Date = s.Value
				}
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
		if modified && commit == "" && i.Commit != "" {
			i.Commit += "-dirty"
		}
	}
	if i.Version == "" {
		i.Version = "dev"
	}
	if i.Commit == "" {
		i.Commit = "unknown"
	}
	if i.Date == "" {
		i.Date = "unknown"
	}
	return i
}

// String is the one line `--version` prints after the program's name.
func (i Info) String() string {
	return fmt.Sprintf("%s (commit %s, built %s, %s)", i.Version, i.Commit, i.Date, i.GoVersion)
}
