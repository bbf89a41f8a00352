package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/phalafleet/rollout/internal/cli"
	"github.com/phalafleet/rollout/internal/redisconn"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/testutil"
	"github.com/redis/go-redis/v9"
)

// secret is a value that must appear nowhere the tool writes.
type secret struct{ name, value string }

// output is one thing the tool wrote, for the scan.
type output struct{ name, text string }

// TestNoSecretInAnythingWritten (SECURITY.md) runs a full rollout, with
// failures, through the real commands and a worker process on a Redis
// with a password (requirepass on redis-server; miniredis where it is
// absent), the API key read from --api-key-file, then reads everything
// the tool wrote: every Redis key and value of every type, the worker's
// log (--debug), the commands' output and errors, report as CSV and JSON,
// events, status, workers, the worker's /metrics, /healthz and /readyz and
// its read-only dashboard (page and JSON). Neither the API key nor the
// Redis password may appear in any of it.
//
// A webhook (notify, secret_env) gets the rollout's events: its secret is
// scanned for, and the bodies and headers it was sent are scanned. So is
// `rollout dashboard --token-file`: its token, and what it serves and logs
// to a caller holding that token.
func TestNoSecretInAnythingWritten(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a worker process")
	}
	alongside(t, true)
	const password = "s3cret-redis-pw-7f3a"
	var addr string
	if _, err := exec.LookPath("redis-server"); err == nil {
		addr = testutil.StartRedis(t, "--requirepass", password).Addr()
	} else {
		m := miniredis.RunT(t)
		m.RequireAuth(password)
		addr = m.Addr()
	}
	url := fmt.Sprintf("redis://:%s@%s/0", password, addr)
	ctx := context.Background()
	rdb, err := redisconn.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	bin := buildWorker(t)
	b := testutil.SetupOn(t, fleet(60, 71), rdb, url)
	const hookSecret, dashToken = "whsec-3c1d9e0b77aa", "dash-token-5b2e8f41c9"
	secrets := []secret{{"API key", b.Key}, {"Redis password", password}, {"webhook secret", hookSecret}, {"dashboard token", dashToken}}
	var hookMu sync.Mutex
	var hooks []output
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		hookMu.Lock()
		hooks = append(hooks, output{"webhook " + r.Header.Get("X-Rollout-Event"), fmt.Sprintf("%v\n%s", r.Header, body)})
		hookMu.Unlock()
	}))
	t.Cleanup(receiver.Close)
	keyFile := filepath.Join(t.TempDir(), "api-key")
	if err := os.WriteFile(keyFile, []byte(b.Key), 0o600); err != nil {
		t.Fatal(err)
	}
	var outputs []output
	// rollout COMMAND..., in-process, with the key only in the file.
	rollout := func(args ...string) string {
		var out, errb bytes.Buffer
		env := map[string]string{"PHALA_CLOUD_API_PREFIX": b.SimURL, "REDIS_URL": url}
		e := &cli.Env{Stdout: &out, Stderr: &errb, Stdin: strings.NewReader(""), Getenv: func(k string) string { return env[k] }}
		err := cli.Run(ctx, e, args)
		text := out.String() + errb.String()
		if err != nil {
			text += "\nerror: " + err.Error()
		}
		outputs = append(outputs, output{"rollout " + strings.Join(args, " "), text})
		return out.String()
	}
	file := testutil.WriteFile(t, "name: secrets\nselector: {all: true}\ntarget: {kms_urls: [\"https://kms-new.example:8000\"]}\nstages: [10, \"100%\"]\nretry: {max_attempts: 2, backoff: {base: 100ms, max: 200ms}}\n"+
		"notify: [{url: \""+receiver.URL+"\", secret_env: ROLLOUT_TEST_HOOK_SECRET}]\n")
	ids := b.Sim.IDs()
	b.Sim.FailPatch(ids[0], 500) // fails after its retries: errors in logs, status, report
	b.Sim.FailPatch(ids[1], 422)
	b.Sim.FailRead(ids[2], 403)
	rollout("plan", "-f", file, "--api-key-file", keyFile)
	out := rollout("apply", "-f", file, "--yes", "-o", "json", "--api-key-file", keyFile)
	id := between(out, `"id": "`, `"`)
	if id == "" {
		t.Fatalf("apply printed no id: %s", out)
	}

	metrics := testutil.FreePort(t)
	var log testutil.Buffer
	w := exec.Command(bin, "--concurrency", "8", "--debug", "--api-key-file", keyFile, "--http-addr", "127.0.0.1:"+strconv.Itoa(metrics))
	w.Env = append(os.Environ(), "PHALA_CLOUD_API_PREFIX="+b.SimURL, "REDIS_URL="+url, "PHALA_CLOUD_API_KEY=", "ROLLOUT_TEST_HOOK_SECRET="+hookSecret)
	w.Stdout, w.Stderr = &log, &log
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Process.Kill(); w.Wait() })
	waitCounts(t, b, id, time.Minute, func(r *store.Rollout) bool { return r.State == store.RolloutCompleted })
	rollout("retry", id, "--failed")
	waitCounts(t, b, id, time.Minute, func(r *store.Rollout) bool { return r.State == store.RolloutCompleted })
	for _, args := range [][]string{{"status", id}, {"status", id, "-o", "json"}, {"report", id, "-o", "csv"}, {"report", id, "-o", "json"},
		{"report", id}, {"events", id}, {"events", id, "-o", "json"}, {"list", "-o", "json"}, {"workers", "-o", "json"}} {
		rollout(args...)
	}
	var body []byte
	// The worker's listener serves the read-only dashboard too: its page
	// and every JSON answer.
	for _, path := range []string{"/", "/api/rollouts", "/api/rollouts/" + id, "/api/rollouts/" + id + "/cvms", "/api/queue", "/api/session",
		"/healthz", "/readyz", "/metrics"} {
		res, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d%s", metrics, path))
		if err != nil {
			t.Fatal(err)
		}
		body, _ = io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			t.Errorf("worker %s: %s", path, res.Status)
		}
		outputs = append(outputs, output{"worker " + path, string(body)})
	}
	outputs = append(outputs, dashboardWithToken(t, url, id, dashToken)...)
	// A wrong password and a dead server: their errors name the URL.
	rollout("status", id, "--redis", strings.Replace(url, password, password+"-wrong", 1))
	rollout("status", id, "--redis", fmt.Sprintf("redis://:%s@127.0.0.1:%d/0", password, testutil.FreePort(t)))
	// The completed event is the last one the rollout sends.
	for end := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		hookMu.Lock()
		n, done := len(hooks), len(hooks) > 0 && strings.HasPrefix(hooks[len(hooks)-1].name, "webhook completed")
		hookMu.Unlock()
		if done {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("the webhook got %d deliveries and no completed event", n)
		}
	}
	w.Process.Signal(os.Interrupt)
	w.Wait()
	hookMu.Lock()
	outputs = append(outputs, hooks...)
	if !strings.Contains(hooks[0].text, "V1=") && !strings.Contains(hooks[0].text, "v1=") {
		t.Errorf("the webhook's deliveries are not signed: %s", hooks[0].text)
	}
	hookMu.Unlock()
	outputs = append(outputs, output{"worker log", log.String()})
	outputs = append(outputs, dumpRedis(t, rdb)...)

	if !strings.Contains(log.String(), "worker started") || !strings.Contains(string(body), "rollout_") {
		t.Fatalf("nothing to scan: log %d bytes, metrics %d bytes", log.Len(), len(body))
	}
	total := 0
	for _, o := range outputs {
		total += len(o.text)
		for _, s := range secrets {
			if i := strings.Index(o.text, s.value); i >= 0 {
				t.Errorf("the %s is in %s: ...%s...", s.name, o.name, o.text[max(0, i-80):i])
			}
		}
	}
	t.Logf("scanned %d outputs, %d bytes, for %d secrets", len(outputs), total, len(secrets))
}

// dashboardWithToken runs `rollout dashboard --token-file` and reads its
// pages and JSON as a caller holding the token (Bearer), tries an action
// (refused: the rollout is over), and returns all it served and logged.
func dashboardWithToken(t *testing.T, url, id, token string) []output {
	t.Helper()
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	port := testutil.FreePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	var log testutil.Buffer
	done := make(chan error, 1)
	go func() {
		e := &cli.Env{Stdout: &log, Stderr: &log, Stdin: strings.NewReader(""), Getenv: func(k string) string {
			return map[string]string{"REDIS_URL": url}[k]
		}}
		done <- cli.Run(ctx, e, []string{"dashboard", "--addr", fmt.Sprintf("127.0.0.1:%d", port), "--token-file", tokenFile, "--tick", "100ms"})
	}()
	t.Cleanup(cancel)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	var out []output
	call := func(method, path string) {
		for end := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			req, _ := http.NewRequest(method, base+path, nil)
			req.Header.Set("Authorization", "Bearer "+token)
			req.Header.Set("X-Operator", "scan")
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				if time.Now().After(end) {
					t.Fatalf("dashboard %s %s: %v", method, path, err)
				}
				continue // not listening yet
			}
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode == http.StatusUnauthorized || res.StatusCode == http.StatusForbidden {
				t.Errorf("dashboard %s %s with the token: %s", method, path, res.Status) // then the scan saw no signed-in page
			}
			out = append(out, output{"dashboard " + method + " " + path, res.Status + "\n" + fmt.Sprint(res.Header) + "\n" + string(body)})
			return
		}
	}
	for _, path := range []string{"/", "/api/session", "/api/rollouts", "/api/rollouts/" + id, "/api/rollouts/" + id + "/cvms", "/api/queue"} {
		call("GET", path)
	}
	call("POST", "/api/rollouts/"+id+"/pause")
	cancel()
	if err := <-done; err != nil {
		t.Errorf("rollout dashboard: %v", err)
	}
	return append(out, output{"dashboard log", log.String()})
}

// dumpRedis is every key of the database and its value, whatever its type.
func dumpRedis(t *testing.T, rdb redis.UniversalClient) []output {
	t.Helper()
	ctx := context.Background()
	var out []output
	iter := rdb.Scan(ctx, 0, "*", 1000).Iterator()
	for iter.Next(ctx) {
		k := iter.Val()
		typ, err := rdb.Type(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		var v any
		switch typ {
		case "string":
			v, err = rdb.Get(ctx, k).Result()
		case "hash":
			v, err = rdb.HGetAll(ctx, k).Result()
		case "list":
			v, err = rdb.LRange(ctx, k, 0, -1).Result()
		case "set":
			v, err = rdb.SMembers(ctx, k).Result()
		case "zset":
			v, err = rdb.ZRangeWithScores(ctx, k, 0, -1).Result()
		case "stream":
			v, err = rdb.XRange(ctx, k, "-", "+").Result()
		case "none": // expired meanwhile
		default:
			t.Fatalf("key %s has type %s, which the scan cannot read", k, typ)
		}
		if err != nil && err != redis.Nil {
			t.Fatal(err)
		}
		out = append(out, output{"Redis key " + k, fmt.Sprintf("%s = %v", k, v)})
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	if len(out) < 50 {
		t.Fatalf("only %d Redis keys to scan", len(out))
	}
	return out
}

func between(s, from, to string) string {
	_, rest, ok := strings.Cut(s, from)
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(rest, to)
	return v
}
