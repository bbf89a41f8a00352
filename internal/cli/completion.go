package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
)

// runCompletion prints a completion script for a shell, generated from the
// command table and each command's flags: a command or flag added to the
// table completes with no change here.
func runCompletion(_ context.Context, e *Env, args []string) error {
	fs := flag.NewFlagSet("completion", flag.ContinueOnError)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageErr("completion: which shell? bash, zsh or fish (e.g. source <(rollout completion bash))")
	}
	gen, ok := map[string]func(io.Writer, []command){"bash": bashCompletion, "zsh": zshCompletion, "fish": fishCompletion}[pos[0]]
	if !ok {
		return usageErr("completion: %q: expected bash, zsh or fish", pos[0])
	}
	gen(e.Stdout, commands())
	return nil
}

func names(cs []command) string {
	n := make([]string, len(cs))
	for i, c := range cs {
		n[i] = c.name
	}
	return strings.Join(n, " ")
}

// bashCompletion: `source <(rollout completion bash)`, or save it in
// /etc/bash_completion.d/rollout.
func bashCompletion(w io.Writer, cs []command) {
	fmt.Fprintf(w, "# bash completion for rollout: source <(rollout completion bash)\n_rollout() {\n")
	fmt.Fprintf(w, "  local cur=${COMP_WORDS[COMP_CWORD]} flags=\"\"\n")
	fmt.Fprintf(w, "  if [ \"$COMP_CWORD\" -eq 1 ]; then\n    COMPREPLY=($(compgen -W %q -- \"$cur\"))\n    return\n  fi\n", names(cs)+" --help --version")
	fmt.Fprintf(w, "  case \"${COMP_WORDS[1]}\" in\n")
	for _, c := range cs {
		var fl []string
		for _, f := range flagsOf(c) {
			fl = append(fl, dashed(f))
		}
		if c.name == "help" {
			fmt.Fprintf(w, "    help) COMPREPLY=($(compgen -W %q -- \"$cur\")); return ;;\n", names(cs))
			continue
		}
		if c.name == "completion" {
			fmt.Fprintf(w, "    completion) COMPREPLY=($(compgen -W \"bash zsh fish\" -- \"$cur\")); return ;;\n")
			continue
		}
		fmt.Fprintf(w, "    %s) flags=%q ;;\n", c.name, strings.Join(append(fl, "--help"), " "))
	}
	fmt.Fprintf(w, "  esac\n")
	fmt.Fprintf(w, "  if [[ $cur == -* ]]; then\n    COMPREPLY=($(compgen -W \"$flags\" -- \"$cur\"))\n  else\n    COMPREPLY=($(compgen -f -- \"$cur\"))\n  fi\n}\ncomplete -o filenames -F _rollout rollout\n")
}

// zshQuote makes s safe inside a single-quoted zsh word of an _arguments
// or _describe spec (where [ ] and : mean something).
func zshQuote(s string) string {
	return strings.NewReplacer("'", "'\\''", "[", "(", "]", ")", ":", "\\:").Replace(s)
}

// zshCompletion: save as _rollout in a directory of $fpath, or
// `source <(rollout completion zsh)` after compinit.
func zshCompletion(w io.Writer, cs []command) {
	fmt.Fprintf(w, "#compdef rollout\n# zsh completion for rollout: source <(rollout completion zsh)\n_rollout() {\n  local -a cmds\n  cmds=(\n")
	for _, c := range cs {
		_, what := c.split()
		fmt.Fprintf(w, "    '%s:%s'\n", c.name, zshQuote(what))
	}
	fmt.Fprintf(w, "  )\n  if (( CURRENT == 2 )); then\n    _describe -t commands 'rollout command' cmds\n    return\n  fi\n")
	fmt.Fprintf(w, "  local cmd=$words[2]\n  shift words\n  (( CURRENT-- ))\n  case $cmd in\n")
	for _, c := range cs {
		switch c.name {
		case "help":
			fmt.Fprintf(w, "    help) _describe -t commands 'rollout command' cmds ;;\n")
			continue
		case "completion":
			fmt.Fprintf(w, "    completion) _values 'shell' bash zsh fish ;;\n")
			continue
		}
		fmt.Fprintf(w, "    %s) _arguments -s", c.name)
		for _, f := range flagsOf(c) {
			spec := dashed(f) + "[" + zshQuote(f.Usage) + "]"
			if !isBool(f) {
				arg := "_files"
				if f.Name == "o" {
					arg = ""
				}
				spec += ":" + f.Name + ":" + arg
			}
			fmt.Fprintf(w, " '%s'", spec)
		}
		fmt.Fprintf(w, " '*:argument:_files' ;;\n")
	}
	fmt.Fprintf(w, "  esac\n}\ncompdef _rollout rollout\n")
}

// fishQuote makes s one single-quoted fish word.
func fishQuote(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, "'", `\'`).Replace(s) + "'"
}

// fishCompletion: `rollout completion fish > ~/.config/fish/completions/rollout.fish`.
func fishCompletion(w io.Writer, cs []command) {
	fmt.Fprintf(w, "# fish completion for rollout: rollout completion fish > ~/.config/fish/completions/rollout.fish\n")
	fmt.Fprintf(w, "complete -c rollout -f\n")
	for _, c := range cs {
		_, what := c.split()
		fmt.Fprintf(w, "complete -c rollout -n __fish_use_subcommand -a %s -d %s\n", c.name, fishQuote(what))
	}
	fmt.Fprintf(w, "complete -c rollout -n '__fish_seen_subcommand_from help' -a %s\n", fishQuote(names(cs)))
	fmt.Fprintf(w, "complete -c rollout -n '__fish_seen_subcommand_from completion' -a 'bash zsh fish'\n")
	for _, c := range cs {
		for _, f := range flagsOf(c) {
			opt := "-l " + f.Name
			if len(f.Name) == 1 {
				opt = "-s " + f.Name
			}
			if !isBool(f) {
				opt += " -r -F"
			}
			fmt.Fprintf(w, "complete -c rollout -n '__fish_seen_subcommand_from %s' %s -d %s\n", c.name, opt, fishQuote(f.Usage))
		}
	}
}
