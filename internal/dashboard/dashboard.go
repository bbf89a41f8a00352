// Package dashboard is the web dashboard: the rollouts, one rollout (its
// stages, why it waits, its budget, rate, failures, audit trail and a
// per-CVM table), and the queue with its workers. It is one http.Handler
// with every asset embedded: `rollout dashboard` serves it, and a worker
// mounts it on its HTTP listener beside /metrics.
//
// Pages are static HTML plus one small script that polls a JSON snapshot
// per page. Each snapshot is read from Redis at most once per tick,
// whatever the number of viewers (cache), and each read is a bounded
// number of commands whatever the fleet's size (store.View, store.CVMs).
//
// Read-only unless a token is configured; then a signed-in operator gets
// the Pause / Resume / Cancel / Promote / Retry-failed buttons, which call
// internal/control like the CLI and are in the audit trail as
// "dashboard:NAME" (auth.go).
package dashboard

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/hibiken/asynq"
	"github.com/phalafleet/rollout/internal/control"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/redis/go-redis/v9"
)

//go:embed assets
var assets embed.FS

// Config configures a Handler.
type Config struct {
	RDB redis.UniversalClient
	// Tick is how often a page's snapshot is read again and how often the
	// pages poll (default 1s).
	Tick time.Duration
	// Token, when set, lets an operator who signs in with it act on
	// rollouts; empty: read-only.
	Token string
	// Name is the operator name the sign-in form starts with (--name).
	Name string
	// Now is the clock (default time.Now); tests pass a fake one.
	Now func() time.Time
	Log *slog.Logger
}

// Handler serves the dashboard.
type Handler struct {
	cfg   Config
	st    *store.Store
	lim   *store.Limits
	ctl   *control.Control
	insp  *asynq.Inspector
	cache *cache
	speed speed
	auth  *auth
	mux   *http.ServeMux
	page  *template.Template
}

// New builds the dashboard on cfg.RDB.
func New(cfg Config) *Handler {
	if cfg.Tick <= 0 {
		cfg.Tick = time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	h := &Handler{cfg: cfg, st: store.New(cfg.RDB), lim: store.NewLimits(cfg.RDB), ctl: control.New(cfg.RDB),
		insp: asynq.NewInspectorFromRedisClient(cfg.RDB), cache: newCache(cfg.Tick, cfg.Now),
		auth: newAuth(cfg.Token, cfg.Now), mux: http.NewServeMux()}
	h.page = template.Must(template.ParseFS(assets, "assets/index.html"))
	static, _ := fs.Sub(assets, "assets")
	h.mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	for _, p := range []string{"GET /{$}", "GET /rollouts/{id}", "GET /queue"} {
		h.mux.HandleFunc(p, h.serveIndex)
	}
	h.mux.HandleFunc("GET /api/rollouts", h.serveList)
	h.mux.HandleFunc("GET /api/rollouts/{id}", h.serveRollout)
	h.mux.HandleFunc("GET /api/rollouts/{id}/cvms", h.serveCVMs)
	h.mux.HandleFunc("GET /api/queue", h.serveQueue)
	h.mux.HandleFunc("GET /api/session", h.serveSession)
	h.mux.HandleFunc("POST /api/login", h.serveLogin)
	h.mux.HandleFunc("POST /api/logout", h.serveLogout)
	h.mux.HandleFunc("POST /api/rollouts/{id}/{action}", h.serveAction)
	return h
}

func (h *Handler) now() time.Time { return h.cfg.Now() }

// ServeHTTP serves a request, with headers that keep the page to its own
// origin: no framing, no script or style from anywhere else.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Referrer-Policy", "same-origin")
	h.mux.ServeHTTP(w, r)
}

func (h *Handler) serveIndex(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_ = h.page.Execute(w, map[string]any{"TickMS": h.cfg.Tick.Milliseconds()})
}

// snapshot answers key's cached JSON, loading it with load once per tick.
func (h *Handler) snapshot(w http.ResponseWriter, key string, load func(ctx context.Context) (any, error)) {
	body, err := h.cache.get(key, func() ([]byte, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		v, err := load(ctx)
		if err != nil {
			return nil, err
		}
		return json.Marshal(v)
	})
	if err != nil {
		status := http.StatusServiceUnavailable
		if errors.Is(err, store.ErrNotFound) {
			status = http.StatusNotFound
		} else {
			h.cfg.Log.Warn("dashboard: reading Redis", "err", err)
		}
		jsonError(w, status, err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(body)
}

func jsonError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

func (h *Handler) serveList(w http.ResponseWriter, r *http.Request) {
	h.snapshot(w, "list", func(ctx context.Context) (any, error) { return h.list(ctx) })
}

func (h *Handler) serveRollout(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	h.snapshot(w, "rollout\x00"+id, func(ctx context.Context) (any, error) { return h.rollout(ctx, id) })
}

func (h *Handler) serveQueue(w http.ResponseWriter, r *http.Request) {
	h.snapshot(w, "queue", func(ctx context.Context) (any, error) { return h.queue(ctx) })
}

// cvmPage is the per-CVM table's answer.
type cvmPage struct {
	Rows    []store.CVMRecord `json:"rows"`
	Total   int               `json:"total"`
	From    int               `json:"from"`
	Next    int               `json:"next"` // -1: no more
	Scanned int               `json:"scanned"`
}

// serveCVMs answers one page of the CVM table: ?from=N&limit=N&state=S&q=TEXT.
// Viewers asking the same page share its snapshot like any other page.
func (h *Handler) serveCVMs(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	q := store.CVMQuery{Limit: 50, State: store.CVMState(r.FormValue("state")), Match: r.FormValue("q")}
	if v := r.FormValue("from"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			jsonError(w, http.StatusBadRequest, "from: expected a position >= 0, got "+strconv.Quote(v))
			return
		}
		q.From = n
	}
	if v := r.FormValue("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > store.MaxPage {
			jsonError(w, http.StatusBadRequest, "limit: expected 1 to "+strconv.Itoa(store.MaxPage)+", got "+strconv.Quote(v))
			return
		}
		q.Limit = n
	}
	if q.State != "" && !validState(q.State) {
		jsonError(w, http.StatusBadRequest, "state: no CVM state "+strconv.Quote(string(q.State)))
		return
	}
	key := "cvms\x00" + id + "\x00" + strconv.Itoa(q.From) + "\x00" + strconv.Itoa(q.Limit) + "\x00" + string(q.State) + "\x00" + q.Match
	h.snapshot(w, key, func(ctx context.Context) (any, error) {
		if _, _, err := h.st.Spec(ctx, id); err != nil {
			return nil, err
		}
		p, err := h.st.CVMs(ctx, id, q)
		if err != nil {
			return nil, err
		}
		if p.Rows == nil {
			p.Rows = []store.CVMRecord{}
		}
		return cvmPage{Rows: p.Rows, Total: p.Total, From: p.From, Next: p.Next, Scanned: p.Scanned}, nil
	})
}

func validState(s store.CVMState) bool {
	for _, st := range store.CVMStates {
		if st == s {
			return true
		}
	}
	return false
}
