package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/phalafleet/rollout/internal/textsafe"
)

// Error is a non-2xx answer from the API.
type Error struct {
	Method     string
	Path       string // path only, never a query or a key
	StatusCode int
	ErrorCode  string // "ERR-03-001" when the body carries one
	Message    string
	RequestID  string
	RetryAfter time.Duration // from the Retry-After header; 0 when absent
}

// Error is one line of bounded length, with what the server sent escaped
// (textsafe): it reaches terminals and the CVM records' reasons.
func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s: HTTP %d", e.Method, e.Path, e.StatusCode)
	if e.ErrorCode != "" {
		fmt.Fprintf(&b, " %s", textsafe.Cut(e.ErrorCode, maxID))
	}
	if e.Message != "" {
		fmt.Fprintf(&b, ": %s", textsafe.Cut(e.Message, textsafe.MaxQuoted))
	}
	if e.RequestID != "" {
		fmt.Fprintf(&b, " (request_id %s)", textsafe.Cut(e.RequestID, maxID))
	}
	return textsafe.Line(b.String())
}

// Bounds, in runes, for what an error quotes of an answer: an error code or
// a request id is short; a body that is not the API's JSON (a proxy's page)
// is quoted only as far as it tells what happened.
const (
	maxID   = 100
	maxBody = 200
)

const redacted = "[REDACTED]"

// redact removes secret from the text the server sent.
func (e *Error) redact(secret string) {
	if secret == "" {
		return
	}
	for _, f := range []*string{&e.ErrorCode, &e.Message, &e.RequestID} {
		*f = strings.ReplaceAll(*f, secret, redacted)
	}
}

// StatusOf returns the HTTP status of an *Error in err's chain, or 0.
func StatusOf(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.StatusCode
	}
	return 0
}

// errorBody covers the three error shapes the API uses: structured
// ({error_code, message, request_id}), FastAPI's {"detail": "text"}, and
// FastAPI's validation {"detail": [{loc, msg, type}]}. The structured shape
// may also come nested under "detail".
type errorBody struct {
	ErrorCode string          `json:"error_code"`
	Message   string          `json:"message"`
	RequestID string          `json:"request_id"`
	Detail    json.RawMessage `json:"detail"`
}

type validationItem struct {
	Loc []any  `json:"loc"`
	Msg string `json:"msg"`
}

func newError(method, path string, resp *http.Response, body []byte, now time.Time) *Error {
	e := &Error{Method: method, Path: path, StatusCode: resp.StatusCode, RequestID: resp.Header.Get("X-Request-ID")}
	e.RetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), now)
	var eb errorBody
	if json.Unmarshal(body, &eb) == nil {
		e.ErrorCode, e.Message = eb.ErrorCode, eb.Message
		if eb.RequestID != "" {
			e.RequestID = eb.RequestID
		}
		if e.Message == "" && len(eb.Detail) > 0 {
			e.Message = detailMessage(eb.Detail, e)
		}
	}
	if e.Message == "" {
		e.Message = bodyText(resp.Header.Get("Content-Type"), body)
		if e.Message == "" {
			e.Message = http.StatusText(resp.StatusCode)
		}
	}
	return e
}

var (
	htmlTitle = regexp.MustCompile(`(?is)<title[^>]*>(.*?)</title>`)
	htmlTag   = regexp.MustCompile(`(?s)<[^>]*>`)
)

// bodyText is what an error quotes of a body that is not the API's JSON, on
// one line: an HTML page (a proxy's 502) gives its title, or else its text,
// and says it was a page; runs of white space, newlines too, become one
// space; it is cut to maxBody runes.
func bodyText(contentType string, body []byte) string {
	s := string(body)
	isHTML := strings.Contains(strings.ToLower(contentType), "html") || strings.HasPrefix(strings.TrimSpace(s), "<")
	if isHTML {
		if m := htmlTitle.FindStringSubmatch(s); m != nil && strings.TrimSpace(m[1]) != "" {
			s = m[1]
		}
		s = html.UnescapeString(htmlTag.ReplaceAllString(s, " "))
	}
	s = textsafe.Cut(strings.Join(strings.Fields(s), " "), maxBody)
	if isHTML && s != "" {
		s += " (an HTML page)"
	}
	return s
}

func detailMessage(raw json.RawMessage, e *Error) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var items []validationItem
	if json.Unmarshal(raw, &items) == nil {
		parts := make([]string, 0, len(items))
		for _, it := range items {
			loc := make([]string, 0, len(it.Loc))
			for _, l := range it.Loc {
				loc = append(loc, fmt.Sprint(l))
			}
			parts = append(parts, strings.Join(loc, ".")+": "+it.Msg)
		}
		return strings.Join(parts, "; ")
	}
	var nested errorBody
	if json.Unmarshal(raw, &nested) == nil {
		if e.ErrorCode == "" {
			e.ErrorCode = nested.ErrorCode
		}
		if e.RequestID == "" {
			e.RequestID = nested.RequestID
		}
		return nested.Message
	}
	return ""
}

// parseRetryAfter reads delta-seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseFloat(v, 64); err == nil {
		if n < 0 {
			return 0
		}
		return time.Duration(n * float64(time.Second))
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return d
		}
	}
	return 0
}
