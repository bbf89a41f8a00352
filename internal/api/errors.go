package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
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

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s: HTTP %d", e.Method, e.Path, e.StatusCode)
	if e.ErrorCode != "" {
		fmt.Fprintf(&b, " %s", e.ErrorCode)
	}
	if e.Message != "" {
		fmt.Fprintf(&b, ": %s", e.Message)
	}
	if e.RequestID != "" {
		fmt.Fprintf(&b, " (request_id %s)", e.RequestID)
	}
	return b.String()
}

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
		e.Message = strings.TrimSpace(string(body))
		if len(e.Message) > 200 {
			e.Message = e.Message[:200] + "…"
		}
		if e.Message == "" {
			e.Message = http.StatusText(resp.StatusCode)
		}
	}
	return e
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
