// Command rollout plans, applies, watches and controls a network-config
// rollout across a Phala Cloud fleet. See README.md.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/phalafleet/rollout/internal/cli"
	"github.com/phalafleet/rollout/internal/textsafe"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := cli.Run(ctx, cli.OSEnv(), os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "rollout:", textsafe.Line(err.Error()))
		os.Exit(cli.ExitCode(ctx, err))
	}
}
