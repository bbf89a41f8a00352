package cli

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/phalafleet/rollout/internal/bench"
	"github.com/phalafleet/rollout/internal/limitbench"
)

// stageDemo is the bench stage that times `rollout demo` (miniredis);
// stageLimits measures the fleet-wide limits (internal/limitbench).
const (
	stageDemo   = "demo"
	stageLimits = "limits"
)

// runBench is `rollout bench`: the figures of BENCHMARKS.md.
func runBench(ctx context.Context, e *Env, args []string) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	redisURL := fs.String("redis", "", "real Redis to measure on; its database is FLUSHED (required unless --only demo)")
	all := append(append([]string{}, bench.Stages...), stageLimits, stageDemo)
	only := fs.String("only", strings.Join(all, ","), "stages to run")
	sizes := fs.String("n", "", "CVMs per stage, e.g. enqueue=50000,process=20000,plan=20000,status=100000,memory=20000,demo=10000")
	conc := fs.Int("concurrency", 50, "worker concurrency of the process stage (and of its no-op baseline)")
	repeat := fs.Int("repeat", 3, "rounds of the enqueue and process stages (best of them is reported)")
	rssConc := fs.Int("rss-concurrency", 200, "concurrency of the worker subprocess whose RSS is measured")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the process stage's worker run to this file (and of its raw handler run to FILE.raw)")
	workerBin := fs.String("worker-bin", "", "built cmd/worker for the RSS measure (default: go build one)")
	limits := fs.String("limits", strings.Join(limitBenches, ","), "measures of the limits stage to run")
	out := fs.String("o", "table", "output: table or markdown")
	if err := noArgs(fs, args); err != nil {
		return err
	}
	if err := checkFormat(*out, "table", "markdown"); err != nil {
		return err
	}
	stages := strings.Split(*only, ",")
	for _, s := range stages {
		if !slices.Contains(all, s) {
			return fmt.Errorf("--only %s: expected some of %s", s, strings.Join(all, ","))
		}
	}
	n := map[string]int{stageDemo: 10_000}
	if *sizes != "" {
		for _, kv := range strings.Split(*sizes, ",") {
			k, v, ok := strings.Cut(kv, "=")
			num, err := strconv.Atoi(v)
			if !ok || err != nil || num <= 0 || !slices.Contains(all, k) {
				return fmt.Errorf("--n %s: expected stage=count, stage one of %s", kv, strings.Join(all, ","))
			}
			n[k] = num
		}
	}

	var rows []bench.Row
	if stages := slices.DeleteFunc(slices.Clone(stages), func(s string) bool { return s == stageDemo || s == stageLimits }); len(stages) > 0 {
		if *redisURL == "" {
			return fmt.Errorf("bench: --redis is required (a Redis of its own: every stage FLUSHes its database), e.g. redis-server --port 16400 --save '' --appendonly no --daemonize yes; --redis redis://127.0.0.1:16400/0")
		}
		var err error
		rows, err = bench.Run(ctx, bench.Config{RedisURL: *redisURL, Only: stages, Sizes: n, Concurrency: *conc, Repeat: *repeat,
			RSSConcurrency: *rssConc, CPUProfile: *cpuprofile, WorkerBin: *workerBin, Progress: e.Stderr})
		if err != nil {
			return err
		}
	}
	if slices.Contains(stages, stageLimits) {
		if *redisURL == "" {
			return fmt.Errorf("bench: --only limits needs --redis (its database is FLUSHED)")
		}
		for _, l := range strings.Split(*limits, ",") {
			if !slices.Contains(limitBenches, l) {
				return fmt.Errorf("--limits %s: expected some of %s", l, strings.Join(limitBenches, ","))
			}
		}
		lr, err := benchLimits(ctx, e, *redisURL, *workerBin, strings.Split(*limits, ","))
		if err != nil {
			return err
		}
		rows = append(rows, lr...)
	}
	if slices.Contains(stages, stageDemo) {
		rows = append(rows, benchDemo(ctx, e, n[stageDemo]))
	}
	fmt.Fprintln(e.Stdout)
	if *out == "markdown" {
		bench.PrintMarkdown(e.Stdout, rows)
	} else {
		bench.Print(e.Stdout, rows)
	}
	return nil
}

var demoTimes = regexp.MustCompile(`Planned in (\S+), rolled out in (\S+), (\S+) in all\.`)
var demoPatches = regexp.MustCompile(`saw (\d+) requests and (\d+) PATCHes`)

// benchDemo times `rollout demo --cvms n`: embedded miniredis, simulator,
// planner and two in-process workers.
func benchDemo(ctx context.Context, e *Env, n int) bench.Row {
	fmt.Fprintf(e.Stderr, "%s bench: demo: started\n", time.Now().Format("15:04:05.000"))
	var buf bytes.Buffer
	start := time.Now()
	err := runDemo(ctx, &Env{Stdout: &buf, Stderr: io.Discard, Stdin: strings.NewReader(""), Getenv: func(string) string { return "" }},
		[]string{"--cvms", strconv.Itoa(n)})
	d := time.Since(start)
	fmt.Fprintf(e.Stderr, "%s bench: demo: done in %s\n", time.Now().Format("15:04:05.000"), d.Round(time.Millisecond))
	row := bench.Row{Stage: fmt.Sprintf("demo --cvms %d (miniredis, 2 workers x 100)", n), Ours: fmt.Sprintf("%.2f s", d.Seconds()), Result: "info"}
	if err != nil {
		row.Result, row.Note = "FAIL", "error: "+err.Error()
		return row
	}
	if m := demoTimes.FindStringSubmatch(buf.String()); m != nil {
		row.Note = fmt.Sprintf("planned in %s, rolled out in %s", m[1], m[2])
	}
	if m := demoPatches.FindStringSubmatch(buf.String()); m != nil {
		if p, _ := strconv.Atoi(m[2]); p > 0 {
			if ds, err := time.ParseDuration(demoTimes.FindStringSubmatch(buf.String())[2]); err == nil {
				row.Note += fmt.Sprintf(" (%s PATCHes, %.0f CVMs/s)", m[2], float64(p)/ds.Seconds())
			}
		}
		row.Note += "; " + m[1] + " simulator requests"
	}
	return row
}

// benchLimits measures the fleet-wide limits: a 60 req/s rate shared by 3
// worker processes over a 30 s window, max_in_flight 20 at 100 ms of API
// latency, and adaptive mode under an unstated 40 req/s API limit.
// limitBenches are the measures of the limits stage (--limits), in order.
var limitBenches = []string{"shared", "inflight", "noise", "unknown", "step", "plan-known", "plan-unknown", "e2e"}

func benchLimits(ctx context.Context, e *Env, redisURL, workerBin string, only []string) ([]bench.Row, error) {
	cfg := limitbench.Config{RedisURL: redisURL, WorkerBin: workerBin, Rate: 60, Window: 30 * time.Second, Progress: e.Stderr}
	var rows []bench.Row
	for _, name := range limitBenches {
		if !slices.Contains(only, name) {
			continue
		}
		var r limitbench.Result
		var err error
		switch name {
		case "shared":
			r, err = limitbench.SharedRate(ctx, cfg)
		case "inflight":
			c := cfg
			c.Window = 15 * time.Second
			r, err = limitbench.InFlight(ctx, c, 20, 100*time.Millisecond)
		case "plan-known", "plan-unknown":
			r, err = limitbench.PlanPaced(ctx, cfg, 5000, name == "plan-known")
		case "e2e":
			r, err = limitbench.EndToEnd(ctx, cfg, 5000)
		default:
			r, err = limitbench.Adaptive(ctx, cfg, name)
		}
		if err != nil {
			return nil, err
		}
		res := "pass"
		if !r.Pass {
			res = "FAIL"
		}
		rows = append(rows, bench.Row{Stage: r.Name, Ours: r.Ours, Target: r.Target, Result: res, Note: r.Note})
	}
	return rows, nil
}
