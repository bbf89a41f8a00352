package metrics

import (
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// BuildInfo is the binary's version, its VCS commit and its Go version:
// the module version Go stamped ("(devel)" for a build from a checkout)
// and the vcs.revision setting, "" when unknown.
func BuildInfo() (version, commit, goVersion string) {
	goVersion = runtime.Version()
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "", "", goVersion
	}
	version = bi.Main.Version
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" {
			commit = s.Value
		}
	}
	return version, commit, goVersion
}

// buildInfo is rollout_build_info, 1 with the build in its labels.
func buildInfo() prometheus.Collector {
	version, commit, goVersion := BuildInfo()
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "rollout_build_info",
		Help:        "1, with the worker's version, commit and Go version as labels. Exported by every worker.",
		ConstLabels: prometheus.Labels{"version": version, "commit": commit, "go_version": goVersion}})
	g.Set(1)
	return g
}
