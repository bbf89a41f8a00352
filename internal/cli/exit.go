package cli

import (
	"context"
	"errors"
	"fmt"
)

// Exit statuses: a contract scripts rely on (README "Exit status"). One
// place decides them; cmd/rollout and cmd/worker exit with ExitCode(err).
const (
	ExitOK        = 0   // success
	ExitError     = 1   // anything else that went wrong
	ExitUsage     = 2   // unknown command, flag or argument; a bad flag value
	ExitFailed    = 3   // --wait/--watch: the rollout completed with failed CVMs
	ExitPaused    = 4   // --wait/--watch: the rollout is paused (failure budget, end_at or an operator)
	ExitCancelled = 5   // --wait/--watch: the rollout was cancelled
	ExitTimeout   = 6   // --wait/--watch: --timeout ran out; the rollout goes on
	ExitInterrupt = 130 // Ctrl-C (SIGINT) or SIGTERM: 128 + SIGINT, as shells do
)

// ExitCode is the process exit status for Run(ctx, ...)'s error. ctx is
// the main's signal context: whatever failed once it ended (Ctrl-C,
// SIGTERM) failed because of it.
func ExitCode(ctx context.Context, err error) int {
	var c coded
	switch {
	case err == nil:
		return ExitOK
	case ctx.Err() != nil || errors.Is(err, context.Canceled):
		return ExitInterrupt
	case errors.As(err, &c):
		return c.code
	}
	return ExitError
}

// coded is an error with its exit status.
type coded struct {
	code int
	err  error
}

func (c coded) Error() string { return c.err.Error() }
func (c coded) Unwrap() error { return c.err }

// withCode gives err the exit status code.
func withCode(code int, err error) error { return coded{code, err} }

// usageErr is a usage error (exit status 2): one line, like every error.
func usageErr(format string, a ...any) error { return coded{ExitUsage, fmt.Errorf(format, a...)} }
