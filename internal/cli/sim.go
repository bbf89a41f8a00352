package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/phalafleet/rollout/internal/api/sim"
)

// simFlags are the simulator's fault flags, shared by sim and demo.
type simFlags struct {
	cvms                             int
	seed                             uint64
	latency                          time.Duration
	errorRate, rateLimit, drop, hang float64
	gateOff                          bool
	oldShare                         float64
	atTarget                         float64 // share already at the demo target
}

func (s *simFlags) register(fs *flag.FlagSet, cvms int) {
	fs.IntVar(&s.cvms, "cvms", cvms, "CVMs in the generated fleet")
	fs.Uint64Var(&s.seed, "seed", 1, "fleet generator seed")
	fs.DurationVar(&s.latency, "latency", 0, "added to every request")
	fs.Float64Var(&s.errorRate, "error-rate", 0, "share of requests answered 5xx (0-1)")
	fs.Float64Var(&s.rateLimit, "rate-limit", 0, "requests/s before answering 429 (0: none)")
	fs.Float64Var(&s.drop, "drop-rate", 0, "share of connections closed without an answer")
	fs.Float64Var(&s.hang, "hang-rate", 0, "share of requests that never answer")
	fs.BoolVar(&s.gateOff, "gate-off", false, "the workspace's network-config feature is off (PATCH answers 403)")
	fs.Float64Var(&s.oldShare, "old-vmm-share", 0.1, "share of nodes with a VMM below 0.5.7")
	fs.Float64Var(&s.atTarget, "at-target-share", 0.05, "share of CVMs already at the demo's target URLs")
}

func (s *simFlags) server(key string) *sim.Server {
	srv := sim.New(sim.Options{APIKey: key, Fleet: sim.FleetOptions{CVMs: s.cvms, Seed: s.seed, OldVMMShare: s.oldShare,
		AtTargetShare: s.atTarget, AtTargetKMS: []string{demoKMS}, AtTargetGateway: []string{demoGateway}}})
	srv.SetFaults(sim.Faults{Latency: s.latency, ErrorRate: s.errorRate, RateLimit: s.rateLimit, DropRate: s.drop, HangRate: s.hang, GateOff: s.gateOff})
	return srv
}

// serveSim serves s on addr and returns the API prefix clients use.
func serveSim(ctx context.Context, s *sim.Server, addr string) (prefix string, stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("simulator: %v", err)
	}
	hs := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go hs.Serve(ln)
	stop = func() {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		hs.Shutdown(sctx)
	}
	return "http://" + ln.Addr().String() + "/api/v1", stop, nil
}

func runSim(ctx context.Context, e *Env, args []string) error {
	fs := flag.NewFlagSet("sim", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:8090", "listen address")
	var sf simFlags
	sf.register(fs, 1000)
	var lf logFlags
	lf.register(fs, false)
	if err := noArgs(fs, args); err != nil {
		return err
	}
	log, err := lf.logger(e)
	if err != nil {
		return fmt.Errorf("sim: %w", err)
	}
	text := lf.format != "json"
	key := e.Getenv("PHALA_CLOUD_API_KEY")
	if key == "" {
		// A key never goes into logs, made up or not: a person reads it
		// from the text output; a log collector's user sets one.
		if !text {
			return fmt.Errorf("sim: --log-format json: set PHALA_CLOUD_API_KEY (any value; the simulator accepts it), a made-up key is shown only with --log-format text")
		}
		key = sim.NewAPIKey()
		fmt.Fprintf(e.Stderr, "PHALA_CLOUD_API_KEY is not set; the simulator accepts this made-up key:\n  export PHALA_CLOUD_API_KEY=%s\n", key)
	}
	prefix, stop, err := serveSim(ctx, sf.server(key), *addr)
	if err != nil {
		return err
	}
	defer stop()
	if text {
		fmt.Fprintf(e.Stderr, "simulator: %d CVMs at %s\n  export PHALA_CLOUD_API_PREFIX=%s\n", sf.cvms, prefix, prefix)
	} else {
		log.Info("simulator serving", "cvms", sf.cvms, "api_prefix", prefix)
	}
	<-ctx.Done()
	if errors.Is(ctx.Err(), context.Canceled) {
		return nil
	}
	return ctx.Err()
}
