package metrics

import (
	"context"
	"net/http"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Handler is a worker's HTTP listener: /metrics; /healthz, 200 while the
// process serves (liveness); /readyz, 200 when Redis answers a PING within
// PingTimeout, else 503 (readiness); and root, when not nil, at / (the
// web dashboard).
func (m *Metrics) Handler(root http.Handler) http.Handler {
	mux := http.NewServeMux()
	metrics := promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		// A Redis that does not answer leaves the counters as they are;
		// rollout_redis_up says why.
		_ = m.Prune(r.Context())
		metrics.ServeHTTP(w, r)
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := m.Ready(r.Context()); err != nil {
			http.Error(w, "redis: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	if root != nil {
		mux.Handle("/", root)
	}
	return mux
}

// Ready pings Redis within PingTimeout.
func (m *Metrics) Ready(ctx context.Context) error {
	if m.opt.Store == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, PingTimeout)
	defer cancel()
	return m.opt.Store.Redis().Ping(ctx).Err()
}
