package worker_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/phalafleet/rollout/internal/cli"
	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/tasks"
	"github.com/phalafleet/rollout/internal/testutil"
	"github.com/redis/go-redis/v9"
)

// redisServer starts a throwaway redis-server on a free port (skipping the
// test where there is none) and returns its URL and a client.
func redisServer(t *testing.T, args ...string) (string, *redis.Client) {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server is not installed (.ci/run installs it)")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command(bin, append([]string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", t.TempDir()}, args...)...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	rdb := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", port)})
	t.Cleanup(func() { rdb.Close() })
	for range 100 {
		if rdb.Ping(context.Background()).Err() == nil {
			return fmt.Sprintf("redis://127.0.0.1:%d/0", port), rdb
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("redis-server did not start")
	return "", nil
}

// TestRedisFull: a real Redis with a tiny maxmemory refuses apply's writes
// part-way: the error says Redis is full, in one line, and once maxmemory
// is raised the same apply finishes the rollout; workers whose writes are
// refused mid-rollout lose nothing either: once there is room again every
// CVM ends succeeded and the counters match the records.
func TestRedisFull(t *testing.T) {
	url, admin := redisServer(t, "--maxmemory-policy", "noeviction")
	ctx := context.Background()
	t.Setenv("REDIS_URL", url)
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 3000, Seed: 9, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9})
	used := func() int64 {
		v, _, err := b.Store.Memory(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	limit := func(n int64) {
		if err := admin.ConfigSet(ctx, "maxmemory", strconv.FormatInt(n, 10)).Err(); err != nil {
			t.Fatal(err)
		}
	}
	limit(used() + 1<<20) // about a third of what the rollout needs
	file := filepath.Join(t.TempDir(), "r.yaml")
	os.WriteFile(file, []byte("name: full\nselector: {all: true}\ntarget: {kms_urls: [\"https://kms-new.example:8000\"]}\n"), 0o600)
	apply := func() (string, error) {
		var out bytes.Buffer
		env := map[string]string{"PHALA_CLOUD_API_KEY": b.Key, "PHALA_CLOUD_API_PREFIX": b.SimURL, "REDIS_URL": url}
		err := cli.Run(ctx, &cli.Env{Stdout: &out, Stderr: &out, Stdin: strings.NewReader(""), Getenv: func(k string) string { return env[k] }},
			[]string{"apply", "-f", file, "--yes", "-o", "json"})
		return out.String(), err
	}
	_, err := apply()
	if err == nil {
		t.Fatal("apply fit in a Redis a third of its size")
	}
	if msg := err.Error(); !strings.HasPrefix(msg, "Redis is full (maxmemory): ") || strings.Contains(msg, "\n") {
		t.Fatalf("error %q", msg)
	}
	limit(0)
	out, err := apply()
	if err != nil {
		t.Fatalf("apply again after raising maxmemory: %v\n%s", err, out)
	}
	id := regexp.MustCompile(`"id": "(full-[0-9a-f]+)"`).FindStringSubmatch(out)
	if id == nil {
		t.Fatalf("no id in %s", out)
	}
	if q, err := asynq.NewInspectorFromRedisClient(b.RDB).GetQueueInfo(tasks.Queue); err != nil || q.Pending != 3000 {
		t.Fatalf("queued %+v, %v; want all 3000 tasks", q, err)
	}

	// Full again while the workers record CVMs, then room again.
	stop := b.Workers(t, 2, 8)
	defer stop()
	for end := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		r, _ := b.Store.Get(ctx, id[1])
		if r != nil && r.Counts[store.Succeeded] >= 300 {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("rollout did not start: %+v", r)
		}
	}
	limit(used())
	time.Sleep(2 * time.Second)
	limit(0)
	r := b.WaitState(t, id[1], time.Minute, store.RolloutCompleted)
	recs := b.Records(t, id[1])
	n := 0
	for _, rec := range recs {
		if rec.State == store.Succeeded {
			n++
		}
	}
	if r.Counts[store.Succeeded] != 3000 || n != 3000 {
		t.Fatalf("counts %v, %d records succeeded; want 3000", r.Counts, n)
	}
}

// TestDeployMaxmemory: the shipped Redis's maxmemory stays between half
// and 80% of its container's memory limit (headroom for the AOF rewrite
// and buffers; the worker warns above 80% of maxmemory).
func TestDeployMaxmemory(t *testing.T) {
	for _, f := range []struct{ path, limit string }{
		{"../../deploy/compose.yaml", `mem_limit:\s*(\d+)([gm])`},
		{"../../deploy/k8s/redis.yaml", `limits:\s*\n\s*memory:\s*(\d+)([GM])i`},
	} {
		b, err := os.ReadFile(f.path)
		if err != nil {
			t.Fatal(err)
		}
		mm := regexp.MustCompile(`"--maxmemory",\s*"(\d+)mb"`).FindSubmatch(b)
		lim := regexp.MustCompile(f.limit).FindSubmatch(b)
		if mm == nil || lim == nil || !bytes.Contains(b, []byte(`"noeviction"`)) {
			t.Fatalf("%s: no maxmemory, memory limit or noeviction", f.path)
		}
		maxMB, _ := strconv.Atoi(string(mm[1]))
		limMB, _ := strconv.Atoi(string(lim[1]))
		if strings.EqualFold(string(lim[2]), "g") {
			limMB *= 1024
		}
		if r := float64(maxMB) / float64(limMB); r < 0.5 || r > 0.8 {
			t.Errorf("%s: maxmemory %d MB is %.0f%% of the %d MB limit; keep it within 50-80%%", f.path, maxMB, 100*r, limMB)
		}
	}
}
