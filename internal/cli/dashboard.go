package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/phalafleet/rollout/internal/dashboard"
)

// runDashboard serves the web dashboard until ctx ends. Read-only unless
// --token-file is given (its mode checked): then a signed-in operator can
// pause, resume, cancel, promote and retry from the page.
func runDashboard(ctx context.Context, e *Env, args []string) error {
	fs := flag.NewFlagSet("dashboard", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:8080", "listen address (loopback by default: put a TLS proxy in front to share it)")
	redisFlag := fs.String("redis", "", "Redis URL (default $REDIS_URL)")
	tokenFile := fs.String("token-file", "", "file (mode 0600) holding the token that allows actions; without it the dashboard is read-only")
	name := fs.String("name", "", "operator name the sign-in form starts with (the audit trail says dashboard:NAME)")
	tick := fs.Duration("tick", time.Second, "how often pages refresh (and Redis is read, once for all viewers)")
	var lf logFlags // a long-running command: --log-format like worker's
	lf.register(fs, false)
	if err := noArgs(fs, args); err != nil {
		return err
	}
	log, err := lf.logger(e)
	if err != nil {
		return fmt.Errorf("dashboard: %w", err)
	}
	if *tick < 100*time.Millisecond {
		return fmt.Errorf("dashboard: --tick %s: at least 100ms", *tick)
	}
	var token string
	if *tokenFile != "" {
		if token, err = dashboard.LoadToken(*tokenFile); err != nil {
			return fmt.Errorf("dashboard: %w", err)
		}
	}
	rdb, err := openRedis(ctx, e, *redisFlag)
	if err != nil {
		return err
	}
	defer rdb.Close()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("dashboard: --addr: %v", err)
	}
	h := dashboard.New(dashboard.Config{RDB: rdb, Tick: *tick, Token: token, Name: *name, Log: log})
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	mode := "read-only (--token-file allows actions)"
	if token != "" {
		mode = "actions allowed once signed in with the token"
	}
	fmt.Fprintf(e.Stderr, "dashboard: http://%s/ (%s)\n", ln.Addr(), mode)
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("dashboard: %v", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}
