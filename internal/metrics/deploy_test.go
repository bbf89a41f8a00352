package metrics_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/testutil"
	"github.com/phalafleet/rollout/internal/worker"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"gopkg.in/yaml.v3"
)

// The files under test, from this package's directory.
const (
	dashboardFile = "../../deploy/grafana/rollout.json"
	alertsFile    = "../../deploy/prometheus/alerts.yaml"
	promConfig    = "../../deploy/prometheus/prometheus.yml"
)

// proofFile is a rollout that makes a worker export every series the
// dashboard and the alerts use: two stages with a bake (the rollout waits
// after the first), a rate and an in-flight limit, a failure budget, and
// (set up below) a CVM that fails, one that is retried, and 429s.
const proofFile = `name: proof
selector: {all: true}
target: {kms_urls: ["https://kms-proof.example:8000"]}
stages: [6, "100%"]
bake: 1h
rate: {per_second: 100, max_in_flight: 3}
retry: {max_attempts: 2, backoff: {base: 10ms, max: 20ms}}
failure_budget: {max_failed: 5}
`

// TestDashboardAndAlertsMatchAScrape runs a simulated rollout with a
// worker, scrapes its /metrics while the rollout is under way, and parses
// every PromQL expression in deploy/grafana/rollout.json and
// deploy/prometheus/alerts.yaml: each metric name, each label a selector,
// a by/on clause, a legend or an alert template uses, and each label value
// a matcher names, must be in the scrape (or, for states and codes, be one
// the code can export). With promtool on PATH it also runs `promtool check
// rules` on the alerts, `promtool check config` on the compose Prometheus
// config, and `promtool check metrics` on the scrape.
func TestDashboardAndAlertsMatchAScrape(t *testing.T) {
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 12, Seed: 9, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9})
	p := b.Apply(t, proofFile)
	var first []string
	for _, it := range p.Items {
		if it.Stage == 0 {
			first = append(first, it.CVMID)
		}
	}
	if len(first) != 6 {
		t.Fatalf("stage 0 has %d CVMs, want 6", len(first))
	}
	b.Sim.FailPatch(first[0], 404) // failed at once
	b.Sim.FailPatch(first[1], 500) // retried, then failed
	b.Sim.SetFaults(sim.Faults{RateLimit: 10, RateBurst: 1})

	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		worker.Run(ctx, b.RDB, worker.Config{Concurrency: 4, API: b.API, HTTPAddr: addr, ControllerInterval: 50 * time.Millisecond,
			ShutdownTimeout: 5 * time.Second})
	}()
	defer func() { cancel(); <-done }()

	// The API throttles until the worker has seen a 429 (longer, and the
	// adaptive rate would slow the test down to its floor).
	waitScrape(t, addr, `code="429"`)
	b.Sim.SetFaults(sim.Faults{})
	// Under way: the first stage done, the rollout waiting out its bake.
	// (The counter a moment after the move the gauges read.)
	body := waitScrape(t, addr, `rollout_stage_waiting{rollout="`+p.ID+`"} 1`, `rollout_cvm_outcomes_total{rollout="`+p.ID+`",state="failed"} 2`)
	for _, want := range []string{
		`rollout_cvms{rollout="` + p.ID + `",state="failed"} 2`,
		`rollout_budget_left{rollout="` + p.ID + `"} 3`,
		`rollout_cvm_outcomes_total{rollout="` + p.ID + `",state="failed"} 2`,
		`rollout_in_flight_limit{rollout="` + p.ID + `"} 3`,
		`rollout_rate_limit_per_second{rollout="` + p.ID + `"} 100`,
		`code="429"`,
		`code="404"`,
		`code="500"`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("the scrape lacks %s", want)
		}
	}
	if strings.Contains(body, b.Key) {
		t.Error("the API key is in the scrape")
	}
	sc := newScrape(t, body)
	// The gauge is the rollout's adaptive rate; once the 429s stop it may
	// climb back to the file's 100 by the time of the scrape, but the
	// reason of its last change still names them.
	if r := sc.values["rollout_rate_adaptive_per_second"]; r > 100 || r <= 0 {
		t.Errorf("rollout_rate_adaptive_per_second = %v, want in (0, 100]", r)
	}
	// The window holding the 429s closes a Window after it opened: at the
	// next answer, or by the idle flush when the stage has gone quiet
	// (waiting out its bake), so the reason may come a second after the
	// scrape.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		_, why, _, err := store.NewLimits(b.RDB).PaceState(ctx, p.ID)
		if err == nil && strings.Contains(why, "429") {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("the adaptive rate's reason %q (%v) does not name the 429s", why, err)
			break
		}
	}

	c := &checker{t: t, sc: sc, known: sc.labels}
	c.rules(alertsFile)
	c.dashboard(dashboardFile)
	if c.exprs < 20 {
		t.Errorf("only %d expressions checked", c.exprs)
	}

	promtool(t, body)

	// The rollout ends: its gauges go with it.
	if _, err := b.Control().Cancel(context.Background(), p.ID, "test", "proof done", time.Now()); err != nil {
		t.Fatal(err)
	}
	b.WaitState(t, p.ID, 10*time.Second, store.RolloutCancelled)
	waitActive(t, b.Store, p.ID, false)
	body = scrape(t, "http://"+addr+"/metrics")
	for _, l := range strings.Split(body, "\n") {
		if strings.Contains(l, `rollout="`+p.ID+`"`) && !strings.HasPrefix(l, "rollout_cvm_") {
			t.Errorf("a gauge of the ended rollout is left: %s", l)
		}
	}
}

// waitScrape scrapes the worker at addr until its metrics contain each of
// want.
func waitScrape(t *testing.T, addr string, want ...string) string {
	t.Helper()
	var body string
	for deadline := time.Now().Add(30 * time.Second); ; {
		if b, code, err := tryGet("http://" + addr + "/metrics"); err == nil && code == 200 {
			body = b
			if !slices.ContainsFunc(want, func(w string) bool { return !strings.Contains(body, w) }) {
				return body
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the worker's metrics never showed %s:\n%s", want, grep(body, "rollout_"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// promtool runs the promtool checks, or says in one line why not.
func promtool(t *testing.T, scrapeBody string) {
	t.Helper()
	if _, err := exec.LookPath("promtool"); err != nil {
		t.Log("promtool not on PATH (Debian package prometheus): skipping promtool check rules/config/metrics")
		return
	}
	for _, args := range [][]string{{"check", "rules", alertsFile}, {"check", "config", "--syntax-only", promConfig}} {
		if out, err := exec.Command("promtool", args...).CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	cmd := exec.Command("promtool", "check", "metrics")
	cmd.Stdin = strings.NewReader(scrapeBody)
	if out, err := cmd.CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// scrape is what a Prometheus scrape of the worker holds: each sample
// name (histograms as _bucket, _sum and _count) with its label names and
// the values seen of each, plus the labels Prometheus adds.
type scrapeInfo struct {
	labels map[string]map[string]bool            // sample name -> label names
	seen   map[string]map[string]map[string]bool // sample name -> label -> values
	values map[string]float64                    // one-series gauges and counters: name -> value
}

func newScrape(t *testing.T, body string) *scrapeInfo {
	t.Helper()
	tp := expfmt.NewTextParser(model.UTF8Validation)
	fs, err := tp.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parsing the scrape: %v", err)
	}
	sc := &scrapeInfo{labels: map[string]map[string]bool{}, seen: map[string]map[string]map[string]bool{}, values: map[string]float64{}}
	add := func(name string, m *dto.Metric, extra ...string) {
		if sc.labels[name] == nil {
			// Prometheus adds the target's labels to every series.
			sc.labels[name] = map[string]bool{"job": true, "instance": true}
			sc.seen[name] = map[string]map[string]bool{}
		}
		for _, l := range m.GetLabel() {
			sc.labels[name][l.GetName()] = true
			if sc.seen[name][l.GetName()] == nil {
				sc.seen[name][l.GetName()] = map[string]bool{}
			}
			sc.seen[name][l.GetName()][l.GetValue()] = true
		}
		for _, e := range extra {
			sc.labels[name][e] = true
		}
	}
	for name, f := range fs {
		for _, m := range f.GetMetric() {
			switch f.GetType() {
			case dto.MetricType_HISTOGRAM:
				add(name+"_bucket", m, "le")
				add(name+"_sum", m)
				add(name+"_count", m)
			case dto.MetricType_SUMMARY:
				add(name, m, "quantile")
				add(name+"_sum", m)
				add(name+"_count", m)
			default:
				add(name, m)
				if len(f.GetMetric()) == 1 {
					sc.values[name] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
				}
			}
		}
	}
	return sc
}

// knownValues are label values the code exports in some state of a
// rollout, though one scrape shows only those of the moment.
var knownValues = map[string][]string{
	"state": append(cvmStateNames(), "scheduled", "running", "paused", "completed", "cancelled", // rollout states
		"pending", "active", "retry", "archived"), // asynq queue states
}

func cvmStateNames() []string {
	var out []string
	for _, s := range store.CVMStates {
		out = append(out, string(s))
	}
	return out
}

// checker checks PromQL against a scrape.
type checker struct {
	t     *testing.T
	sc    *scrapeInfo
	known map[string]map[string]bool // metric -> labels, with recording rules' outputs added
	exprs int
	used  map[string]bool // metric names the expressions select
}

// placeholder stands for a Grafana variable's value in an expression.
const placeholder = "GRAFANA_VAR"

var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h",
	"${rollout}", placeholder, "$rollout", placeholder)

// check parses expr and checks it; it returns the labels its result has.
func (c *checker) check(where, expr string) map[string]bool {
	c.t.Helper()
	c.exprs++
	e, err := parser.NewParser(parser.Options{}).ParseExpr(grafanaVars.Replace(expr))
	if err != nil {
		c.t.Errorf("%s: %v\n  %s", where, err, expr)
		return nil
	}
	return c.labelsOf(where, e)
}

func (c *checker) errorf(where, format string, args ...any) {
	c.t.Helper()
	c.t.Errorf("%s: %s", where, fmt.Sprintf(format, args...))
}

// labelsOf infers the labels of e's result (as Prometheus's engine keeps
// them) and reports every name, label and value not in the scrape.
func (c *checker) labelsOf(where string, e parser.Expr) map[string]bool {
	c.t.Helper()
	switch e := e.(type) {
	case *parser.VectorSelector:
		return c.selector(where, e)
	case *parser.MatrixSelector:
		return c.labelsOf(where, e.VectorSelector)
	case *parser.SubqueryExpr:
		return c.labelsOf(where, e.Expr)
	case *parser.ParenExpr:
		return c.labelsOf(where, e.Expr)
	case *parser.UnaryExpr:
		return c.labelsOf(where, e.Expr)
	case *parser.NumberLiteral, *parser.StringLiteral:
		return map[string]bool{}
	case *parser.AggregateExpr:
		in := c.labelsOf(where, e.Expr)
		if e.Param != nil {
			c.labelsOf(where, e.Param)
		}
		for _, g := range e.Grouping {
			if !in[g] {
				c.errorf(where, "%s by/without %q: not a label of %s (it has %s)", e.Op, g, e.Expr, keys(in))
			}
		}
		out := map[string]bool{}
		switch {
		case e.Without:
			for l := range in {
				if !slices.Contains(e.Grouping, l) {
					out[l] = true
				}
			}
		default:
			for _, g := range e.Grouping {
				out[g] = true
			}
		}
		return out
	case *parser.Call:
		var args []map[string]bool
		for _, a := range e.Args {
			args = append(args, c.labelsOf(where, a))
		}
		switch e.Func.Name {
		case "histogram_quantile":
			if !args[1]["le"] {
				c.errorf(where, "histogram_quantile over %s, which has no le label", e.Args[1])
			}
			out := copySet(args[1])
			delete(out, "le")
			return out
		case "absent", "absent_over_time", "vector", "time", "scalar":
			return map[string]bool{}
		}
		for i, a := range e.Args {
			if t := a.Type(); t == parser.ValueTypeVector || t == parser.ValueTypeMatrix {
				return args[i]
			}
		}
		return map[string]bool{}
	case *parser.BinaryExpr:
		l, r := c.labelsOf(where, e.LHS), c.labelsOf(where, e.RHS)
		vm := e.VectorMatching
		bothVectors := e.LHS.Type() == parser.ValueTypeVector && e.RHS.Type() == parser.ValueTypeVector
		if !bothVectors {
			if e.LHS.Type() == parser.ValueTypeVector {
				return l
			}
			return r
		}
		if vm != nil {
			for _, m := range vm.MatchingLabels {
				if !l[m] || !r[m] {
					c.errorf(where, "on/ignoring %q: not a label of both sides (%s and %s)", m, keys(l), keys(r))
				}
			}
		}
		switch {
		case e.Op == parser.LOR:
			out := copySet(l)
			for k := range r {
				out[k] = true
			}
			return out
		case e.Op == parser.LAND || e.Op == parser.LUNLESS, e.Op.IsComparisonOperator() && !e.ReturnBool:
			return l // the left side's samples, filtered
		case vm != nil && vm.On && vm.Card == parser.CardOneToOne:
			out := map[string]bool{}
			for _, m := range vm.MatchingLabels {
				out[m] = true
			}
			return out
		}
		return l
	}
	c.errorf(where, "unexpected expression %T: %s", e, e)
	return map[string]bool{}
}

func (c *checker) selector(where string, vs *parser.VectorSelector) map[string]bool {
	c.t.Helper()
	name := vs.Name
	for _, m := range vs.LabelMatchers {
		if m.Name == labels.MetricName && m.Type == labels.MatchEqual {
			name = m.Value
		}
	}
	if c.used == nil {
		c.used = map[string]bool{}
	}
	c.used[name] = true
	have, ok := c.known[name]
	if !ok {
		c.errorf(where, "metric %s is not in the worker's scrape", name)
		return map[string]bool{}
	}
	for _, m := range vs.LabelMatchers {
		if m.Name == labels.MetricName {
			continue
		}
		if !have[m.Name] {
			c.errorf(where, "%s has no label %q (it has %s)", name, m.Name, keys(have))
			continue
		}
		c.value(where, name, m)
	}
	return copySet(have)
}

// value checks that a matcher's value (each alternative of a|b|c) is one
// the scrape shows, or one the code exports in another state.
func (c *checker) value(where, name string, m *labels.Matcher) {
	c.t.Helper()
	if strings.Contains(m.Value, placeholder) || m.Name == "job" || m.Name == "instance" {
		return
	}
	seen := c.sc.seen[name]
	if seen == nil {
		return // a recording rule's output
	}
	vals := []string{m.Value}
	if m.Type == labels.MatchRegexp || m.Type == labels.MatchNotRegexp {
		if !regexp.MustCompile(`^[A-Za-z0-9_]+(\|[A-Za-z0-9_]+)*$`).MatchString(m.Value) {
			return
		}
		vals = strings.Split(m.Value, "|")
	}
	for _, v := range vals {
		if !seen[m.Name][v] && !slices.Contains(knownValues[m.Name], v) {
			c.errorf(where, "%s{%s}: the worker never exports %s=%q (the scrape has %s)", name, m, m.Name, v, keys(seen[m.Name]))
		}
	}
}

var templateLabel = regexp.MustCompile(`\{\{\s*\$labels\.(\w+)\s*\}\}`)
var legendLabel = regexp.MustCompile(`\{\{\s*(\w+)\s*\}\}`)

// rules checks the rule file: recording rules first become known metrics
// with the labels of their expression.
func (c *checker) rules(path string) {
	c.t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		c.t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []struct {
				Record      string            `yaml:"record"`
				Alert       string            `yaml:"alert"`
				Expr        string            `yaml:"expr"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(raw, &f); err != nil {
		c.t.Fatalf("%s: %v", path, err)
	}
	var alerts []string
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			where := path + ": " + r.Record + r.Alert
			out := c.check(where, r.Expr)
			if r.Record != "" {
				c.known[r.Record] = copySet(out)
				c.known[r.Record]["job"], c.known[r.Record]["instance"] = true, true
			}
			for _, text := range r.Annotations {
				for _, m := range templateLabel.FindAllStringSubmatch(text, -1) {
					if !out[m[1]] {
						c.errorf(where, "annotation uses $labels.%s, which the expression does not keep (it has %s)", m[1], keys(out))
					}
				}
			}
			if r.Alert != "" {
				alerts = append(alerts, r.Alert)
			}
		}
	}
	for _, want := range []string{"RolloutPausedByBudget", "RolloutNoProgress", "RolloutQueueLatencyHigh", "RolloutNoWorkerAlive",
		"RolloutRedisUnreachable", "RolloutAPIThrottled"} {
		if !slices.Contains(alerts, want) {
			c.t.Errorf("%s: no alert %s", path, want)
		}
	}
}

// dashboard checks every panel's targets, their legends and the template
// variables' label_values queries.
func (c *checker) dashboard(path string) {
	c.t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		c.t.Fatal(err)
	}
	type target struct {
		Expr   string `json:"expr"`
		Legend string `json:"legendFormat"`
	}
	type panel struct {
		Title   string   `json:"title"`
		Type    string   `json:"type"`
		Targets []target `json:"targets"`
		Panels  []panel  `json:"panels"`
	}
	var d struct {
		Panels     []panel `json:"panels"`
		Templating struct {
			List []struct {
				Name  string          `json:"name"`
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		c.t.Fatalf("%s: %v", path, err)
	}
	var walk func(ps []panel)
	n := 0
	walk = func(ps []panel) {
		for _, p := range ps {
			walk(p.Panels)
			for i, tg := range p.Targets {
				where := fmt.Sprintf("%s: panel %q target %d", path, p.Title, i)
				if tg.Expr == "" {
					c.t.Errorf("%s: no expr", where)
					continue
				}
				n++
				out := c.check(where, tg.Expr)
				for _, m := range legendLabel.FindAllStringSubmatch(tg.Legend, -1) {
					if !out[m[1]] {
						c.errorf(where, "legend uses {{%s}}, which the expression does not keep (it has %s)", m[1], keys(out))
					}
				}
			}
		}
	}
	c.used = nil
	walk(d.Panels)
	if n == 0 {
		c.t.Fatalf("%s: no panel targets", path)
	}
	// What the issue asks the dashboard to show.
	for _, want := range []string{"rollout_state", "rollout_stage_cvms", "rollout_cvms", "rollout_cvm_outcomes_total",
		"rollout_api_request_duration_seconds_bucket", "rollout_api_requests_total", "rollout_rate_adaptive_per_second",
		"rollout_in_flight", "rollout_in_flight_limit", "rollout_queue_tasks", "rollout_queue_latency_seconds",
		"rollout_workers_alive", "rollout_budget_left"} {
		if !c.used[want] {
			c.t.Errorf("%s: no panel shows %s", path, want)
		}
	}
	labelValues := regexp.MustCompile(`^label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*(\w+)\s*\)$`)
	hasRollout := false
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if json.Unmarshal(v.Query, &q) != nil {
			json.Unmarshal(v.Query, &q.Query)
		}
		m := labelValues.FindStringSubmatch(q.Query)
		if m == nil {
			c.t.Errorf("%s: variable %s: query %q is not label_values(metric, label)", path, v.Name, q.Query)
			continue
		}
		if have, ok := c.known[m[1]]; !ok || !have[m[2]] {
			c.t.Errorf("%s: variable %s: %s has no label %s in the scrape", path, v.Name, m[1], m[2])
		}
		hasRollout = hasRollout || v.Name == "rollout"
	}
	if !hasRollout {
		c.t.Errorf("%s: no rollout template variable", path)
	}
}

func copySet(s map[string]bool) map[string]bool {
	out := make(map[string]bool, len(s))
	for k, v := range s {
		out[k] = v
	}
	return out
}

func keys[V any](m map[string]V) string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return "[" + strings.Join(out, " ") + "]"
}
