package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Defaults for a Client. DefaultAPIVersion is the newest version the
// published SDKs and CLI default to; it has node_info.version.
const (
	DefaultPrefix     = "https://cloud-api.phala.com/api/v1"
	DefaultAPIVersion = "2026-01-21"
	DefaultTimeout    = 30 * time.Second
	DefaultReadTries  = 5
	pageSize          = 100
)

// Version of this tool, sent in the User-Agent.
var ToolVersion = "0.1.0"

// Config configures a Client. Only APIKey has no default.
type Config struct {
	APIKey     string // sent as X-API-Key; never logged
	Prefix     string // e.g. https://cloud-api.phala.com/api/v1
	APIVersion string // X-Phala-Version
	Timeout    time.Duration
	ReadTries  int // attempts for idempotent reads (list, get); PATCH is tried once
	HTTPClient *http.Client
	// MaxBackoff caps the wait between read retries (and a Retry-After).
	MaxBackoff time.Duration
}

// ConfigFromEnv reads PHALA_CLOUD_API_KEY and PHALA_CLOUD_API_PREFIX.
func ConfigFromEnv() Config {
	return Config{APIKey: os.Getenv("PHALA_CLOUD_API_KEY"), Prefix: os.Getenv("PHALA_CLOUD_API_PREFIX")}
}

// Client talks to the Phala Cloud API. It is safe for concurrent use.
type Client struct {
	cfg  Config
	base *url.URL
	hc   *http.Client
}

// New checks cfg and returns a Client.
func New(cfg Config) (*Client, error) {
	if cfg.APIKey == "" {
		return nil, errors.New("PHALA_CLOUD_API_KEY is not set")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if cfg.APIVersion == "" {
		cfg.APIVersion = DefaultAPIVersion
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.ReadTries <= 0 {
		cfg.ReadTries = DefaultReadTries
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 20 * time.Second
	}
	u, err := url.Parse(strings.TrimRight(cfg.Prefix, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("PHALA_CLOUD_API_PREFIX %q is not an http(s) URL", cfg.Prefix)
	}
	hc := cfg.HTTPClient
	if hc == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = 256
		hc = &http.Client{Transport: tr}
	}
	// Go's client copies custom headers such as X-API-Key onto a redirect,
	// even to another host. Keep the key on the API's own origin.
	hcc := *hc
	next := hc.CheckRedirect
	hcc.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if o := via[0].URL; req.URL.Scheme != o.Scheme || req.URL.Host != o.Host {
			req.Header.Del("X-API-Key")
		}
		if next != nil {
			return next(req, via)
		}
		if len(via) >= 10 {
			return errors.New("stopped after 10 redirects")
		}
		return nil
	}
	return &Client{cfg: cfg, base: u, hc: &hcc}, nil
}

// ListCVMs pages through GET /cvms/paginated (page_size 100) and returns
// every CVM of the key's workspace.
func (c *Client) ListCVMs(ctx context.Context) ([]CVM, error) {
	var all []CVM
	for page := 1; ; page++ {
		var p Page
		q := url.Values{"page": {strconv.Itoa(page)}, "page_size": {strconv.Itoa(pageSize)}}
		if err := c.read(ctx, "/cvms/paginated", q, &p); err != nil {
			return nil, err
		}
		all = append(all, p.Items...)
		if len(p.Items) == 0 || page >= p.Pages {
			return all, nil
		}
	}
}

// CheckKey reads one CVM of the list, the cheapest call that proves the
// key works: a worker makes it at start, so a wrong key stops the worker
// instead of failing CVMs.
func (c *Client) CheckKey(ctx context.Context) error {
	var p Page
	return c.read(ctx, "/cvms/paginated", url.Values{"page": {"1"}, "page_size": {"1"}}, &p)
}

// GetCVM is GET /cvms/{id}.
func (c *Client) GetCVM(ctx context.Context, id string) (*CVM, error) {
	var cvm CVM
	if err := c.read(ctx, "/cvms/"+url.PathEscape(id), nil, &cvm); err != nil {
		return nil, err
	}
	return &cvm, nil
}

// GetNetworkConfig is GET /cvms/{id}/network-config.
func (c *Client) GetNetworkConfig(ctx context.Context, id string) (*NetworkConfig, error) {
	var nc NetworkConfig
	if err := c.read(ctx, "/cvms/"+url.PathEscape(id)+"/network-config", nil, &nc); err != nil {
		return nil, err
	}
	return &nc, nil
}

// PatchNetworkConfig is PATCH /cvms/{id}/network-config. It is tried once:
// retrying a mutation is the queue's decision, not the client's.
func (c *Client) PatchNetworkConfig(ctx context.Context, id string, upd NetworkConfigUpdate) (*NetworkConfig, error) {
	body, err := json.Marshal(upd)
	if err != nil {
		return nil, err
	}
	var nc NetworkConfig
	if err := c.do(ctx, http.MethodPatch, "/cvms/"+url.PathEscape(id)+"/network-config", nil, body, &nc); err != nil {
		return nil, err
	}
	return &nc, nil
}

// read GETs path and retries what is transient (429 after Retry-After, 5xx,
// network errors and timeouts) up to ReadTries times with jittered backoff,
// so that one flaky answer does not fail a plan of thousands of CVMs.
func (c *Client) read(ctx context.Context, path string, q url.Values, out any) error {
	var err error
	for attempt := 1; ; attempt++ {
		err = c.do(ctx, http.MethodGet, path, q, nil, out)
		if err == nil || attempt >= c.cfg.ReadTries || !Transient(err) || ctx.Err() != nil {
			return err
		}
		wait := c.backoff(attempt)
		var ae *Error
		if errors.As(err, &ae) && ae.RetryAfter > 0 {
			wait = RetryAfterWait(min(ae.RetryAfter, c.cfg.MaxBackoff))
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
	}
}

// RetryAfterWait is the wait for a Retry-After of d: d and up to half of
// it again. Retry-After says "not before", and clients throttled together,
// each told the same whole second, would otherwise all come back in the
// same instant and be throttled together again.
func RetryAfterWait(d time.Duration) time.Duration {
	return d + rand.N(d/2+1)
}

func (c *Client) backoff(attempt int) time.Duration {
	// Cap the exponent: 100ms<<37 overflows int64, and a negative d panics rand.N.
	d := min(100*time.Millisecond<<min(attempt-1, 30), c.cfg.MaxBackoff)
	return d/2 + rand.N(d/2+1) // "equal jitter"
}

// Transient reports whether err is worth retrying: 429, 5xx, or a network
// error or timeout (no HTTP answer).
func Transient(err error) bool {
	var ae *Error
	if errors.As(err, &ae) {
		return ae.StatusCode == http.StatusTooManyRequests || ae.StatusCode >= 500
	}
	if errors.Is(err, context.Canceled) {
		return false
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || isConnErr(err)
}

func isConnErr(err error) bool {
	var ue *url.Error
	return errors.As(err, &ue)
}

// Pacer paces the requests made under a context (WithPacer): Wait before
// each, Done with how it ended (nil: a 2xx). Package ratelimit has the
// planner's.
type Pacer interface {
	Wait(ctx context.Context) error
	Done(err error)
}

type pacerKey struct{}

// WithPacer returns ctx whose requests p paces, list pages and retries
// included.
func WithPacer(ctx context.Context, p Pacer) context.Context {
	return context.WithValue(ctx, pacerKey{}, p)
}

func (c *Client) do(ctx context.Context, method, path string, q url.Values, body []byte, out any) error {
	p, _ := ctx.Value(pacerKey{}).(Pacer)
	if p == nil {
		return c.send(ctx, method, path, q, body, out)
	}
	if err := p.Wait(ctx); err != nil {
		return err
	}
	err := c.send(ctx, method, path, q, body, out)
	p.Done(err)
	return err
}

func (c *Client) send(ctx context.Context, method, path string, q url.Values, body []byte, out any) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	var err error
	u := *c.base
	// path arrives escaped (ids went through url.PathEscape), so an id
	// holding "/" stays one segment (%2F) on the wire.
	u.RawPath = c.base.EscapedPath() + path
	if u.Path, err = url.PathUnescape(u.RawPath); err != nil {
		return err
	}
	if q != nil {
		u.RawQuery = q.Encode()
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return err
	}
	req.Header.Set("X-API-Key", c.cfg.APIKey)
	req.Header.Set("X-Phala-Version", c.cfg.APIVersion)
	req.Header.Set("User-Agent", "phala-rollout/"+ToolVersion)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		// url.Error carries the full URL; keep only method and path.
		var ue *url.Error
		if errors.As(err, &ue) {
			return &url.Error{Op: method, URL: path, Err: ue.Err}
		}
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return &url.Error{Op: method, URL: path, Err: err}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		// A proxy or the API may echo the key back: redact it before the
		// body is cut to length, and from the headers' values after.
		data = bytes.ReplaceAll(data, []byte(c.cfg.APIKey), []byte(redacted))
		e := newError(method, path, resp, data, time.Now())
		e.redact(c.cfg.APIKey)
		return e
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: decoding response: %w", method, path, err)
	}
	return nil
}
