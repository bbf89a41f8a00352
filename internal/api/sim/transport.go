package sim

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
)

// Transport serves requests in-process, with no network: for tests that
// run in a testing/synctest bubble, where the clock is fake and sockets
// would block it. Dropped connections surface as transport errors.
func (s *Server) Transport() http.RoundTripper { return transport{s} }

type transport struct{ s *Server }

func (t transport) RoundTrip(r *http.Request) (resp *http.Response, err error) {
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler {
				resp, err = nil, errors.New("connection closed without an answer")
				return
			}
			panic(v)
		}
	}()
	rec := httptest.NewRecorder()
	t.s.ServeHTTP(rec, r)
	if err := r.Context().Err(); err != nil {
		return nil, fmt.Errorf("request abandoned: %w", err)
	}
	res := rec.Result()
	res.Request = r
	return res, nil
}
