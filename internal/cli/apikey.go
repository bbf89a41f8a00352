package cli

import (
	"flag"
	"fmt"
	"os"
	"strings"
)

// keyFileFlag is plan's, apply's and worker's --api-key-file.
func keyFileFlag(fs *flag.FlagSet) *string {
	return fs.String("api-key-file", "", "read the Phala Cloud API key from this file (mode 0600 or stricter, e.g. a mounted Kubernetes secret) instead of $PHALA_CLOUD_API_KEY")
}

// withKeyFile returns e with PHALA_CLOUD_API_KEY read from file, when file
// is given, so that every client built from e uses it. Decision: the key
// comes only from the environment or this file, never a flag (a flag shows
// in ps and in shell history); the file wins over the environment. The
// file must not be readable by group or others (the error says what to
// chmod), and its key is its content less surrounding white space. No
// error quotes the file's content.
func (e *Env) withKeyFile(file string) (*Env, error) {
	if file == "" {
		return e, nil
	}
	fi, err := os.Stat(file)
	if err != nil {
		return nil, fmt.Errorf("--api-key-file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("--api-key-file %s: not a regular file", file)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("--api-key-file %s: mode %04o lets other users read the API key; chmod 600 %s (Kubernetes: defaultMode: 0400)", file, perm, file)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("--api-key-file: %w", err)
	}
	key := strings.TrimSpace(string(b))
	if key == "" {
		return nil, fmt.Errorf("--api-key-file %s is empty", file)
	}
	if strings.ContainsAny(key, " \t\r\n") {
		return nil, fmt.Errorf("--api-key-file %s: want the key alone on one line", file)
	}
	env := e.Getenv
	c := *e
	c.Getenv = func(k string) string {
		if k == "PHALA_CLOUD_API_KEY" {
			return key
		}
		return env(k)
	}
	return &c, nil
}
