package cli

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/phalafleet/rollout/internal/version"
)

// lookup finds a command of the table by name; a name that is none is a
// usage error that suggests the nearest one.
func lookup(name string) (command, error) {
	best, dist := "", 3 // suggest only within two edits
	for _, c := range commands() {
		if c.name == name {
			return c, nil
		}
		if d := editDistance(name, c.name); d < dist {
			best, dist = c.name, d
		}
	}
	if best != "" {
		return command{}, usageErr("unknown command %q: did you mean %q? (rollout help lists the commands)", name, best)
	}
	return command{}, usageErr("unknown command %q (rollout help lists the commands)", name)
}

// editDistance is the Levenshtein distance of a and b (bytes: command
// names are ASCII).
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// runHelp is `help [COMMAND]`: the command list, or one command's help
// (what COMMAND --help prints).
func runHelp(ctx context.Context, e *Env, args []string) error {
	fs := flag.NewFlagSet("help", flag.ContinueOnError)
	pos, err := parse(fs, args)
	switch {
	case err != nil:
		return err
	case len(pos) == 0:
		usage(e.Stdout)
		return nil
	case len(pos) > 1:
		return usageErr("help: one command at a time, got %d", len(pos))
	}
	c, err := lookup(pos[0])
	if err != nil {
		return err
	}
	if c.name == "help" {
		return helpShown{text: commandHelp(fs), fs: fs}
	}
	return c.run(ctx, e, []string{"--help"})
}

// runVersion is `version` and `--version`.
func runVersion(_ context.Context, e *Env, args []string) error {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	out := fs.String("o", "text", "output: text or json")
	if err := noArgs(fs, args); err != nil {
		return err
	}
	if err := checkFormat(*out, "text", "json"); err != nil {
		return err
	}
	if *out == "json" {
		return writeJSON(e.Stdout, version.Get())
	}
	fmt.Fprintln(e.Stdout, "rollout", version.Get())
	return nil
}

// flagsOf is a command's flags, from the FlagSet its --help shows.
func flagsOf(c command) []*flag.Flag {
	e := &Env{Stdout: io.Discard, Stderr: io.Discard, Getenv: func(string) string { return "" }}
	h, ok := c.run(context.Background(), e, []string{"--help"}).(helpShown)
	if !ok || h.fs == nil {
		return nil
	}
	var fl []*flag.Flag
	h.fs.VisitAll(func(f *flag.Flag) { fl = append(fl, f) })
	return fl
}

// dashed is how a flag is written: -o, --yes.
func dashed(f *flag.Flag) string {
	if len(f.Name) == 1 {
		return "-" + f.Name
	}
	return "--" + f.Name
}

// isBool says whether a flag takes no value.
func isBool(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}
