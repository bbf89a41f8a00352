package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/phalafleet/rollout/internal/testutil"
)

// TestAPIKeyFile: plan, apply and worker read the key from --api-key-file
// when it is not readable by others, and refuse it with one line (that
// does not quote the key) when it is; PHALA_CLOUD_API_KEY is not needed.
func TestAPIKeyFile(t *testing.T) {
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 5, Seed: 3})
	key := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(key, []byte(b.Key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	file := testutil.WriteFile(t, "name: keyfile\nselector: {all: true}\ntarget: {kms_urls: [\"https://kms-new.example:8000\"]}\n")
	runNoKey := func(args ...string) (string, error) {
		var out, errb bytes.Buffer
		env := map[string]string{"PHALA_CLOUD_API_PREFIX": b.SimURL, "REDIS_URL": b.RedisURL}
		e := &Env{Stdout: &out, Stderr: &errb, Stdin: strings.NewReader(""), Getenv: func(k string) string { return env[k] }}
		err := Run(context.Background(), e, args)
		return out.String() + errb.String(), err
	}
	out, err := runNoKey("plan", "-f", file, "--api-key-file", key)
	if err != nil || !strings.Contains(out, "keyfile") {
		t.Fatalf("plan with a 0600 key file: %v\n%s", err, out)
	}
	if _, err := runNoKey("plan", "-f", file); err == nil || !strings.Contains(err.Error(), "PHALA_CLOUD_API_KEY is not set") {
		t.Fatalf("plan with no key: %v", err)
	}
	if err := os.Chmod(key, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range [][]string{{"plan", "-f", file}, {"apply", "-f", file, "--yes"}, {"worker"}} {
		_, err := runNoKey(append(cmd, "--api-key-file", key)...)
		if err == nil || !strings.Contains(err.Error(), "mode 0644 lets other users read the API key; chmod 600 "+key) ||
			strings.Contains(err.Error(), "\n") || strings.Contains(err.Error(), b.Key) {
			t.Errorf("%s with a 0644 key file: %v", cmd[0], err)
		}
	}
	if err := os.Chmod(key, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := runNoKey("worker", "--api-key-file", key); err == nil || !strings.Contains(err.Error(), "is empty") {
		t.Errorf("worker with an empty key file: %v", err)
	}
}
