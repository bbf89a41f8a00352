package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/alicebob/miniredis/v2/server"
	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/phalafleet/rollout/internal/testutil"
	"github.com/phalafleet/rollout/internal/textsafe/textsafetest"
)

// runEnv runs one rollout command in-process with b's environment, changed
// by env.
func runEnv(b *testutil.Bundle, env map[string]string, args ...string) (string, error) {
	var out, errb bytes.Buffer
	all := map[string]string{"PHALA_CLOUD_API_KEY": b.Key, "PHALA_CLOUD_API_PREFIX": b.SimURL, "REDIS_URL": b.RedisURL}
	for k, v := range env {
		all[k] = v
	}
	e := &Env{Stdout: &out, Stderr: &errb, Stdin: strings.NewReader(""), Getenv: func(k string) string { return all[k] }}
	err := Run(context.Background(), e, args)
	return out.String() + errb.String(), err
}

// hostileAPI serves the simulator behind a proxy that gives the CVMs of
// names those names, and answers the network-config read of htmlID with a
// proxy's multi-line HTML page. It returns the API prefix.
func hostileAPI(t *testing.T, simPrefix string, names map[string]string, htmlID string) string {
	t.Helper()
	target, err := url.Parse(simPrefix)
	if err != nil {
		t.Fatal(err)
	}
	proxy := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(&url.URL{Scheme: target.Scheme, Host: target.Host}) },
		ModifyResponse: func(resp *http.Response) error {
			if !strings.HasSuffix(resp.Request.URL.Path, "/cvms/paginated") {
				return nil
			}
			var page map[string]any
			if err := json.NewDecoder(resp.Body).Decode(&page); err != nil {
				return err
			}
			for _, it := range page["items"].([]any) {
				c := it.(map[string]any)
				if n, ok := names[c["id"].(string)]; ok {
					c["name"] = n
				}
			}
			body, err := json.Marshal(page)
			if err != nil {
				return err
			}
			resp.Body = io.NopCloser(bytes.NewReader(body))
			resp.ContentLength = int64(len(body))
			resp.Header.Set("Content-Length", strconv.Itoa(len(body)))
			return nil
		},
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/cvms/"+htmlID+"/network-config") {
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, "<html>\r\n<head><title>400 Bad Request</title></head>\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n</body>\r\n</html>\r\n")
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL + target.Path
}

// TestHostileOutput: CVM names and reasons from the API reach the plan and
// report tables escaped and cut; arguments echoed in an error do too.
func TestHostileOutput(t *testing.T) {
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 6, Seed: 3, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9})
	ids := b.Sim.IDs()
	names := map[string]string{
		ids[0]: "prod-\x1b[31mred\x1b[0m",
		ids[1]: "ok\rFAKE\x00",
		ids[2]: strings.Repeat("n", 1<<20),
		ids[3]: "tab\tcol\nnext\u009b2J",
	}
	env := map[string]string{"PHALA_CLOUD_API_PREFIX": hostileAPI(t, b.SimURL, names, ids[4])}
	file := testutil.WriteFile(t, fmt.Sprintf("name: hostile\nselector: {all: true}\ntarget: {kms_urls: [%q]}\n", newKMS))

	checkLines := func(what, out string, want ...string) {
		t.Helper()
		for _, l := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
			textsafetest.Check(t, l)
		}
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Errorf("%s: want %q in\n%.2000s", what, w, out)
			}
		}
	}
	out, err := runEnv(b, env, "plan", "-f", file)
	if err != nil {
		t.Fatalf("plan: %v", err)
	}
	checkLines("plan", out, `prod-\x1b[31mred\x1b[0m`, `ok\rFAKE\x00`, `tab\tcol\nnext\u009b2J`, "nnn…",
		"current config unreadable: GET /cvms/"+ids[4]+"/network-config: HTTP 400: 400 Bad Request (an HTML page)")

	out, err = runEnv(b, env, "apply", "-f", file, "--yes")
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	id := strings.Fields(out[strings.Index(out, "Recorded rollout ")+len("Recorded rollout "):])[0]
	out, err = runEnv(b, env, "report", id)
	if err != nil {
		t.Fatalf("report: %v", err)
	}
	checkLines("report", out, `prod-\x1b[31mred\x1b[0m`, `ok\rFAKE\x00`, `tab\tcol\nnext\u009b2J`, "nnn…")

	// What a user typed comes back escaped in the error line.
	_, err = runEnv(b, env, "status", "nope\x1b[31m\r")
	if err == nil {
		t.Fatal("status of an unknown rollout succeeded")
	}
	textsafetest.Check(t, err.Error(), `rollout not found: nope\x1b[31m\r`)
}

// TestRedisOOMCause: a Redis that refuses writes for want of memory gives
// one line that says so.
func TestRedisOOMCause(t *testing.T) {
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 3, Seed: 1})
	m := miniredis.RunT(t)
	const oom = "OOM command not allowed when used memory > 'maxmemory'."
	m.Server().SetPreHook(func(c *server.Peer, cmd string, _ ...string) bool {
		switch strings.ToUpper(cmd) {
		case "EVAL", "EVALSHA", "HSET", "HSETNX", "HMSET", "SET", "SETNX", "SADD", "ZADD", "RPUSH", "LPUSH", "INCR", "INCRBY", "HINCRBY", "XADD", "MULTI":
			c.WriteError(oom)
			return true
		}
		return false
	})
	file := testutil.WriteFile(t, fmt.Sprintf("name: oom\nselector: {all: true}\ntarget: {kms_urls: [%q]}\n", newKMS))
	_, err := runEnv(b, map[string]string{"REDIS_URL": "redis://" + m.Addr() + "/0"}, "apply", "-f", file, "--yes")
	if err == nil {
		t.Fatal("apply succeeded on a Redis out of memory")
	}
	textsafetest.Check(t, err.Error(), "oom-", oom)
}
