package main

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestMain lets the test binary be the rollout command: with
// ROLLOUT_TEST_MAIN=1 it runs main() on its arguments (no build needed).
func TestMain(m *testing.M) {
	if os.Getenv("ROLLOUT_TEST_MAIN") == "1" {
		os.Args = append([]string{"rollout"}, os.Args[1:]...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestExitStatus: the process's exit status and its one stderr line, as
// a script sees them.
func TestExitStatus(t *testing.T) {
	for _, c := range []struct {
		args   []string
		code   int
		stderr string
	}{
		{nil, 2, "rollout: no command given"},
		{[]string{"stauts"}, 2, `did you mean "status"?`},
		{[]string{"list", "--bogus"}, 2, "flag provided but not defined"},
		{[]string{"list", "--redis", "redis://127.0.0.1:1/0"}, 1, "is not answering"},
		{[]string{"--version"}, 0, ""},
	} {
		cmd := exec.Command(os.Args[0], c.args...)
		cmd.Env = append(os.Environ(), "ROLLOUT_TEST_MAIN=1", "REDIS_URL=")
		var stderr strings.Builder
		cmd.Stderr = &stderr
		err := cmd.Run()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != c.code || !strings.Contains(stderr.String(), c.stderr) {
			t.Errorf("rollout %v: exit %d, stderr %q; want %d and %q", c.args, code, stderr.String(), c.code, c.stderr)
		}
	}
}
