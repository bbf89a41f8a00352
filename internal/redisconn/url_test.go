package redisconn

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/phalafleet/rollout/internal/testutil"
	"github.com/redis/go-redis/v9"
)

// TestURLForms: which client each REDIS_URL form opens, and one clear
// line for each mistake (no connection is made).
func TestURLForms(t *testing.T) {
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk.pem")
	if err := os.WriteFile(junk, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		url, kind, err string
	}{
		{"redis://127.0.0.1:6379/3", "*redis.Client", ""},
		{"redis://127.0.0.1:26379/0?master_name=main", "*redis.Client", ""}, // go-redis's failover client is a *Client
		{"redis://127.0.0.1:7000?addr=127.0.0.1:7001&addr=127.0.0.1:7002", "*redis.ClusterClient", ""},
		{"rediss://:pw@cfg.example:6379/0?cluster=true", "*redis.ClusterClient", ""},
		{"redis://127.0.0.1:7000/2?addr=127.0.0.1:7001", "", "a Redis Cluster has db 0 only, not 2"},
		{"redis://127.0.0.1:7000?cluster=yes", "", "cluster=yes: want cluster=true"},
		{"redis://127.0.0.1:6379/0?tls_ca=" + junk, "", "need rediss://"},
		{"rediss://127.0.0.1:6379/0?tls_ca=" + junk, "", "no PEM certificate in it"},
		{"rediss://127.0.0.1:6379/0?tls_ca=" + filepath.Join(dir, "missing.pem"), "", "no such file"},
		{"rediss://127.0.0.1:6379/0?tls_cert=" + junk, "", "tls_cert and tls_key go together"},
		{"rediss://127.0.0.1:6379/0?tls_cert=" + junk + "&tls_key=" + junk, "", "tls_cert/tls_key:"},
	} {
		rdb, _, err := newClient(c.url, 0)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) || strings.Contains(err.Error(), "\n") {
				t.Errorf("%s: %v, want an error with %q", c.url, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.url, err)
			continue
		}
		if got := typeName(rdb); got != c.kind {
			t.Errorf("%s: %s, want %s", c.url, got, c.kind)
		}
		rdb.Close()
	}
	// Open words them as one line, with the password hidden.
	_, err := Open(context.Background(), "redis://:hunter2@127.0.0.1:7000/1?addr=127.0.0.1:7001")
	if err == nil || strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), "db 0 only") {
		t.Errorf("Open: %v", err)
	}
}

func typeName(c redis.UniversalClient) string {
	switch c.(type) {
	case *redis.ClusterClient:
		return "*redis.ClusterClient"
	case *redis.Client:
		return "*redis.Client"
	}
	return "?"
}

// TestNoResend: a script or MULTI whose answer was lost comes back as an
// error go-redis does not retry; a Redis error reply, a dial error and
// any other command pass through as they were.
func TestNoResend(t *testing.T) {
	ctx := context.Background()
	hook := noResend{}
	for _, c := range []struct {
		cmd    redis.Cmder
		err    error
		resent bool
	}{
		{redis.NewCmd(ctx, "evalsha", "abc", 0), io.EOF, false},
		{redis.NewCmd(ctx, "eval", "return 1", 0), io.ErrUnexpectedEOF, false},
		{redis.NewCmd(ctx, "get", "k"), io.EOF, true},
		{redis.NewCmd(ctx, "evalsha", "abc", 0), redis.ErrClosed, true},
	} {
		got := hook.ProcessHook(func(context.Context, redis.Cmder) error { return c.err })(ctx, c.cmd)
		kept := errors.Is(got, c.err)
		if kept != c.resent {
			t.Errorf("%s after %v: returned %v (kept for a retry: %v, want %v)", c.cmd.Name(), c.err, got, kept, c.resent)
		}
		if !c.resent && !strings.Contains(got.Error(), "not resent") {
			t.Errorf("%s: %v does not say it was not resent", c.cmd.Name(), got)
		}
	}
	// A MULTI in a pipeline: every command's error is the lost answer.
	cmds := []redis.Cmder{redis.NewStatusCmd(ctx, "multi"), redis.NewCmd(ctx, "rpush", "l", "x"), redis.NewSliceCmd(ctx, "exec")}
	got := hook.ProcessPipelineHook(func(_ context.Context, cs []redis.Cmder) error {
		for _, c := range cs {
			c.SetErr(io.EOF)
		}
		return io.EOF
	})(ctx, cmds)
	if errors.Is(got, io.EOF) || errors.Is(cmds[2].Err(), io.EOF) {
		t.Errorf("a MULTI whose answer was lost would be resent: %v, %v", got, cmds[2].Err())
	}
}

// TestTLSFilesInEveryForm: tls_ca, tls_cert and tls_key reach the TLS
// config of the one-server, Sentinel and Cluster clients alike.
func TestTLSFilesInEveryForm(t *testing.T) {
	f := testutil.GenTLS(t)
	q := "tls_ca=" + f.CA + "&tls_cert=" + f.ClientCert + "&tls_key=" + f.ClientKey
	for _, u := range []string{
		"rediss://127.0.0.1:6380/0?" + q,
		"rediss://127.0.0.1:26379/0?master_name=main&" + q,
		"rediss://127.0.0.1:7000?addr=127.0.0.1:7001&" + q,
	} {
		rdb, _, err := newClient(u, 0)
		if err != nil {
			t.Fatalf("%s: %v", u, err)
		}
		var tc *tls.Config
		switch c := rdb.(type) {
		case *redis.ClusterClient:
			tc = c.Options().TLSConfig
		case *redis.Client:
			tc = c.Options().TLSConfig
		}
		if tc == nil || tc.RootCAs == nil || len(tc.Certificates) != 1 || tc.MinVersion < tls.VersionTLS12 {
			t.Errorf("%s: TLS config %+v lacks the CA or the client certificate", u, tc)
		}
		rdb.Close()
	}
}
