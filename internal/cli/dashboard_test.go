package cli

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/phalafleet/rollout/internal/testutil"
)

func TestDashboardRefusesAReadableTokenFile(t *testing.T) {
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 1})
	p := filepath.Join(t.TempDir(), "token")
	secret := "s3cr3t-token-0123456789"
	if err := os.WriteFile(p, []byte(secret), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(p, 0o644)
	_, _, err := run(t, b, "dashboard", "--addr", "127.0.0.1:0", "--token-file", p)
	if err == nil || !strings.Contains(err.Error(), "chmod 600") || strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "\n") {
		t.Fatalf("token file with mode 0644: %v", err)
	}
}

func TestDashboardCommandServes(t *testing.T) {
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 1})
	p := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(p, []byte("0123456789abcdef-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var errb testutil.Buffer // logs_test.go
	e := &Env{Stdout: io.Discard, Stderr: &errb, Stdin: strings.NewReader(""), Getenv: func(k string) string {
		return map[string]string{"REDIS_URL": b.RedisURL}[k]
	}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, e, []string{"dashboard", "--addr", "127.0.0.1:0", "--token-file", p, "--tick", "200ms"})
	}()
	addr := regexp.MustCompile(`http://(127\.0\.0\.1:\d+)/`)
	var url string
	for deadline := time.Now().Add(10 * time.Second); url == ""; {
		if m := addr.FindStringSubmatch(errb.String()); m != nil {
			url = "http://" + m[1]
		} else if time.Now().After(deadline) {
			t.Fatalf("no address printed: %q", errb.String())
		} else {
			time.Sleep(10 * time.Millisecond)
		}
	}
	resp, err := http.Get(url + "/api/session")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"writable":true`) {
		t.Errorf("/api/session: %d %s", resp.StatusCode, body)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("dashboard after ctx end: %v", err)
	}
}
