package sim

import (
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/phalafleet/rollout/internal/api"
	"golang.org/x/time/rate"
)

// Faults are what a test or operator injects. Zero values inject nothing.
// They may be changed while the server runs through SetFaults.
type Faults struct {
	Latency      time.Duration // added to every request
	LatencySpike float64       // share of requests that take 10x Latency (min 1s)
	ErrorRate    float64       // share of requests answered 500/502/503 (or ErrorCodes)
	ErrorCodes   []int         // the statuses ErrorRate answers, at random (default 500, 502, 503)
	// ErrorRetryAfter, when set, goes with every injected 503 as its
	// Retry-After (whole seconds): an API that says it is busy.
	ErrorRetryAfter time.Duration
	RateLimit       float64 // requests per second across all clients; above it, 429 + Retry-After
	RateBurst       int     // token bucket size (default: RateLimit, at least 1)
	// RateChanges change RateLimit (burst included, as RateBurst/RateLimit
	// says) at the given times after SetFaults: a limit that drops or rises
	// mid-rollout.
	RateChanges []RateChange
	DropRate    float64 // share of requests whose connection is closed with no answer
	HangRate    float64 // share of requests that never answer (until the client gives up)
	GateOff     bool    // the workspace's network-config feature is off: PATCH answers 403
	Down        bool    // every request answers 503
	// RestartTime is how long a CVM takes to come back after PATCH with restart:true.
	RestartTime time.Duration
}

// RateChange is a new rate limit from After on.
type RateChange struct {
	After time.Duration
	Limit float64
}

// Options configures a Server.
type Options struct {
	Fleet  FleetOptions
	APIKey string // the only key accepted; required
}

// Stats counts what clients did, so tests can assert on it.
type Stats struct {
	Requests      int64
	Patches       int64
	Throttled     int64 // 429s answered
	ServerErrors  int64 // injected 5xx answered
	PatchesPerCVM map[string]int
	// Since the last ResetPeaks, over the calls on one CVM (GET
	// /cvms/{id}..., PATCH): the most answered at once, the most PATCHes
	// at once, and how many came in each wall-clock second (unix
	// second -> calls), to check a rollout's rate and in-flight limits
	// where they matter.
	MaxConcurrent, MaxConcurrentPatches int64
	PerSecond                           map[int64]int64
}

// MaxPerSecond is the most calls on one CVM that came in one wall-clock second.
func (st Stats) MaxPerSecond() int64 {
	var m int64
	for _, n := range st.PerSecond {
		m = max(m, n)
	}
	return m
}

// Server is the simulator. It is an http.Handler serving /api/v1/...
type Server struct {
	key string
	mux *http.ServeMux

	mu      sync.RWMutex
	cvms    map[string]*cvm
	order   []*cvm
	faults  Faults
	limiter *rate.Limiter
	changes []*time.Timer  // pending RateChanges
	forced  map[string]int // cvm id -> status to answer on PATCH
	unread  map[string]int // cvm id -> status to answer on GET network-config
	patches map[string]int

	requests, patchCount, throttled, serverErrors atomic.Int64

	// Calls on one CVM: in progress now (all, PATCHes) and the peaks.
	busy, busyPatches, peak, peakPatches atomic.Int64
	perSecond                            map[int64]int64 // under mu
}

// New builds a simulator over a generated fleet.
func New(o Options) *Server {
	s := &Server{key: o.APIKey, cvms: map[string]*cvm{}, forced: map[string]int{}, unread: map[string]int{}, patches: map[string]int{}, perSecond: map[int64]int64{}}
	for _, c := range generate(o.Fleet) {
		s.cvms[c.id] = c
		s.order = append(s.order, c)
	}
	m := http.NewServeMux()
	m.HandleFunc("GET /api/v1/cvms/paginated", s.listPaginated)
	m.HandleFunc("GET /api/v1/cvms", s.listAll)
	m.HandleFunc("GET /api/v1/cvms/{cvm_id}", s.getCVM)
	m.HandleFunc("GET /api/v1/cvms/{cvm_id}/network-config", s.getNetworkConfig)
	m.HandleFunc("PATCH /api/v1/cvms/{cvm_id}/network-config", s.patchNetworkConfig)
	s.mux = m
	return s
}

// NewAPIKey makes up a key in the format of real ones (phak_…).
func NewAPIKey() string {
	b := make([]byte, 16)
	_, _ = crand.Read(b)
	return "phak_" + hex.EncodeToString(b)
}

// SetFaults replaces the injected faults.
func (s *Server) SetFaults(f Faults) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = f
	for _, t := range s.changes {
		t.Stop()
	}
	s.changes = nil
	s.limiter = newLimiter(f.RateLimit, f.RateBurst, f.RateLimit)
	for _, c := range f.RateChanges {
		s.changes = append(s.changes, time.AfterFunc(c.After, func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.faults.RateLimit = c.Limit
			s.limiter = newLimiter(c.Limit, f.RateBurst, f.RateLimit)
		}))
	}
}

// newLimiter is a token bucket at limit req/s (nil: none) whose burst is
// burst at base req/s, scaled to limit (default: a second's worth).
func newLimiter(limit float64, burst int, base float64) *rate.Limiter {
	if limit <= 0 {
		return nil
	}
	b := max(1, int(limit))
	if burst > 0 && base > 0 {
		b = max(1, int(float64(burst)*limit/base))
	}
	return rate.NewLimiter(rate.Limit(limit), b)
}

// Faults returns the injected faults.
func (s *Server) Faults() Faults {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.faults
}

// FailPatch makes every PATCH of cvm id answer status (403, 404, 422, 500...).
// Status 0 clears it.
func (s *Server) FailPatch(id string, status int) { s.setStatus(s.forced, id, status) }

// FailRead makes every GET of cvm id's network config answer status (500,
// 503...). Status 0 clears it.
func (s *Server) FailRead(id string, status int) { s.setStatus(s.unread, id, status) }

func (s *Server) setStatus(m map[string]int, id string, status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if status == 0 {
		delete(m, id)
	} else {
		m[id] = status
	}
}

// Remove deletes a CVM, as if it was deleted between plan and apply.
func (s *Server) Remove(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.cvms, id)
	for i, c := range s.order {
		if c.id == id {
			s.order = append(s.order[:i:i], s.order[i+1:]...)
			break
		}
	}
}

// SetVMMVersionOf changes the VMM version on the node hosting cvm id (and so
// on every CVM of that node). nil makes it unknown.
func (s *Server) SetVMMVersionOf(id string, v *string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.cvms[id]; c != nil {
		c.node.version = v
	}
}

// NeverComesBack makes a restart leave cvm id stopped.
func (s *Server) NeverComesBack(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.cvms[id]; c != nil {
		c.neverBack = true
	}
}

// Config returns the current network config of a CVM (for assertions).
func (s *Server) Config(id string) (kms, gateway []string, ok bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	c := s.cvms[id]
	if c == nil {
		return nil, nil, false
	}
	return append([]string(nil), c.kms...), append([]string(nil), c.gateway...), true
}

// SetConfig sets a CVM's URLs, as if someone changed them outside a rollout.
func (s *Server) SetConfig(id string, kms, gateway []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.cvms[id]; c != nil {
		c.kms, c.gateway = kms, gateway
	}
}

// IDs lists the fleet's CVM ids in list order.
func (s *Server) IDs() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]string, len(s.order))
	for i, c := range s.order {
		out[i] = c.id
	}
	return out
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	s.mu.RLock()
	defer s.mu.RUnlock()
	per := make(map[string]int, len(s.patches))
	for k, v := range s.patches {
		per[k] = v
	}
	ps := make(map[int64]int64, len(s.perSecond))
	for k, v := range s.perSecond {
		ps[k] = v
	}
	return Stats{Requests: s.requests.Load(), Patches: s.patchCount.Load(), Throttled: s.throttled.Load(),
		ServerErrors: s.serverErrors.Load(), PatchesPerCVM: per,
		MaxConcurrent: s.peak.Load(), MaxConcurrentPatches: s.peakPatches.Load(), PerSecond: ps}
}

// ResetPeaks starts the concurrency peaks and the per-second counts
// afresh (after a plan, say, whose reads are not the rollout's).
func (s *Server) ResetPeaks() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.peak.Store(s.busy.Load())
	s.peakPatches.Store(s.busyPatches.Load())
	s.perSecond = map[int64]int64{}
}

// track counts a call on one CVM while it is served.
func (s *Server) track(r *http.Request) (done func()) {
	p := r.URL.Path
	if !strings.HasPrefix(p, "/api/v1/cvms/") || p == "/api/v1/cvms/paginated" {
		return func() {}
	}
	raise := func(n int64, peak *atomic.Int64) {
		for {
			m := peak.Load()
			if n <= m || peak.CompareAndSwap(m, n) {
				return
			}
		}
	}
	raise(s.busy.Add(1), &s.peak)
	patch := r.Method == http.MethodPatch
	if patch {
		raise(s.busyPatches.Add(1), &s.peakPatches)
	}
	s.mu.Lock()
	s.perSecond[time.Now().Unix()]++
	s.mu.Unlock()
	return func() {
		s.busy.Add(-1)
		if patch {
			s.busyPatches.Add(-1)
		}
	}
}

// ServeHTTP applies auth and faults, then routes.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.requests.Add(1)
	defer s.track(r)()
	rid := "req_" + strconv.FormatUint(rand.Uint64(), 36)
	w.Header().Set("X-Request-ID", rid)
	f, lim := s.Faults(), s.currentLimiter()
	if f.Latency > 0 {
		d := f.Latency
		if f.LatencySpike > 0 && rand.Float64() < f.LatencySpike {
			d = max(10*d, time.Second)
		}
		if !sleepCtx(r, d) {
			return
		}
	}
	if f.HangRate > 0 && rand.Float64() < f.HangRate {
		<-r.Context().Done() // never answers; the client's timeout ends it
		return
	}
	if f.DropRate > 0 && rand.Float64() < f.DropRate {
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				conn.Close()
				return
			}
		}
		panic(http.ErrAbortHandler) // closes the stream without an answer
	}
	if r.Header.Get("X-API-Key") != s.key || s.key == "" {
		writeJSON(w, http.StatusUnauthorized, map[string]any{"detail": "Not authenticated"})
		return
	}
	if f.Down {
		s.serverErrors.Add(1)
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"detail": "Service Unavailable"})
		return
	}
	if lim != nil {
		if res := lim.Reserve(); res.Delay() > 0 {
			res.Cancel()
			s.throttled.Add(1)
			w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(max(res.Delay(), time.Second).Seconds()))))
			writeJSON(w, http.StatusTooManyRequests, map[string]any{"detail": "Rate limit exceeded"})
			return
		}
	}
	if f.ErrorRate > 0 && rand.Float64() < f.ErrorRate {
		s.serverErrors.Add(1)
		codes := f.ErrorCodes
		if len(codes) == 0 {
			codes = []int{500, 502, 503}
		}
		code := codes[rand.IntN(len(codes))]
		if code == http.StatusServiceUnavailable && f.ErrorRetryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(f.ErrorRetryAfter.Seconds()))))
		}
		writeJSON(w, code, map[string]any{"detail": http.StatusText(code)})
		return
	}
	s.mux.ServeHTTP(w, r)
}

func (s *Server) currentLimiter() *rate.Limiter {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.limiter
}

func sleepCtx(r *http.Request, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
		return false
	}
}

func (s *Server) listPaginated(w http.ResponseWriter, r *http.Request) {
	page, pageSize := 1, 30
	var errs []validationErr
	if v := r.URL.Query().Get("page"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			errs = append(errs, validationErr{Loc: []any{"query", "page"}, Msg: "Input should be greater than or equal to 1", Type: "greater_than_equal"})
		}
		page = n
	}
	if v := r.URL.Query().Get("page_size"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 100 {
			errs = append(errs, validationErr{Loc: []any{"query", "page_size"}, Msg: "Input should be less than or equal to 100", Type: "less_than_equal"})
		}
		pageSize = n
	}
	if len(errs) > 0 {
		writeJSON(w, http.StatusUnprocessableEntity, map[string]any{"detail": errs})
		return
	}
	s.mu.Lock() // info() may settle a finished restart
	total := len(s.order)
	pages := (total + pageSize - 1) / pageSize
	items := []map[string]any{}
	if page <= pages { // also keeps (page-1)*pageSize from overflowing on a huge page
		for i := (page - 1) * pageSize; i < min(total, page*pageSize); i++ {
			items = append(items, s.order[i].info())
		}
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"items": items, "total": total, "page": page, "page_size": pageSize, "pages": pages})
}

func (s *Server) listAll(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock() // info() may settle a finished restart
	items := make([]map[string]any, 0, len(s.order))
	for _, c := range s.order {
		items = append(items, c.info())
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, items)
}

func (s *Server) lookup(w http.ResponseWriter, r *http.Request) *cvm {
	id := r.PathValue("cvm_id")
	c := s.cvms[id]
	if c == nil {
		writeJSON(w, http.StatusNotFound, map[string]any{"error_code": "ERR-03-001", "message": fmt.Sprintf("CVM %s not found", id),
			"request_id": w.Header().Get("X-Request-ID"), "details": []any{}, "suggestions": []string{"Check the CVM id"}, "links": []any{}})
	}
	return c
}

func (s *Server) getCVM(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock() // info() may settle a finished restart
	c := s.lookup(w, r)
	var body map[string]any
	if c != nil {
		body = c.info()
		body["compose_file"] = nil
	}
	s.mu.Unlock()
	if c != nil {
		writeJSON(w, http.StatusOK, body)
	}
}

func (s *Server) getNetworkConfig(w http.ResponseWriter, r *http.Request) {
	s.mu.RLock()
	c := s.lookup(w, r)
	var body networkConfigBody
	code := 0
	if c != nil {
		body, code = c.networkConfig(), s.unread[c.id]
	}
	s.mu.RUnlock()
	if code != 0 {
		writeJSON(w, code, map[string]any{"detail": fmt.Sprintf("injected failure %d", code)})
		return
	}
	if c != nil {
		writeJSON(w, http.StatusOK, body)
	}
}

type validationErr struct {
	Loc  []any  `json:"loc"`
	Msg  string `json:"msg"`
	Type string `json:"type"`
}

func (s *Server) patchNetworkConfig(w http.ResponseWriter, r *http.Request) {
	var raw map[string]json.RawMessage
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	if err := dec.Decode(&raw); err != nil {
		writeJSON(w, http.StatusUnprocessableEntity, map[string]any{"detail": []validationErr{{Loc: []any{"body"}, Msg: "JSON decode error", Type: "json_invalid"}}})
		return
	}
	upd, errs := parseUpdate(raw)
	if len(errs) > 0 {
		writeJSON(w, http.StatusUnprocessableEntity, map[string]any{"detail": errs})
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.lookup(w, r)
	if c == nil {
		return
	}
	if code := s.forced[c.id]; code != 0 {
		writeJSON(w, code, map[string]any{"detail": fmt.Sprintf("injected failure %d", code)})
		return
	}
	if s.faults.GateOff {
		writeJSON(w, http.StatusForbidden, map[string]any{"detail": "Network config update is not enabled for this workspace"})
		return
	}
	if ok, reason := api.VMMGate(deref(c.node.version)); !ok {
		writeJSON(w, http.StatusBadRequest, map[string]any{"detail": "VMM too old: " + reason + "; network config update requires VMM >= 0.5.7"})
		return
	}
	c.settle()
	if !c.restartUntil.IsZero() || c.status == "stopped" && c.neverBack {
		writeJSON(w, http.StatusConflict, map[string]any{"detail": "Another operation in progress"})
		return
	}
	s.patchCount.Add(1)
	s.patches[c.id]++
	if upd.KMSURLs != nil {
		c.kms = *upd.KMSURLs
	}
	if upd.GatewayURLs != nil {
		c.gateway = *upd.GatewayURLs
	}
	if upd.Restart {
		c.status = "restarting"
		d := max(s.faults.RestartTime, time.Millisecond)
		c.restartUntil, c.restartHalf = time.Now().Add(d), d/2
	}
	writeJSON(w, http.StatusOK, c.networkConfig())
}

// parseUpdate validates an UpdateNetworkConfigRequest the way FastAPI does:
// each list must be an array of strings or null; restart a boolean.
func parseUpdate(raw map[string]json.RawMessage) (api.NetworkConfigUpdate, []validationErr) {
	var upd api.NetworkConfigUpdate
	var errs []validationErr
	list := func(name string) *[]string {
		v, ok := raw[name]
		if !ok || string(v) == "null" {
			return nil
		}
		var l []string
		if err := json.Unmarshal(v, &l); err != nil || l == nil {
			errs = append(errs, validationErr{Loc: []any{"body", name}, Msg: "Input should be a valid list", Type: "list_type"})
			return nil
		}
		for i, u := range l {
			if strings.ContainsAny(u, " \t\n") || u == "" {
				errs = append(errs, validationErr{Loc: []any{"body", name, i}, Msg: "Input should be a valid URL", Type: "url_parsing"})
			}
		}
		return &l
	}
	upd.KMSURLs = list("kms_urls")
	upd.GatewayURLs = list("gateway_urls")
	if v, ok := raw["restart"]; ok && string(v) != "null" {
		if err := json.Unmarshal(v, &upd.Restart); err != nil {
			errs = append(errs, validationErr{Loc: []any{"body", "restart"}, Msg: "Input should be a valid boolean", Type: "bool_type"})
		}
	}
	return upd, errs
}

// settle ends a restart whose time is up. Callers hold the write lock.
func (c *cvm) settle() {
	if !c.restartUntil.IsZero() && !time.Now().Before(c.restartUntil) {
		c.restartUntil = time.Time{}
		c.status = "running"
		if c.neverBack {
			c.status = "stopped"
		}
	}
}

func (c *cvm) info() map[string]any {
	c.settle()
	status := c.status
	if !c.restartUntil.IsZero() {
		status = "starting"
		if time.Until(c.restartUntil) > c.restartHalf {
			status = "stopping"
		}
	}
	n := c.node
	return map[string]any{
		"id": c.id, "name": c.name, "app_id": c.appID, "vm_uuid": c.vmUUID, "instance_id": nil,
		"resource":  map[string]any{"instance_type": "tdx.small", "vcpu": 1, "memory_in_gb": 2, "disk_in_gb": 20},
		"node_info": map[string]any{"object_type": "node", "id": n.id, "node_id": n.id, "name": n.name, "region": n.region, "status": "ONLINE", "version": n.version},
		"status":    status, "in_progress": !c.restartUntil.IsZero(),
		"gateway":  map[string]any{"base_domain": "phala.example", "cname": c.appID[:12] + ".phala.example"},
		"kms_type": "phala",
	}
}

// networkConfigBody is NetworkConfigResponse; a struct, not a map, since
// the benchmarks serve it tens of thousands of times.
type networkConfigBody struct {
	KMSURLs     []string `json:"kms_urls"`
	GatewayURLs []string `json:"gateway_urls"`
	Ports       []port   `json:"ports"`
}

func (c *cvm) networkConfig() networkConfigBody {
	return networkConfigBody{KMSURLs: nonNil(c.kms), GatewayURLs: nonNil(c.gateway), Ports: c.ports}
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
