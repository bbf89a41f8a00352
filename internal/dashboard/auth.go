package dashboard

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/phalafleet/rollout/internal/store"
	"github.com/redis/go-redis/v9"
)

// Who may act, and how a browser proves it.
//
// The operator signs in with the token (a form POST); the answer sets a
// session cookie (HttpOnly, SameSite=Strict) and the page gets that
// session's CSRF token, which every action POST must carry in
// X-CSRF-Token. A script may instead send "Authorization: Bearer TOKEN"
// and X-Operator: NAME (a browser never adds that header on its own, so
// it needs no CSRF token). Every POST must also come from the dashboard's
// own origin (Sec-Fetch-Site, else Origin). Sessions live in this
// process's memory: restarting the dashboard signs everyone out.

const (
	sessionCookie = "rollout_dashboard"
	sessionTTL    = 12 * time.Hour
	maxName       = 64
)

type session struct {
	name, csrf string
	expires    time.Time
}

type auth struct {
	token string
	now   func() time.Time

	mu       sync.Mutex
	sessions map[string]session
}

func newAuth(token string, now func() time.Time) *auth {
	return &auth{token: token, now: now, sessions: map[string]session{}}
}

func (a *auth) enabled() bool { return a.token != "" }

func (a *auth) tokenOK(t string) bool {
	return a.enabled() && subtle.ConstantTimeCompare([]byte(t), []byte(a.token)) == 1
}

func randomHex() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (a *auth) start(name string) (id string, s session) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	for k, s := range a.sessions {
		if now.After(s.expires) {
			delete(a.sessions, k)
		}
	}
	id, s = randomHex(), session{name: name, csrf: randomHex(), expires: now.Add(sessionTTL)}
	a.sessions[id] = s
	return id, s
}

func (a *auth) lookup(r *http.Request) (session, bool) {
	c, err := r.Cookie(sessionCookie)
	if err != nil {
		return session{}, false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	s, ok := a.sessions[c.Value]
	if !ok || a.now().After(s.expires) {
		return session{}, false
	}
	return s, true
}

func (a *auth) end(r *http.Request) {
	if c, err := r.Cookie(sessionCookie); err == nil {
		a.mu.Lock()
		delete(a.sessions, c.Value)
		a.mu.Unlock()
	}
}

// sameOrigin reports whether a POST comes from the dashboard's own pages:
// Sec-Fetch-Site (sent by every current browser) must be same-origin;
// without it, an Origin must name this host. A request with neither is
// not from a browser (curl, a script) and cannot ride a victim's cookie.
func sameOrigin(r *http.Request) bool {
	if s := r.Header.Get("Sec-Fetch-Site"); s != "" {
		return s == "same-origin"
	}
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		return err == nil && u.Host == r.Host
	}
	return true
}

// cleanName checks an operator name: printable, at most maxName runes.
func cleanName(n string) (string, error) {
	n = strings.TrimSpace(n)
	if n == "" {
		return "", errors.New("name: say who you are (it goes in the audit trail)")
	}
	if len([]rune(n)) > maxName {
		return "", fmt.Errorf("name: at most %d characters", maxName)
	}
	for _, r := range n {
		if !unicode.IsPrint(r) {
			return "", errors.New("name: printable characters only")
		}
	}
	return n, nil
}

type sessionView struct {
	Writable bool   `json:"writable"`  // a token is configured
	SignedIn bool   `json:"signed_in"` // this browser holds a session
	Name     string `json:"name,omitempty"`
	CSRF     string `json:"csrf,omitempty"`
	Default  string `json:"default_name,omitempty"`
}

func (h *Handler) serveSession(w http.ResponseWriter, r *http.Request) {
	v := sessionView{Writable: h.auth.enabled(), Default: h.cfg.Name}
	if s, ok := h.auth.lookup(r); ok {
		v.SignedIn, v.Name, v.CSRF = true, s.name, s.csrf
	}
	writeJSON(w, http.StatusOK, v)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// serveLogin checks the token of the sign-in form (token, name) and
// starts a session.
func (h *Handler) serveLogin(w http.ResponseWriter, r *http.Request) {
	if !h.auth.enabled() {
		jsonError(w, http.StatusForbidden, "this dashboard is read-only (start it with --token-file to allow actions)")
		return
	}
	if !sameOrigin(r) {
		jsonError(w, http.StatusForbidden, "cross-site request refused")
		return
	}
	if !h.auth.tokenOK(r.PostFormValue("token")) {
		h.cfg.Log.Warn("dashboard: sign-in refused: wrong token", "remote", r.RemoteAddr)
		jsonError(w, http.StatusUnauthorized, "wrong token")
		return
	}
	name, err := cleanName(r.PostFormValue("name"))
	if err != nil {
		jsonError(w, http.StatusBadRequest, err.Error())
		return
	}
	id, s := h.auth.start(name)
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: id, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode,
		Secure: r.TLS != nil, MaxAge: int(sessionTTL.Seconds())})
	writeJSON(w, http.StatusOK, sessionView{Writable: true, SignedIn: true, Name: s.name, CSRF: s.csrf})
}

func (h *Handler) serveLogout(w http.ResponseWriter, r *http.Request) {
	if !sameOrigin(r) {
		jsonError(w, http.StatusForbidden, "cross-site request refused")
		return
	}
	h.auth.end(r)
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode, MaxAge: -1})
	writeJSON(w, http.StatusOK, sessionView{Writable: h.auth.enabled()})
}

// operator is who sends an action: a session (with its CSRF token) or a
// bearer token with X-Operator. The error's status says why not.
func (h *Handler) operator(r *http.Request) (string, int, error) {
	if !h.auth.enabled() {
		return "", http.StatusForbidden, errors.New("this dashboard is read-only (start it with --token-file to allow actions)")
	}
	if !sameOrigin(r) {
		return "", http.StatusForbidden, errors.New("cross-site request refused")
	}
	if bearer, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		if !h.auth.tokenOK(bearer) {
			h.cfg.Log.Warn("dashboard: action refused: wrong bearer token", "remote", r.RemoteAddr, "path", r.URL.Path)
			return "", http.StatusUnauthorized, errors.New("wrong token")
		}
		name, err := cleanName(r.Header.Get("X-Operator"))
		if err != nil {
			return "", http.StatusBadRequest, errors.New("X-Operator: " + err.Error())
		}
		return name, 0, nil
	}
	s, ok := h.auth.lookup(r)
	if !ok {
		return "", http.StatusUnauthorized, errors.New("sign in with the dashboard's token first")
	}
	if subtle.ConstantTimeCompare([]byte(r.Header.Get("X-CSRF-Token")), []byte(s.csrf)) != 1 {
		return "", http.StatusForbidden, errors.New("missing or wrong CSRF token (reload the page)")
	}
	return s.name, 0, nil
}

// serveAction runs one operation on a rollout through control, as the
// CLI's commands do, with who = "dashboard:NAME". An optional form field
// reason goes with pause and cancel.
func (h *Handler) serveAction(w http.ResponseWriter, r *http.Request) {
	name, status, err := h.operator(r)
	if err != nil {
		jsonError(w, status, err.Error())
		return
	}
	id, action, who := r.PathValue("id"), r.PathValue("action"), "dashboard:"+name
	reason := strings.TrimSpace(r.PostFormValue("reason"))
	if len(reason) > 500 {
		jsonError(w, http.StatusBadRequest, "reason: at most 500 characters")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	now := h.now()
	var msg string
	switch action {
	case "pause":
		ch, err2 := h.ctl.Pause(ctx, id, who, reason, now)
		msg, err = changed(ch.From, ch.To), err2
	case "resume":
		ch, err2 := h.ctl.Resume(ctx, id, who, -1, now)
		msg, err = changed(ch.From, ch.To), err2
	case "cancel":
		ch, err2 := h.ctl.Cancel(ctx, id, who, reason, now)
		msg, err = changed(ch.From, ch.To), err2
	case "promote":
		var ro *store.Rollout
		if ro, err = h.ctl.Promote(ctx, id, who, now); err == nil {
			msg = fmt.Sprintf("stage %d (%s) promoted", ro.Stage+1, ro.Stages[ro.Stage].Name)
		}
	case "retry":
		var n int
		if n, err = h.ctl.RetryFailed(ctx, id, who, now); err == nil {
			msg = fmt.Sprintf("%d failed CVMs queued again", n)
		}
	default:
		jsonError(w, http.StatusNotFound, "no action "+action+" (pause, resume, cancel, promote, retry)")
		return
	}
	switch {
	case errors.Is(err, store.ErrNotFound):
		jsonError(w, http.StatusNotFound, err.Error())
		return
	case err != nil && unreachable(err):
		h.cfg.Log.Warn("dashboard: action failed", "action", action, "rollout", id, "err", err)
		jsonError(w, http.StatusServiceUnavailable, err.Error())
		return
	case err != nil: // control refused it: the rollout's state does not allow it now
		jsonError(w, http.StatusConflict, err.Error())
		return
	}
	h.cfg.Log.Info("dashboard: action", "action", action, "rollout", id, "by", who)
	writeJSON(w, http.StatusOK, map[string]string{"message": "rollout " + id + ": " + msg})
}

// unreachable: err is Redis's (or the network's), not a refusal.
func unreachable(err error) bool {
	var re redis.Error
	var ne net.Error
	return errors.As(err, &re) || errors.As(err, &ne) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, redis.ErrClosed)
}

// cause drops the path an *fs.PathError repeats.
func cause(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

func changed(from, to store.RolloutState) string {
	if from == to {
		return "already " + string(to)
	}
	return string(from) + " -> " + string(to)
}

// LoadToken reads a token file: refused unless only its owner may read it
// (mode 0600 or stricter), since the token lets anyone who has it act on
// every rollout. Surrounding whitespace is dropped.
func LoadToken(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("--token-file %s: %v", path, cause(err))
	}
	if m := fi.Mode().Perm(); m&0o077 != 0 {
		return "", fmt.Errorf("--token-file %s: mode %04o lets others read it; chmod 600 %s", path, m, path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--token-file %s: %v", path, cause(err))
	}
	t := strings.TrimSpace(string(b))
	if len(t) < 16 {
		return "", fmt.Errorf("--token-file %s: the token must be at least 16 characters (e.g. openssl rand -hex 16 > %s)", path, path)
	}
	return t, nil
}
