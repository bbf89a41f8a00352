// Package cli implements the rollout and worker commands. Each command
// writes to the given writers and returns an error, so tests run whole
// commands in-process; cmd/rollout and cmd/worker only wire signals and
// exit with ExitCode(ctx, err).
//
// Parsing: the standard library's flag package and one command table
// (commands below), not cobra or kong. The table is already the one list
// of commands; help, `help CMD`, shell completion and "did you mean" are
// generated from it and from each command's FlagSet in about 200 lines
// (help.go, completion.go). cobra would rewrite every command file while
// other changes land on them, would bring pflag's flag grammar to a
// contract scripts already rely on (`-o json`, `--yes`, flags after the
// rollout id), and would add a dependency for what the table gives.
package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/phalafleet/rollout/internal/api"
	"github.com/phalafleet/rollout/internal/redisconn"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/textsafe"
	"github.com/redis/go-redis/v9"
	"golang.org/x/term"
)

// Env is what a command runs with. Tests fill it; main uses OSEnv.
type Env struct {
	Stdout, Stderr io.Writer
	Stdin          io.Reader
	Getenv         func(string) string
	IsTerminal     bool // stdin is a terminal: a person may be asked
	// Width is the width of the terminal stdout is, 0 when stdout is not
	// a terminal (a pipe, a file): status --watch redraws in place only
	// on a terminal. Nil means not a terminal.
	Width func() int
}

// width is the terminal width of stdout, 0 when it is not a terminal.
func (e *Env) width() int {
	if e.Width == nil {
		return 0
	}
	return e.Width()
}

// OSEnv is the process's own environment.
func OSEnv() *Env {
	// term.IsTerminal asks the terminal driver: /dev/null is a character
	// device too, and a job run with </dev/null must not be asked anything.
	e := &Env{Stdout: os.Stdout, Stderr: os.Stderr, Stdin: os.Stdin, Getenv: os.Getenv,
		IsTerminal: term.IsTerminal(int(os.Stdin.Fd()))}
	if fd := int(os.Stdout.Fd()); term.IsTerminal(fd) {
		e.Width = func() int {
			if w, _, err := term.GetSize(fd); err == nil && w > 0 {
				return w
			}
			return 80
		}
	}
	return e
}

// command is a row of the table: usage is "SYNOPSIS  what it does" (two
// spaces or more between the two).
type command struct {
	name, usage string
	run         func(ctx context.Context, e *Env, args []string) error
}

// split is the usage's synopsis and description.
func (c command) split() (use, what string) {
	use, what, _ = strings.Cut(c.usage, "  ")
	return strings.TrimSpace(use), strings.TrimSpace(what)
}

func commands() []command {
	return []command{
		{"plan", "plan -f FILE [-o table|json]            show what a rollout would do (no Redis)", runPlan},
		{"apply", "apply -f FILE [--yes] [--wait] [-o ...]  record a rollout and queue its tasks", runApply},
		{"status", "status ID|NAME [--watch] [-o table|json]  state and counts of a rollout", runStatus},
		{"report", "report ID|NAME [--state S] [-o csv|json|table|ids]  one row per CVM", runReport},
		{"history", "history NAME|ID [-o table|json]         a rollout with its runs and rollbacks, newest first", runHistory},
		{"list", "list [-o table|json]                    rollouts and their states", runList},
		{"events", "events ID|NAME [--last N] [-o table|json]  who did what to a rollout, and when", runEvents},
		{"pause", "pause ID                                stop starting CVMs (in-flight ones finish)", runPause},
		{"resume", "resume ID                               continue a paused rollout", runResume},
		{"cancel", "cancel ID                               end a rollout; CVMs not started become cancelled", runCancel},
		{"promote", "promote ID [--full]                     let a finished manual stage (or a bake) move on", runPromote},
		{"retry", "retry ID --failed | --ids FILE|-        queue failed CVMs again", runRetry},
		{"rollback", "rollback ID [--dry-run] [--yes]         give every CVM a rollout changed its before-image back", runRollback},
		{"prune", "prune --older-than 30d [--export DIR]    forget finished rollouts' per-CVM records (--dry-run, --all)", runPrune},
		{"worker", "worker [--concurrency N]                process tasks (same as cmd/worker)", RunWorker},
		{"workers", "workers [-o table|json]                 live worker processes and the queue's depth", runWorkers},
		{"dashboard", "dashboard [--addr A] [--token-file F]   the web dashboard (read-only without a token file)", runDashboard},
		{"sim", "sim [--addr 127.0.0.1:8090] [--cvms N]  serve the API simulator", runSim},
		{"demo", "demo [--cvms N]                         the whole job in one process, no setup", runDemo},
		{"bench", "bench --redis URL [--only ...] [--n ...]  measure throughput and memory (FLUSHes that Redis db)", runBench},
		{"version", "version [-o text|json]                  version, commit, build date and Go version", runVersion},
		{"completion", "completion bash|zsh|fish                shell completion script (source it)", runCompletion},
		{"help", "help [COMMAND]                          this list, or one command's usage and flags", runHelp},
	}
}

// Run runs `rollout ARGS...`. Its error is the line a user sees: one line of
// bounded length with control characters escaped (textsafe.Line), whatever it
// quotes; errors.Is and errors.As still see the error beneath.
func Run(ctx context.Context, e *Env, args []string) error {
	if err := runCommand(ctx, e, args); err != nil {
		return lineError{store.Full(err)} // an OOM refusal in plain words
	}
	return nil
}

// lineError shows err as textsafe.Line.
type lineError struct{ err error }

func (l lineError) Error() string { return textsafe.Line(l.err.Error()) }
func (l lineError) Unwrap() error { return l.err }

func runCommand(ctx context.Context, e *Env, args []string) error {
	if len(args) == 0 {
		usage(e.Stderr)
		return usageErr("no command given (rollout help lists them)")
	}
	switch args[0] {
	case "-h", "--help":
		usage(e.Stdout)
		return nil
	case "--version":
		return runVersion(ctx, e, args[1:])
	}
	c, err := lookup(args[0])
	if err != nil {
		return err
	}
	err = c.run(ctx, e, args[1:])
	if h, ok := err.(helpShown); ok {
		fmt.Fprint(e.Stdout, h.text)
		return nil
	}
	return err
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "rollout: move a fleet of Phala Cloud CVMs to new KMS and Gateway URLs, one PATCH per CVM.")
	fmt.Fprintln(w, "\nUsage: rollout COMMAND [flags]\n\nCommands:")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, c := range commands() {
		use, what := c.split()
		fmt.Fprintf(tw, "  %s\t%s\n", use, what)
	}
	tw.Flush()
	fmt.Fprintln(w, "\nEnvironment: PHALA_CLOUD_API_KEY (required for plan/apply/worker), PHALA_CLOUD_API_PREFIX, REDIS_URL.")
	fmt.Fprintln(w, "`rollout help COMMAND` shows a command's flags; README \"Exit status\" lists the exit codes.")
}

// confirm asks on a terminal (on stderr, so -o json stays clean) and
// goes on only on "y"; without a terminal it goes on, as scripts expect.
// Ctrl-C at the question ends it with nothing done (exit status 130).
func confirm(ctx context.Context, e *Env, question string) error {
	if !e.IsTerminal {
		return nil
	}
	fmt.Fprintf(e.Stderr, "\n%s [y/N] ", question)
	answer := make(chan string, 1)
	go func() { // a read of a terminal cannot be cancelled: left to the process's end
		line, _ := bufio.NewReader(e.Stdin).ReadString('\n')
		answer <- line
	}()
	select {
	case <-ctx.Done():
		fmt.Fprintln(e.Stderr)
		return withCode(ExitInterrupt, fmt.Errorf("interrupted at the question: nothing was applied"))
	case line := <-answer:
		if a := strings.ToLower(strings.TrimSpace(line)); a != "y" && a != "yes" {
			return fmt.Errorf("not applied (answer y, or pass --yes)")
		}
	}
	return nil
}

// parse parses flags that may come before or after positional arguments
// ("status ID --watch" and "status --watch ID" both work). -h and --help
// come back as a helpShown carrying the command's help.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	fs.SetOutput(io.Discard)
	var pos []string
	for {
		if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
			return nil, helpShown{commandHelp(fs), fs}
		} else if err != nil {
			return nil, usageErr("%s: %v (rollout %s --help lists its flags)", fs.Name(), err, fs.Name())
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// helpShown is not a failure: Run prints the help and exits 0. fs is the
// command's flags, for completion.
type helpShown struct {
	text string
	fs   *flag.FlagSet
}

func (h helpShown) Error() string { return h.text }

// commandHelp is a command's usage line and its flags.
func commandHelp(fs *flag.FlagSet) string {
	var b strings.Builder
	for _, c := range commands() {
		if c.name == fs.Name() {
			use, what := c.split()
			fmt.Fprintf(&b, "Usage: rollout %s\n  %s\n", use, what)
		}
	}
	b.WriteString("\nFlags:\n")
	// flag.PrintDefaults's layout, with each flag written as the docs and
	// completion write it (-o, --yes).
	fs.VisitAll(func(f *flag.Flag) {
		name, use := flag.UnquoteUsage(f)
		fmt.Fprintf(&b, "  %s", dashed(f))
		if name != "" {
			b.WriteString(" " + name)
		}
		fmt.Fprintf(&b, "\n    \t%s", strings.ReplaceAll(use, "\n", "\n    \t"))
		switch def := f.DefValue; {
		case def == "" || def == "false" || def == "0" || def == "0s":
		case fmt.Sprintf("%T", f.Value) == "*flag.stringValue":
			fmt.Fprintf(&b, " (default %q)", def)
		default:
			fmt.Fprintf(&b, " (default %s)", def)
		}
		b.WriteString("\n")
	})
	return b.String()
}

// idCountError says what a command wanted instead of pos.
func idCountError(cmd string, want int, pos []string) error {
	switch {
	case want == 0:
		return usageErr("%s: unexpected argument %q (rollout %s --help lists its flags)", cmd, pos[0], cmd)
	case len(pos) == 0:
		return usageErr("%s: which rollout? give its id (rollout list shows them)", cmd)
	}
	return usageErr("%s: expected one rollout id, got %d arguments: %s", cmd, len(pos), strings.Join(pos, " "))
}

// noArgs parses a command that takes flags only.
func noArgs(fs *flag.FlagSet, args []string) error {
	pos, err := parse(fs, args)
	if err == nil && len(pos) > 0 {
		err = idCountError(fs.Name(), 0, pos)
	}
	return err
}

func oneID(fs *flag.FlagSet, args []string) (string, error) {
	pos, err := parse(fs, args)
	if err != nil {
		return "", err
	}
	if len(pos) != 1 {
		return "", idCountError(fs.Name(), 1, pos)
	}
	return pos[0], nil
}

// apiClient builds the Phala client from the environment.
func apiClient(e *Env, version string) (*api.Client, error) {
	return api.New(api.Config{APIKey: e.Getenv("PHALA_CLOUD_API_KEY"), Prefix: e.Getenv("PHALA_CLOUD_API_PREFIX"), APIVersion: version})
}

// keyHint points at the API key when the API refused it.
func keyHint(err error) error {
	if api.StatusOf(err) == 401 {
		return fmt.Errorf("%w (the API refused PHALA_CLOUD_API_KEY)", err)
	}
	return err
}

// workerClient is the client workers use: every call is tried once,
// because a worker's retries belong to the queue, where the rollout's rate
// limit paces them and its attempts count them (the planner's client
// retries reads itself).
func workerClient(e *Env, version string) (*api.Client, error) {
	return api.New(api.Config{APIKey: e.Getenv("PHALA_CLOUD_API_KEY"), Prefix: e.Getenv("PHALA_CLOUD_API_PREFIX"), APIVersion: version, ReadTries: 1})
}

func openRedis(ctx context.Context, e *Env, flagURL string) (redis.UniversalClient, error) {
	return redisconn.Open(ctx, redisURL(e, flagURL))
}

// redisURL is --redis, else $REDIS_URL.
func redisURL(e *Env, flagURL string) string {
	if flagURL != "" {
		return flagURL
	}
	return e.Getenv("REDIS_URL")
}

func checkFormat(o string, allowed ...string) error {
	for _, a := range allowed {
		if o == a {
			return nil
		}
	}
	return usageErr("-o %s: expected one of %s", o, strings.Join(allowed, ", "))
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// logFlags are the log flags of every long-running command (worker, sim,
// demo): --log-format, and --debug where the command has it.
type logFlags struct {
	format string
	debug  bool
}

func (l *logFlags) register(fs *flag.FlagSet, debug bool) {
	fs.StringVar(&l.format, "log-format", "text", "log format on stderr: text or json (one JSON object a line)")
	if debug {
		fs.BoolVar(&l.debug, "debug", false, "log every CVM")
	}
}

// logger is the one place a command's logger is made: slog on stderr, as
// text or JSON, at INFO (DEBUG with --debug).
func (l *logFlags) logger(e *Env) (*slog.Logger, error) {
	lvl := slog.LevelInfo
	if l.debug {
		lvl = slog.LevelDebug
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch l.format {
	case "text", "":
		return slog.New(slog.NewTextHandler(e.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(e.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %s: expected text or json", textsafe.Cut(l.format, textsafe.MaxQuoted))
}

// redisCmd is what every command that reads or writes rollouts parses:
// --redis, and -o when it has formats.
type redisCmd struct {
	fs      *flag.FlagSet
	out     *string
	url     *string
	formats []string
}

// newRedisCmd starts a command's flags; formats[0] is the default -o.
func newRedisCmd(name string, formats ...string) *redisCmd {
	c := &redisCmd{fs: flag.NewFlagSet(name, flag.ContinueOnError), formats: formats}
	c.url = c.fs.String("redis", "", "Redis URL (default $REDIS_URL)")
	if len(formats) > 0 {
		c.out = c.fs.String("o", formats[0], "output: "+strings.Join(formats, ", "))
	}
	return c
}

// open parses args (ids: how many positional rollout ids, -1 for any),
// checks -o and connects to Redis. done closes the connection.
func (c *redisCmd) open(ctx context.Context, e *Env, args []string, ids int) ([]string, *store.Store, func(), error) {
	pos, err := parse(c.fs, args)
	if err != nil {
		return nil, nil, nil, err
	}
	if ids >= 0 && len(pos) != ids {
		return nil, nil, nil, idCountError(c.fs.Name(), ids, pos)
	}
	if c.out != nil {
		if err := checkFormat(*c.out, c.formats...); err != nil {
			return nil, nil, nil, err
		}
	}
	rdb, err := openRedis(ctx, e, *c.url)
	if err != nil {
		return nil, nil, nil, err
	}
	return pos, store.New(rdb), func() { rdb.Close() }, nil
}

// format is the chosen -o.
func (c *redisCmd) format() string { return *c.out }
