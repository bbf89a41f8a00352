// Package notify delivers the notification outbox (store/outbox.go): any
// worker claims due entries under a lease, POSTs them signed, and records
// the outcome. A worker that dies mid-delivery leaves the entry to another
// once the lease runs out, under the same event id (X-Rollout-Event-Id), so
// a receiver may see an event twice, never lose one. Delivery runs in its
// own goroutines: a slow receiver never holds up a rollout.
package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/textsafe"
)

// Defaults of the worker flags.
const (
	DefaultLease   = 30 * time.Second
	DefaultTimeout = 10 * time.Second
	DefaultMaxAge  = 24 * time.Hour
)

// Deliverer delivers notifications until its context ends.
type Deliverer struct {
	Options
	Store   *store.Store
	Worker  string // names this worker in User-Agent
	Log     *slog.Logger
	Observe func(result string) // delivered, failed, given_up; may be nil

	sem chan struct{}
	wg  sync.WaitGroup
}

// Options are a deliverer's settings (the worker's --notify-* flags).
type Options struct {
	// Lease is how long a claimed entry is this worker's; a worker that
	// dies holds it that long. Above Timeout.
	Lease   time.Duration
	Timeout time.Duration // one POST
	MaxAge  time.Duration // retried with backoff until the event is this old
	// Backoff is the first retry's wait (doubling, capped at an hour).
	Backoff time.Duration
	// Dashboard is the dashboard's base URL for the body's link ("": none).
	Dashboard string
	Poll      time.Duration       // how often the outbox is looked at
	Parallel  int                 // deliveries at once
	Getenv    func(string) string // os.Getenv by default
	Client    *http.Client        // one that follows no redirect by default
}

func (d *Deliverer) defaults() {
	if d.Lease <= 0 {
		d.Lease = DefaultLease
	}
	if d.Timeout <= 0 {
		d.Timeout = min(DefaultTimeout, d.Lease/2)
	}
	if d.MaxAge <= 0 {
		d.MaxAge = DefaultMaxAge
	}
	if d.Backoff <= 0 {
		d.Backoff = 10 * time.Second
	}
	if d.Poll <= 0 {
		d.Poll = time.Second
	}
	if d.Parallel <= 0 {
		d.Parallel = 8
	}
	if d.Log == nil {
		d.Log = slog.Default()
	}
	if d.Getenv == nil {
		d.Getenv = os.Getenv
	}
	if d.Client == nil {
		d.Client = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	d.sem = make(chan struct{}, d.Parallel)
}

// Run delivers until ctx ends, then waits for deliveries under way.
func (d *Deliverer) Run(ctx context.Context) {
	d.defaults()
	defer d.wg.Wait()
	t := time.NewTicker(d.Poll)
	defer t.Stop()
	for {
		if err := d.Once(ctx, time.Now()); err != nil && ctx.Err() == nil {
			d.Log.Warn("notifications", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Once claims what is due now in every family that may have some and
// starts its deliveries (at most Parallel at once).
func (d *Deliverer) Once(ctx context.Context, now time.Time) error {
	if d.sem == nil {
		d.defaults()
	}
	fams, listed, err := d.Store.OutboxFamilies(ctx)
	if err != nil {
		return err
	}
	for _, f := range fams {
		free := cap(d.sem) - len(d.sem)
		if free == 0 {
			return nil
		}
		es, err := d.Store.Claim(ctx, f, token(), free, d.Lease, now)
		if err != nil {
			return err
		}
		if len(es) == 0 && listed[f] {
			if err := d.Store.ForgetOutboxFamily(ctx, f); err != nil {
				return err
			}
		}
		for _, e := range es {
			d.sem <- struct{}{}
			d.wg.Go(func() {
				defer func() { <-d.sem }()
				d.deliver(context.WithoutCancel(ctx), e)
			})
		}
	}
	return nil
}

// Wait waits for the deliveries started so far.
func (d *Deliverer) Wait() { d.wg.Wait() }

func (d *Deliverer) deliver(ctx context.Context, e store.Notification) {
	err := d.post(ctx, e)
	now := time.Now()
	outcome, result, next, msg := store.Delivered, "delivered", time.Time{}, ""
	if err != nil {
		msg = textsafe.Line(err.Error())
		outcome, result = store.Retry, "failed"
		next = now.Add(Backoff(d.Backoff, e.Attempts))
		if next.Sub(e.Time()) > d.MaxAge {
			outcome, result = store.GiveUp, "given_up"
		}
	}
	if _, serr := d.Store.SettleNotification(ctx, e, outcome, msg, next, now); serr != nil {
		d.Log.Warn("notification outcome not recorded (the lease runs out and it is sent again)", "event", e.ID, "err", serr)
	}
	if d.Observe != nil {
		d.Observe(result)
	}
	if err != nil {
		// The host only: a webhook URL's path may be its secret.
		d.Log.Warn("notification not delivered", "event", e.ID, "kind", e.Event, "host", Host(e.URL),
			"attempt", e.Attempts, "outcome", string(outcome), "err", msg)
	}
}

// Backoff is the wait after attempt n (1-based): base doubling each time,
// at most an hour, with jitter in [d/2, d].
func Backoff(base time.Duration, n int) time.Duration {
	d := base
	for i := 1; i < n && d < time.Hour; i++ {
		d *= 2
	}
	d = min(d, time.Hour)
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

// post sends e once.
func (d *Deliverer) post(ctx context.Context, e store.Notification) error {
	u, err := url.Parse(e.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return errors.New("not an http(s) URL")
	}
	body, err := Body(e, d.Dashboard)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, d.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.URL, bytes.NewReader(body))
	if err != nil {
		return errors.New("bad request") // never the URL
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "phalafleet-rollout (worker "+d.Worker+")")
	req.Header.Set("X-Rollout-Event-Id", e.ID)
	req.Header.Set("X-Rollout-Event", e.Event)
	if e.SecretEnv != "" {
		secret := d.Getenv(e.SecretEnv)
		if secret == "" {
			return fmt.Errorf("environment variable %s (secret_env) is not set on worker %s; not sent unsigned", e.SecretEnv, d.Worker)
		}
		req.Header.Set("X-Rollout-Signature", Sign(secret, time.Now(), body))
	}
	resp, err := d.Client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) { // its text quotes the URL
			err = ue.Err
		}
		if errors.Is(err, context.DeadlineExceeded) || os.IsTimeout(err) {
			return fmt.Errorf("no answer within %s", d.Timeout)
		}
		return err
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return nil
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		return fmt.Errorf("HTTP %d: redirects are not followed", resp.StatusCode)
	}
	return fmt.Errorf("HTTP %d", resp.StatusCode)
}

// Sign is the X-Rollout-Signature of body at t:
// t=UNIX,v1=HEX(HMAC-SHA256(secret, "UNIX." + body)).
func Sign(secret string, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(ts + "."))
	mac.Write(body)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac.Sum(nil))
}

// Verify checks a signature header against body and secret, and that its
// time is within tolerance of now (a replay window).
func Verify(secret, header string, body []byte, now time.Time, tolerance time.Duration) error {
	var ts, sig string
	for part := range strings.SplitSeq(header, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			sig = v
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || sig == "" {
		return errors.New("malformed signature header")
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return errors.New("signature too old")
	}
	want := Sign(secret, time.Unix(sec, 0), body)
	if !hmac.Equal([]byte(want), []byte("t="+ts+",v1="+sig)) {
		return errors.New("signature mismatch")
	}
	return nil
}

// Payload is the JSON body of a notification (format json).
type Payload struct {
	ID        string         `json:"id"`
	Event     string         `json:"event"`
	At        string         `json:"at"`
	Rollout   string         `json:"rollout_id"`
	Name      string         `json:"rollout_name"`
	Family    string         `json:"family"`
	State     string         `json:"state"`
	Stage     int            `json:"stage"` // 1-based
	StageName string         `json:"stage_name,omitempty"`
	Stages    int            `json:"stages"`
	Total     int            `json:"total"`
	Counts    map[string]int `json:"counts"`
	Cause     string         `json:"cause,omitempty"`
	Reason    string         `json:"reason,omitempty"`
	Dashboard string         `json:"dashboard_url,omitempty"`
}

// Body is what is POSTed for e: the same bytes on every attempt (but the
// dashboard link, which is the delivering worker's --dashboard-url).
func Body(e store.Notification, dashboard string) ([]byte, error) {
	p := Payload{ID: e.ID, Event: e.Event, At: e.At, Rollout: e.Rollout, Name: e.Name, Family: e.Family, State: e.State,
		Stage: e.Stage + 1, StageName: e.StageName, Stages: e.Stages, Total: e.Total, Counts: map[string]int{},
		Cause: e.Cause, Reason: e.Reason}
	for k, v := range e.Counts {
		p.Counts[string(k)] = v
	}
	if dashboard != "" {
		p.Dashboard = strings.TrimRight(dashboard, "/") + "/rollouts/" + url.PathEscape(e.Rollout)
	}
	if e.Format == "slack" {
		return json.Marshal(map[string]string{"text": slackText(p)})
	}
	return json.Marshal(p)
}

func slackText(p Payload) string {
	done := p.Counts["succeeded"] + p.Counts["unchanged"] + p.Counts["skipped"] + p.Counts["failed"] + p.Counts["cancelled"]
	s := fmt.Sprintf("rollout %s (%s): %s", p.Name, p.Rollout, strings.ReplaceAll(p.Event, "_", " "))
	if p.Stages > 1 {
		s += fmt.Sprintf(", stage %d/%d", p.Stage, p.Stages)
		if p.StageName != "" {
			s += " (" + p.StageName + ")"
		}
	}
	s += fmt.Sprintf(". %d/%d done, %d succeeded, %d failed.", done, p.Total, p.Counts["succeeded"], p.Counts["failed"])
	if p.Reason != "" {
		s += " " + p.Reason + "."
	}
	if p.Dashboard != "" {
		s += " <" + p.Dashboard + ">"
	}
	return s
}

// Host is what may be shown of a target URL: its scheme and host (a
// Slack-style webhook carries its secret in the path).
func Host(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "(bad url)"
	}
	return u.Scheme + "://" + u.Host
}

func token() string {
	return strconv.FormatUint(rand.Uint64(), 16)
}
