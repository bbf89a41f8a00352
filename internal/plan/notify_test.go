package plan

import (
	"strings"
	"testing"
)

func TestNotifyDecode(t *testing.T) {
	const head = "name: x\nselector:\n  all: true\ntarget:\n  kms_urls: [https://k]\n"
	f, err := Parse("r.yaml", []byte(head+"notify:\n  - url: https://hooks.example/x\n    events: [paused, completed]\n    secret_env: HOOK_SECRET\n    format: slack\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Notify) != 1 || f.Notify[0].URL.V != "https://hooks.example/x" || len(f.Notify[0].Events) != 2 ||
		f.Notify[0].SecretEnv.V != "HOOK_SECRET" || f.Notify[0].Format.V != "slack" {
		t.Fatalf("decoded %+v", f.Notify)
	}
	for _, c := range []struct{ body, want string }{
		{"notify:\n  - url: ftp://x\n", "r.yaml:7: notify[0].url: \"ftp://x\" is not an absolute http(s) URL"},
		{"notify:\n  - events: [paused]\n", "r.yaml:7: notify[0]: url is required"},
		{"notify:\n  - url: https://h\n    events:\n      - paused\n      - exploded\n", "r.yaml:10: notify[0].events: \"exploded\" is not an event"},
		{"notify:\n  - url: https://h\n    format: xml\n", "r.yaml:8: notify[0].format: json or slack, not \"xml\""},
		{"notify:\n  - url: https://h\n    secret_env: \"s3cr3t value\"\n", "r.yaml:8: notify[0].secret_env is not an environment variable name"},
		{"notify:\n  - url: https://h\n  - url: https://h\n", "r.yaml:8: notify[1]: url \"https://h\" listed twice (first on line 7)"},
		{"notify:\n  - url: https://h\n    secret: x\n", "r.yaml:8:"},
	} {
		_, err := Parse("r.yaml", []byte(head+c.body))
		if err != nil && strings.Contains(err.Error(), "s3cr3t") {
			t.Errorf("the error repeats what may be a secret: %v", err)
		}
		if err == nil || !strings.HasPrefix(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: got %v, want %q...", c.body, err, c.want)
		}
	}
}
