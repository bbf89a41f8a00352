// Command worker processes rollout tasks from Redis until SIGTERM, then
// drains in-flight CVMs. Run as many as you like, anywhere.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/phalafleet/rollout/internal/cli"
	"github.com/phalafleet/rollout/internal/textsafe"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Through cli.Run, as `rollout worker`, so --help is handled the same.
	if err := cli.Run(ctx, cli.OSEnv(), append([]string{"worker"}, os.Args[1:]...)); err != nil {
		msg := textsafe.Line(err.Error())
		if !strings.HasPrefix(msg, "worker: ") {
			msg = "worker: " + msg
		}
		fmt.Fprintln(os.Stderr, msg)
		os.Exit(cli.ExitCode(ctx, err))
	}
}
