package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/phalafleet/rollout/internal/testutil"
	"github.com/phalafleet/rollout/internal/version"
)

// runCtx runs one command in-process with ctx and stdin.
func runCtx(ctx context.Context, b *testutil.Bundle, stdin io.Reader, args ...string) (string, string, error) {
	var out, errb bytes.Buffer
	env := map[string]string{"PHALA_CLOUD_API_KEY": b.Key, "PHALA_CLOUD_API_PREFIX": b.SimURL, "REDIS_URL": b.RedisURL}
	e := &Env{Stdout: &out, Stderr: &errb, Stdin: stdin, Getenv: func(k string) string { return env[k] }}
	err := Run(ctx, e, args)
	return out.String(), errb.String(), err
}

// TestExitCodes runs commands in-process and checks the exit status each
// error maps to: the contract of README "Exit status".
func TestExitCodes(t *testing.T) {
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 6, Seed: 3, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9})
	ids := b.Sim.IDs()
	file := func(name string, cvms ...string) string {
		return testutil.WriteFile(t, fmt.Sprintf("name: %s\nselector: {ids: [%s]}\ntarget: {kms_urls: [%q]}\nschedule: {start_at: 2099-01-01T00:00:00Z}\n",
			name, strings.Join(cvms, ", "), newKMS))
	}
	later := file("later", ids[0], ids[1])
	scheduled := planID(t, b, later)
	mustRun(t, b, "apply", "-f", later, "--yes")
	paused := file("held", ids[2], ids[3])
	pausedID := planID(t, b, paused)
	mustRun(t, b, "apply", "-f", paused, "--yes")
	mustRun(t, b, "pause", pausedID)
	gone := file("gone", ids[4], ids[5])
	cancelledID := planID(t, b, gone)
	mustRun(t, b, "apply", "-f", gone, "--yes")
	mustRun(t, b, "cancel", cancelledID)
	interrupted, stop := context.WithCancel(context.Background())
	defer stop()

	cases := []struct {
		name string
		ctx  context.Context
		args []string
		code int
		want string
	}{
		{"help", nil, []string{"help"}, ExitOK, ""},
		{"help of a command", nil, []string{"help", "status"}, ExitOK, ""},
		{"version", nil, []string{"--version"}, ExitOK, ""},
		{"no command", nil, nil, ExitUsage, "no command given"},
		{"unknown command", nil, []string{"stauts"}, ExitUsage, `did you mean "status"?`},
		{"unknown command, nothing near", nil, []string{"frobnicate"}, ExitUsage, `unknown command "frobnicate"`},
		{"help of an unknown command", nil, []string{"help", "rollbak"}, ExitUsage, `did you mean "rollback"?`},
		{"unknown flag", nil, []string{"status", "x", "--bogus"}, ExitUsage, "flag provided but not defined: -bogus"},
		{"bad flag value", nil, []string{"status", "x", "--timeout", "soon"}, ExitUsage, "invalid value"},
		{"bad -o", nil, []string{"list", "-o", "yaml"}, ExitUsage, "-o yaml: expected one of table, json"},
		{"missing id", nil, []string{"events"}, ExitUsage, "which rollout?"},
		{"extra argument", nil, []string{"list", "extra"}, ExitUsage, `unexpected argument "extra"`},
		{"bad state", nil, []string{"report", "x", "--state", "done"}, ExitUsage, "--state done"},
		{"retry without which", nil, []string{"retry", scheduled}, ExitUsage, "--failed, or --ids"},
		{"unknown rollout", nil, []string{"status", "nope"}, ExitError, "rollout not found: nope"},
		{"redis down", nil, []string{"list", "--redis", "redis://127.0.0.1:1/0"}, ExitError, "is not answering"},
		{"watch a cancelled rollout", nil, []string{"status", cancelledID, "--watch"}, ExitCancelled, "was cancelled"},
		{"wait on a paused rollout", nil, []string{"apply", "-f", paused, "--yes", "--wait"}, ExitPaused, "is paused"},
		{"watch --timeout", nil, []string{"status", scheduled, "--watch", "--timeout", "300ms", "-o", "json"}, ExitTimeout, "--timeout 300ms reached: rollout " + scheduled + " is scheduled; it goes on"},
		{"interrupted watch", interrupted, []string{"status", scheduled, "--watch"}, ExitInterrupt, "`rollout pause " + scheduled + "` pauses it"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx := c.ctx
			if ctx == nil {
				ctx = context.Background()
			}
			if ctx == interrupted {
				time.AfterFunc(300*time.Millisecond, stop) // Ctrl-C while it watches
			}
			_, _, err := runCtx(ctx, b, strings.NewReader(""), c.args...)
			if got := ExitCode(ctx, err); got != c.code {
				t.Fatalf("exit status %d, want %d (error: %v)", got, c.code, err)
			}
			if c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n")) {
				t.Fatalf("error %v: want one line containing %q", err, c.want)
			}
		})
	}
}

// TestNoArgsPrintsHelpToStderr: a bare `rollout` is a usage error, its
// help on stderr (stdout stays empty for scripts).
func TestNoArgsPrintsHelpToStderr(t *testing.T) {
	var out, errb bytes.Buffer
	err := Run(context.Background(), &Env{Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }}, nil)
	if ExitCode(context.Background(), err) != ExitUsage || out.Len() != 0 || !strings.Contains(errb.String(), "Commands:") {
		t.Fatalf("err %v, stdout %q, stderr %q", err, out.String(), errb.String())
	}
	for _, c := range commands() {
		if !strings.Contains(errb.String(), "  "+c.name) {
			t.Errorf("help lacks %s", c.name)
		}
	}
}

// TestHelpCommand: `help CMD` is CMD --help.
func TestHelpCommand(t *testing.T) {
	for _, c := range commands() {
		var a, h bytes.Buffer
		e := func(w io.Writer) *Env {
			return &Env{Stdout: w, Stderr: io.Discard, Getenv: func(string) string { return "" }}
		}
		if err := Run(context.Background(), e(&a), []string{"help", c.name}); err != nil {
			t.Fatalf("help %s: %v", c.name, err)
		}
		if err := Run(context.Background(), e(&h), []string{c.name, "--help"}); err != nil {
			t.Fatalf("%s --help: %v", c.name, err)
		}
		if a.String() != h.String() || !strings.HasPrefix(a.String(), "Usage: rollout "+c.name) {
			t.Fatalf("help %s:\n%s\n%s --help:\n%s", c.name, a.String(), c.name, h.String())
		}
	}
}

func TestEditDistance(t *testing.T) {
	for _, c := range []struct {
		a, b string
		d    int
	}{{"status", "status", 0}, {"stauts", "status", 2}, {"staus", "status", 1}, {"", "list", 4}, {"rollbak", "rollback", 1}, {"kitten", "sitting", 3}} {
		if got := editDistance(c.a, c.b); got != c.d {
			t.Errorf("editDistance(%q, %q) = %d, want %d", c.a, c.b, got, c.d)
		}
	}
}

// TestVersion: `version`, `--version` and `worker --version` print the
// build's version, commit, date and Go version; -o json has the fields.
func TestVersion(t *testing.T) {
	v := version.Get()
	e := func(w io.Writer) *Env {
		return &Env{Stdout: w, Stderr: io.Discard, Getenv: func(string) string { return "" }}
	}
	for _, args := range [][]string{{"--version"}, {"version"}, {"worker", "--version"}} {
		var out bytes.Buffer
		if err := Run(context.Background(), e(&out), args); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		if !strings.Contains(out.String(), v.String()) || !strings.Contains(out.String(), v.GoVersion) {
			t.Fatalf("%v printed %q, want %q", args, out.String(), v.String())
		}
	}
	var out bytes.Buffer
	if err := Run(context.Background(), e(&out), []string{"version", "-o", "json"}); err != nil {
		t.Fatal(err)
	}
	var got version.Info
	if err := json.Unmarshal(out.Bytes(), &got); err != nil || got != v {
		t.Fatalf("version -o json: %s (%v)", out.String(), err)
	}
}

// TestCompletion: each shell's script names every command of the table
// and every flag of each; the bash one, run by bash, completes a command,
// a command's flags and `help`'s commands.
func TestCompletion(t *testing.T) {
	scripts := map[string]string{}
	for _, sh := range []string{"bash", "zsh", "fish"} {
		var out bytes.Buffer
		if err := Run(context.Background(), &Env{Stdout: &out, Stderr: io.Discard, Getenv: func(string) string { return "" }}, []string{"completion", sh}); err != nil {
			t.Fatalf("completion %s: %v", sh, err)
		}
		scripts[sh] = out.String()
		for _, c := range commands() {
			if !strings.Contains(out.String(), c.name) {
				t.Errorf("%s completion lacks command %s", sh, c.name)
			}
			for _, f := range flagsOf(c) {
				if !strings.Contains(out.String(), f.Name) {
					t.Errorf("%s completion lacks %s's flag %s", sh, c.name, f.Name)
				}
			}
		}
	}
	if len(flagsOf(command{name: "status", run: runStatus})) < 4 {
		t.Fatal("flagsOf(status) found too few flags")
	}
	if _, _, err := run(t, &testutil.Bundle{}, "completion", "tcsh"); ExitCode(context.Background(), err) != ExitUsage {
		t.Fatalf("completion tcsh: %v", err)
	}
	// Each script runs in its own shell, where .ci/run installs them
	// (Debian's bash, zsh and fish); a shell that is absent is said in one
	// line and its part not run.
	shell := func(name string) (string, bool) {
		p, err := exec.LookPath(name)
		if err != nil {
			t.Logf("%s not found: its completion script is not run", name)
		}
		return p, err == nil
	}
	want := map[string]string{ // the line typed -> the completion it must offer
		"rollout sta":          "status",
		"rollout status --w":   "--watch",
		"rollout retry --":     "--ids --failed",
		"rollout help hi":      "history",
		"rollout completion f": "fish",
	}
	if bash, ok := shell("bash"); ok {
		complete := func(words ...string) string {
			script := scripts["bash"] + fmt.Sprintf("\nCOMP_WORDS=(%s); COMP_CWORD=%d; _rollout; echo \"${COMPREPLY[*]}\"\n", shellWords(words), len(words)-1)
			out, err := exec.Command(bash, "-c", script).CombinedOutput()
			if err != nil {
				t.Fatalf("bash: %v\n%s", err, out)
			}
			return strings.TrimSpace(string(out))
		}
		for line, w := range want {
			got := complete(strings.Fields(line)...)
			for _, c := range strings.Fields(w) {
				if !slices.Contains(strings.Fields(got), c) {
					t.Errorf("bash: %s<TAB>: %q, want %s", line, got, c)
				}
			}
		}
		if got := complete("rollout", "sta"); got != "status" {
			t.Errorf("bash: rollout sta<TAB>: %q, want status alone", got)
		}
	}
	// fish: its own completion engine, complete -C, on the lines typed.
	if fish, ok := shell("fish"); ok {
		for line, w := range want {
			out, err := exec.Command(fish, "--no-config", "-c", scripts["fish"]+"\ncomplete -C "+shellWords([]string{line})).CombinedOutput()
			if err != nil {
				t.Fatalf("fish: %v\n%s", err, out)
			}
			var got []string
			for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				got = append(got, strings.SplitN(l, "\t", 2)[0])
			}
			for _, c := range strings.Fields(w) {
				if !slices.Contains(got, c) {
					t.Errorf("fish: %s<TAB>: %q, want %s", line, got, c)
				}
			}
		}
	}
	// zsh: compsys needs a terminal, so the script's own code runs in zsh
	// with compsys's functions (_describe, _arguments, _values) stubbed to
	// print what they were given: which candidates each line offers.
	if zsh, ok := shell("zsh"); ok {
		stubs := `compdef() { :; }
_describe() { local arr=$4; print -r -- "describe ${(@)${(P)arr}%%:*}" }
_arguments() { shift; print -r -- "arguments $*" }
_values() { shift; print -r -- "values $*" }
`
		for line, w := range want {
			words := strings.Fields(line)
			script := stubs + scripts["zsh"] + fmt.Sprintf("\nwords=(%s); CURRENT=%d; _rollout\n", shellWords(words), len(words))
			out, err := exec.Command(zsh, "-f", "-c", script).CombinedOutput()
			if err != nil {
				t.Fatalf("zsh: %v\n%s", err, out)
			}
			got := string(out)
			for _, c := range strings.Fields(w) {
				if !strings.Contains(" "+got, " "+c+" ") && !strings.Contains(" "+got, " "+c+"[") && !strings.HasSuffix(strings.TrimSpace(got), " "+c) {
					t.Errorf("zsh: %s<TAB>: %q, want %s", line, got, c)
				}
			}
		}
	}
}

func shellWords(ws []string) string {
	q := make([]string, len(ws))
	for i, w := range ws {
		q[i] = "'" + w + "'"
	}
	return strings.Join(q, " ")
}

// TestConfirmInterrupted: Ctrl-C at apply's [y/N] question ends it with
// exit status 130 and records nothing.
func TestConfirmInterrupted(t *testing.T) {
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 4, Seed: 2, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9})
	file := testutil.WriteFile(t, fmt.Sprintf("name: ask\nselector: {all: true}\ntarget: {kms_urls: [%q]}\n", newKMS))
	stdin, w := io.Pipe() // nobody answers
	t.Cleanup(func() { w.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	var out, errb testutil.Buffer
	env := map[string]string{"PHALA_CLOUD_API_KEY": b.Key, "PHALA_CLOUD_API_PREFIX": b.SimURL, "REDIS_URL": b.RedisURL}
	e := &Env{Stdout: &out, Stderr: &errb, Stdin: stdin, IsTerminal: true, Getenv: func(k string) string { return env[k] }}
	done := make(chan error, 1)
	go func() { done <- Run(ctx, e, []string{"apply", "-f", file}) }()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(errb.String(), "[y/N]") {
		if time.Now().After(deadline) {
			t.Fatalf("no question asked; stderr %q", errb.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	err := <-done
	if ExitCode(ctx, err) != ExitInterrupt || !strings.Contains(err.Error(), "nothing was applied") {
		t.Fatalf("Ctrl-C at the question: %v (exit %d)", err, ExitCode(ctx, err))
	}
	if rs, err := b.Store.List(context.Background()); err != nil || len(rs) != 0 {
		t.Fatalf("recorded %d rollouts after Ctrl-C (%v)", len(rs), err)
	}
}

// TestNoWorkerWarnings: apply and status say when no worker is alive
// (apply on stderr, so -o json stays clean), and stop once one runs.
func TestNoWorkerWarnings(t *testing.T) {
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 4, Seed: 6, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9})
	file := testutil.WriteFile(t, fmt.Sprintf("name: nobody\nselector: {all: true}\ntarget: {kms_urls: [%q]}\nschedule: {start_at: 2099-01-01T00:00:00Z}\n", newKMS))
	id := planID(t, b, file)
	out, errOut, err := run(t, b, "apply", "-f", file, "--yes", "-o", "json")
	if err != nil || !strings.Contains(errOut, "warning: no worker is alive: rollout "+id) || strings.Contains(out, "warning") {
		t.Fatalf("apply: %v\nstdout %s\nstderr %s", err, out, errOut)
	}
	if out := mustRun(t, b, "status", id); !strings.Contains(out, "Warning: no worker is alive") || !strings.Contains(out, "Progress: patched 0/4") {
		t.Fatalf("status without workers:\n%s", out)
	}
	alive := func() int {
		var s struct {
			WorkersAlive *int `json:"workers_alive"`
		}
		if err := json.Unmarshal([]byte(mustRun(t, b, "status", id, "-o", "json")), &s); err != nil || s.WorkersAlive == nil {
			t.Fatalf("status -o json: %v", err)
		}
		return *s.WorkersAlive
	}
	if n := alive(); n != 0 {
		t.Fatalf("workers_alive %d with none", n)
	}
	b.Workers(t, 1, 2)
	deadline := time.Now().Add(10 * time.Second)
	for alive() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("workers_alive never 1 with a worker running")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if out := mustRun(t, b, "status", id); strings.Contains(out, "no worker") {
		t.Fatalf("status warns with a worker running:\n%s", out)
	}
}
