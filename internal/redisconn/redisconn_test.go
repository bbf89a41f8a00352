package redisconn

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/phalafleet/rollout/internal/testutil"
	"github.com/redis/go-redis/v9"
)

// TestSentinelURL starts a redis-server and a Sentinel watching it, opens
// the Sentinel URL, and checks that writes land on the master.
func TestSentinelURL(t *testing.T) {
	server, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server is not installed")
	}
	dir := t.TempDir()
	master, sentinel := testutil.FreePort(t), testutil.FreePort(t)
	start := func(args ...string) {
		cmd := exec.Command(server, args...)
		cmd.Dir = dir
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	}
	start("--port", fmt.Sprint(master), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--requirepass", "m4ster-pw")
	conf := filepath.Join(dir, "sentinel.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("port %d\nbind 127.0.0.1\nsentinel monitor main 127.0.0.1 %d 1\nsentinel auth-pass main m4ster-pw\n", sentinel, master)), 0o600); err != nil {
		t.Fatal(err)
	}
	start(conf, "--sentinel")

	ctx := context.Background()
	url := fmt.Sprintf("redis://127.0.0.1:%d/2?master_name=main&password=m4ster-pw", sentinel)
	var rdb redis.UniversalClient
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if rdb, err = Open(ctx, url); err == nil {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("open %s: %v", Redact(url), err)
		}
	}
	defer rdb.Close()
	// The Sentinel port itself would refuse SET: the write went to the master.
	if err := rdb.Set(ctx, "k", "through the sentinel", 0).Err(); err != nil {
		t.Fatal(err)
	}
	direct := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", master), Password: "m4ster-pw", DB: 2})
	defer direct.Close()
	if v, err := direct.Get(ctx, "k").Result(); err != nil || v != "through the sentinel" {
		t.Fatalf("the master's db 2 holds %q, %v", v, err)
	}
	if s := Redact(url); strings.Contains(s, "m4ster-pw") {
		t.Fatalf("Redact left the master password in %s", s)
	}
	// A wrong master name fails with one line, no password in it.
	_, err = Open(ctx, strings.Replace(url, "main", "nope", 1))
	if err == nil || strings.Contains(err.Error(), "m4ster-pw") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("wrong master name: %v", err)
	}
}
