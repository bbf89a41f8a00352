package api

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/phalafleet/rollout/internal/textsafe/textsafetest"
)

// TestErrorHostileBodies: whatever an error answer holds (a proxy's HTML
// page, megabytes, terminal escapes), the error is one bounded line with
// its status and what the answer said.
func TestErrorHostileBodies(t *testing.T) {
	t.Parallel()
	const nginx = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
	huge := strings.Repeat("m", 5<<20)
	tests := []struct {
		name, contentType, body string
		want                    []string // parts of Error(), in order
	}{
		{"nginx 502 page", "text/html", nginx, []string{"PATCH /cvms/cvm_abc/network-config: HTTP 502: 502 Bad Gateway (an HTML page)"}},
		{"HTML without a title", "text/html; charset=utf-8", "<html><body>\n<p>Service\n  is &amp; was\tdown</p>\n</body></html>", []string{"HTTP 502: Service is & was down (an HTML page)"}},
		{"multi-line text", "text/plain", "upstream connect error\nreset reason: overflow\n", []string{"HTTP 502: upstream connect error reset reason: overflow"}},
		{"escapes in JSON message", "application/json", `{"message":"bad \u001b[31mred\r\u0000 CVM"}`, []string{`HTTP 502: bad \x1b[31mred\r\x00 CVM`}},
		{"escapes in text body", "text/plain", "bad \x1b]0;title\x07 \x00 end", []string{`HTTP 502: bad \x1b]0;title\x07 \x00 end`}},
		{"5 MB JSON message", "application/json", `{"message":"` + huge + `","request_id":"rid-9"}`, []string{"HTTP 502: mmmm", "…", "(request_id rid-9)"}},
		{"5 MB text body", "text/plain", huge, []string{"HTTP 502: mmmm", "…"}},
		{"5 MB error code", "application/json", `{"error_code":"` + huge + `","message":"m"}`, []string{"HTTP 502 mmm", "…: m"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := newServer(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", tt.contentType)
				w.WriteHeader(http.StatusBadGateway)
				_, _ = w.Write([]byte(tt.body))
			})
			_, err := newClient(t, srv.URL, nil).PatchNetworkConfig(context.Background(), "cvm_abc", NetworkConfigUpdate{})
			if err == nil {
				t.Fatal("no error")
			}
			textsafetest.Check(t, err.Error(), tt.want...)
		})
	}
}
