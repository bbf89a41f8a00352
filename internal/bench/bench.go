// Package bench measures the rollout end to end against a real Redis and
// the API simulator on loopback, each figure next to a baseline measured in
// the same run: `rollout bench` prints the table BENCHMARKS.md records.
//
// Every stage FLUSHes the Redis database it is given, so point it at a
// server (or a database) of its own.
package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/phalafleet/rollout/internal/redisconn"
	"github.com/redis/go-redis/v9"
)

// Stage names, in the order Run runs them.
const (
	StageEnqueue = "enqueue"
	StageProcess = "process"
	StagePlan    = "plan"
	StageStatus  = "status"
	StageMemory  = "memory"
)

// Stages lists the stages this package runs, in order.
var Stages = []string{StageEnqueue, StageProcess, StagePlan, StageStatus, StageMemory}

// DefaultSizes are the sizes: CVMs per stage.
var DefaultSizes = map[string]int{
	StageEnqueue: 50_000,
	StageProcess: 20_000,
	StagePlan:    20_000,
	StageStatus:  100_000, // the 1,000-CVM rollout is measured too
	StageMemory:  20_000,  // Redis bytes per CVM and the worker RSS run
}

// Config is what a run measures.
type Config struct {
	RedisURL string         // a real Redis; its database is flushed
	Only     []string       // stages to run (default: all)
	Sizes    map[string]int // CVMs per stage (default DefaultSizes)

	// EnqueueGoroutines is the baseline's concurrency (16, as the
	// Enqueuer's default).
	EnqueueGoroutines int
	// Concurrency is the worker concurrency of the process stage, used for
	// the no-op baseline too.
	Concurrency int
	// Repeat is how many rounds the enqueue and process stages run, ours
	// and baseline alternating; the best of each is reported (default 3).
	Repeat int
	// RSSConcurrency is the worker subprocess's --concurrency (200).
	RSSConcurrency int
	// CPUProfile, if set, receives a pprof CPU profile of the worker run.
	CPUProfile string
	// WorkerBin is a built cmd/worker; empty: `go build` one into a temp dir.
	WorkerBin string
	// Progress receives one line per step (may be nil).
	Progress io.Writer
}

// Row is one line of the result table.
type Row struct {
	Stage    string `json:"stage"`
	Ours     string `json:"ours"`
	Baseline string `json:"baseline"`
	Ratio    string `json:"ratio"`
	Target   string `json:"target"`
	Result   string `json:"result"` // pass, FAIL or info
	Note     string `json:"note,omitempty"`
}

func verdict(ok bool) string {
	if ok {
		return "pass"
	}
	return "FAIL"
}

// Run runs the selected stages in order and returns their rows. A stage
// that fails adds a row saying so and the run goes on.
func Run(ctx context.Context, cfg Config) ([]Row, error) {
	rdb, err := redisconn.Open(ctx, cfg.RedisURL)
	if err != nil {
		return nil, err
	}
	defer rdb.Close()
	if len(cfg.Only) == 0 {
		cfg.Only = Stages
	}
	sizes := map[string]int{}
	for k, v := range DefaultSizes {
		sizes[k] = v
	}
	for k, v := range cfg.Sizes {
		sizes[k] = v
	}
	cfg.Sizes = sizes
	if cfg.EnqueueGoroutines <= 0 {
		cfg.EnqueueGoroutines = 16
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 50
	}
	if cfg.Repeat <= 0 {
		cfg.Repeat = 3
	}
	if cfg.RSSConcurrency <= 0 {
		cfg.RSSConcurrency = 200
	}
	if cfg.Progress == nil {
		cfg.Progress = io.Discard
	}
	b := &runner{cfg: cfg, rdb: rdb, log: slog.New(slog.NewTextHandler(cfg.Progress, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	var rows []Row
	for _, st := range Stages {
		if !contains(cfg.Only, st) {
			continue
		}
		var (
			r   []Row
			err error
		)
		start := time.Now()
		b.progress("%s: started", st)
		switch st {
		case StageEnqueue:
			r, err = b.enqueue(ctx)
		case StageProcess:
			r, err = b.process(ctx)
		case StagePlan:
			r, err = b.plan(ctx)
		case StageStatus:
			r, err = b.status(ctx)
		case StageMemory:
			r, err = b.memory(ctx)
		}
		if err != nil {
			r = append(r, Row{Stage: st, Result: "FAIL", Note: "error: " + err.Error()})
		}
		b.progress("%s: done in %s", st, time.Since(start).Round(time.Millisecond))
		rows = append(rows, r...)
	}
	return rows, nil
}

type runner struct {
	cfg Config
	rdb redis.UniversalClient
	log *slog.Logger
}

func (b *runner) progress(format string, args ...any) {
	fmt.Fprintf(b.cfg.Progress, "%s bench: %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

func (b *runner) flush(ctx context.Context) error {
	return b.rdb.FlushDB(ctx).Err()
}

// usedMemory is INFO memory's used_memory: the whole server's, so the
// server should hold nothing else that changes meanwhile.
func usedMemory(ctx context.Context, rdb redis.UniversalClient) (int64, error) {
	s, err := rdb.Info(ctx, "memory").Result()
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(s, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, fmt.Errorf("INFO memory has no used_memory")
}

// Print writes rows as an aligned table.
func Print(w io.Writer, rows []Row) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "STAGE\tOURS\tBASELINE\tRATIO\tTARGET\tRESULT")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Stage, dash(r.Ours), dash(r.Baseline), dash(r.Ratio), dash(r.Target), r.Result)
	}
	tw.Flush()
	for _, r := range rows {
		if r.Note != "" {
			fmt.Fprintf(w, "  %s: %s\n", r.Stage, r.Note)
		}
	}
}

// PrintMarkdown writes rows as a Markdown table (for BENCHMARKS.md).
func PrintMarkdown(w io.Writer, rows []Row) {
	fmt.Fprintln(w, "| Stage | Ours | Baseline | Ratio | Target | Result |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	for _, r := range rows {
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", r.Stage, dash(r.Ours), dash(r.Baseline), dash(r.Ratio), dash(r.Target), r.Result)
	}
	fmt.Fprintln(w)
	for _, r := range rows {
		if r.Note != "" {
			fmt.Fprintf(w, "- %s: %s\n", r.Stage, r.Note)
		}
	}
}

func dash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}

func contains(l []string, s string) bool {
	for _, v := range l {
		if v == s {
			return true
		}
	}
	return false
}

// rate formats n items in d as items per second.
func rate(n int, d time.Duration) string {
	return fmt.Sprintf("%s/s (%s)", thousands(int64(float64(n)/d.Seconds())), secs(d))
}

func secs(d time.Duration) string {
	if d < time.Millisecond {
		return fmt.Sprintf("%d µs", d.Microseconds())
	}
	if d < time.Second {
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}

func pct(x float64) string { return fmt.Sprintf("%.0f%%", 100*x) }

func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// percentile returns the p-th percentile (0..1) of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(float64(len(s)-1) * p)
	return s[i]
}

// cpuMeter reads the CPU time of this process (getrusage) and of the
// redis-server (INFO cpu), to show where a stage's cores went.
type cpuMeter struct {
	rdb         redis.UniversalClient
	start       time.Time
	self, redis time.Duration
	cmds        map[string]int64
}

func newCPUMeter(ctx context.Context, rdb redis.UniversalClient) *cpuMeter {
	m := &cpuMeter{rdb: rdb, start: time.Now(), cmds: commandStats(ctx, rdb)}
	m.self, m.redis = selfCPU(), redisCPU(ctx, rdb)
	return m
}

// cpuUse is what a cpuMeter read.
type cpuUse struct {
	wall, self, redis time.Duration
	cmds              map[string]int64 // Redis commands called, by name
}

// Stop reads the CPU each used since the meter started, and the Redis
// commands called meanwhile.
func (m *cpuMeter) Stop() cpuUse {
	u := cpuUse{wall: time.Since(m.start), self: selfCPU() - m.self, redis: redisCPU(context.Background(), m.rdb) - m.redis,
		cmds: commandStats(context.Background(), m.rdb)}
	for k, v := range m.cmds {
		u.cmds[k] -= v
	}
	return u
}

// commandStats is INFO commandstats: calls by command (the whole server's).
func commandStats(ctx context.Context, rdb redis.UniversalClient) map[string]int64 {
	out := map[string]int64{}
	s, err := rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		return out
	}
	for _, line := range strings.Split(s, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		name, found := strings.CutPrefix(name, "cmdstat_")
		if !ok || !found {
			continue
		}
		for _, kv := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(kv, "calls="); ok {
				out[name], _ = strconv.ParseInt(v, 10, 64)
			}
		}
	}
	return out
}

// cmdsPerItem is Redis commands per item: in all, and the most called.
type cmdsPerItem struct {
	total float64
	top   string
}

// minCmds is the round with the fewest Redis commands per item.
func minCmds(us []cpuUse, n int) cmdsPerItem {
	var best cmdsPerItem
	for i, u := range us {
		var total int64
		names := make([]string, 0, len(u.cmds))
		for k, v := range u.cmds {
			if v > 0 && k != "info" {
				total += v
				names = append(names, k)
			}
		}
		per := float64(total) / float64(n)
		if i > 0 && per >= best.total {
			continue
		}
		sort.Slice(names, func(a, b int) bool { return u.cmds[names[a]] > u.cmds[names[b]] })
		var parts []string
		for _, k := range names[:min(6, len(names))] {
			parts = append(parts, fmt.Sprintf("%s %.2f", k, float64(u.cmds[k])/float64(n)))
		}
		best = cmdsPerItem{total: per, top: strings.Join(parts, ", ")}
	}
	return best
}

// loadAvg is the 1-minute load average, from /proc/loadavg.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

// perItem is the CPU time per item of each.
func (u cpuUse) perItem(n int) (self, redis time.Duration) {
	return u.self / time.Duration(n), u.redis / time.Duration(n)
}

// String is the cores each used.
func (u cpuUse) String() string {
	return fmt.Sprintf("bench process %.2f cores, redis-server %.2f cores", u.self.Seconds()/u.wall.Seconds(), u.redis.Seconds()/u.wall.Seconds())
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func redisCPU(ctx context.Context, rdb redis.UniversalClient) time.Duration {
	s, err := rdb.Info(ctx, "cpu").Result()
	if err != nil {
		return 0
	}
	var total float64
	for _, line := range strings.Split(s, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && (k == "used_cpu_sys" || k == "used_cpu_user") {
			f, _ := strconv.ParseFloat(v, 64)
			total += f
		}
	}
	return time.Duration(total * float64(time.Second))
}
