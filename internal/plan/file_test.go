package plan

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// TestParseErrors pins the exact one-line error for each kind of bad file.
func TestParseErrors(t *testing.T) {
	const sel = "selector:\n  ids: [cvm_a]\n"                           // lines +0..+1
	const tgt = "target:\n  kms_urls: [\"https://kms.example:8000\"]\n" // lines +0..+1
	tests := []struct {
		name string
		yaml string
		want string
	}{
		// Unknown keys.
		{"unknown top-level key", "name: a\n" + sel + "kms_url: x\n" + tgt,
			`bad.yaml:4: unknown key "kms_url" (known keys: name, selector, target, retry, rate, stages, bake, failure_budget, schedule, notify)`},
		{"unknown selector key", "name: a\nselector:\n  ids: [cvm_a]\n  foo: 1\n" + tgt,
			`bad.yaml:4: unknown key "foo" in selector (known keys: all, ids, names, app_ids, nodes, regions, statuses, exclude_ids)`},
		{"unknown target key", "name: a\n" + sel + "target:\n  kms_urls: [\"https://kms.example\"]\n  kms_url: x\n",
			`bad.yaml:6: unknown key "kms_url" in target (known keys: kms_urls, gateway_urls, restart)`},
		{"unknown retry.backoff key", "name: a\n" + sel + tgt + "retry:\n  backoff:\n    bse: 1s\n",
			`bad.yaml:8: unknown key "bse" in retry.backoff (known keys: base, max)`},
		{"first of two unknown keys", "name: a\nfoo: 1\nbar: 2\n" + sel + tgt,
			`bad.yaml:2: unknown key "foo" (known keys: name, selector, target, retry, rate, stages, bake, failure_budget, schedule, notify)`},

		// Wrong types.
		{"name is a list", "name: [a]\n" + sel + tgt,
			`bad.yaml:1: name: expected a string, got a list`},
		{"ids is a string", "name: a\nselector:\n  ids: \"x\"\n" + tgt,
			`bad.yaml:3: selector.ids: expected a list, got the string "x"`},
		{"kms_urls is a long string", "name: a\n" + sel + "target:\n  kms_urls: https://kms.example:8000\n",
			`bad.yaml:5: target.kms_urls: expected a list, got the string "https://kms.example:8000"`},
		{"restart quoted yes", "name: a\n" + sel + tgt + "  restart: \"yes\"\n",
			`bad.yaml:6: target.restart: expected true or false, got the string "yes"`},
		{"restart bare yes", "name: a\n" + sel + tgt + "  restart: yes\n",
			`bad.yaml:6: target.restart: expected true or false, got the string "yes"`},
		{"restart no value", "name: a\n" + sel + tgt + "  restart:\n",
			`bad.yaml:6: target.restart: expected true or false, got null`},
		{"all quoted true", "name: a\nselector:\n  all: \"true\"\n" + tgt,
			`bad.yaml:3: selector.all: expected true or false, got the string "true"`},
		{"all on", "name: a\nselector:\n  all: on\n" + tgt,
			`bad.yaml:3: selector.all: expected true or false, got the string "on"`},
		{"max_attempts many", "name: a\n" + sel + tgt + "retry:\n  max_attempts: many\n",
			`bad.yaml:7: retry.max_attempts: expected a whole number, got the string "many"`},
		{"selector is a list", "name: a\nselector: [cvm_a]\n" + tgt,
			`bad.yaml:2: selector: expected a mapping, got a list`},
		{"retry is a list", "name: a\n" + sel + tgt + "retry: [1]\n",
			`bad.yaml:6: retry: expected a mapping, got a list`},
		{"list item is a mapping", "name: a\nselector:\n  ids: [{a: b}]\n" + tgt,
			`bad.yaml:3: selector.ids: expected a list of strings, got an item that is a mapping`},
		{"duration in words", "name: a\n" + sel + tgt + "retry:\n  deadline: 5 minutes\n",
			`bad.yaml:7: retry.deadline: expected a duration such as 30s, 5m or 1h30m, got the string "5 minutes"`},
		{"duration as a bare number", "name: a\n" + sel + tgt + "retry:\n  attempt_timeout: 30\n",
			`bad.yaml:7: retry.attempt_timeout: expected a duration such as 30s, 5m or 1h30m, got the number 30`},

		// Null where yaml.v3 would silently drop or ignore something.
		{"null list item dropped by yaml", "name: a\n" + sel + "target:\n  kms_urls:\n    - https://kms.example\n    -\n",
			`bad.yaml:7: target.kms_urls has an empty item`},
		{"only a null item (would reset)", "name: a\n" + sel + "target:\n  kms_urls: [~]\n",
			`bad.yaml:5: target.kms_urls has an empty item`},
		{"null selector item", "name: a\nselector:\n  ids: [cvm_a, null]\n" + tgt,
			`bad.yaml:3: selector.ids has an empty item`},
		{"empty string id", "name: a\nselector:\n  ids: [\"\"]\n" + tgt,
			`bad.yaml:3: selector.ids has an empty item`},
		{"target list without value", "name: a\n" + sel + "target:\n  kms_urls:\n  gateway_urls: [\"https://gw.example\"]\n",
			`bad.yaml:5: target.kms_urls has no value: leave the key out to keep the current list, or write [] to reset it to the node default`},
		{"selector list without value", "name: a\nselector:\n  ids: [cvm_a]\n  names:\n" + tgt,
			`bad.yaml:4: selector.names has no value: write a list ([] for none) or leave the key out`},

		// Selector.
		{"empty selector", "name: a\nselector: {}\n" + tgt,
			"bad.yaml:2: selector is empty: it would select nothing; use `all: true` to select every CVM of the workspace"},
		{"null selector", "name: a\nselector:\n" + tgt,
			"bad.yaml:2: selector is empty: it would select nothing; use `all: true` to select every CVM of the workspace"},
		{"exclude_ids alone", "name: a\nselector:\n  exclude_ids: [cvm_a]\n" + tgt,
			"bad.yaml:2: selector is empty: it would select nothing; use `all: true` to select every CVM of the workspace"},
		{"missing selector", "name: a\n" + tgt,
			"bad.yaml:1: selector is required (use `all: true` to select every CVM of the workspace)"},
		{"all with names", "name: a\nselector:\n  names: [\"prod-*\"]\n  all: true\n" + tgt,
			"bad.yaml:4: selector `all: true` cannot be combined with other conditions (exclude_ids is allowed)"},
		{"duplicate id", "name: a\nselector:\n  ids:\n    - cvm_a\n    - cvm_b\n    - cvm_a\n" + tgt,
			`bad.yaml:6: selector.ids lists "cvm_a" twice (first on line 4)`},
		{"bad glob", "name: a\nselector:\n  names: [\"[a-\"]\n" + tgt,
			`bad.yaml:3: selector.names: "[a-" is not a valid glob`},
		{"id with a slash", "name: a\nselector:\n  ids:\n    - cvm_a\n    - cvm/b\n" + tgt,
			`bad.yaml:5: selector.ids: "cvm/b" is not a CVM id (ids look like cvm_ykL5lbAn)`},
		{"exclude id with a space", "name: a\nselector:\n  all: true\n  exclude_ids: [\"cvm a\"]\n" + tgt,
			`bad.yaml:4: selector.exclude_ids: "cvm a" is not a CVM id (ids look like cvm_ykL5lbAn)`},

		// Target.
		{"missing target", "name: a\n" + sel,
			"bad.yaml:1: target is required (kms_urls and/or gateway_urls)"},
		{"target with neither list", "name: a\n" + sel + "target:\n  restart: true\n",
			"bad.yaml:4: target sets neither kms_urls nor gateway_urls: there is nothing to change"},
		{"URL without scheme", "name: a\n" + sel + "target:\n  kms_urls: [\"kms.example:8000\"]\n",
			`bad.yaml:5: target.kms_urls[0]: "kms.example:8000" is not an absolute http(s) URL`},
		{"ftp URL on its own line", "name: a\n" + sel + "target:\n  kms_urls:\n    - https://kms.example\n    - ftp://x\n",
			`bad.yaml:7: target.kms_urls[1]: "ftp://x" is not an absolute http(s) URL`},
		{"path URL", "name: a\n" + sel + "target:\n  gateway_urls: [/path]\n",
			`bad.yaml:5: target.gateway_urls[0]: "/path" is not an absolute http(s) URL`},
		{"URL with a space", "name: a\n" + sel + "target:\n  kms_urls: [\"https://kms example:8000\"]\n",
			`bad.yaml:5: target.kms_urls[0]: "https://kms example:8000" contains a space`},
		{"URL with credentials", "name: a\n" + sel + "target:\n  kms_urls: [\"https://user:pw@kms.example\"]\n",
			`bad.yaml:5: target.kms_urls[0]: "https://user:xxxxx@kms.example" must not carry credentials`},
		{"URL twice", "name: a\n" + sel + "target:\n  kms_urls:\n    - https://kms.example\n    - https://kms.example\n",
			`bad.yaml:7: target.kms_urls lists "https://kms.example" twice (first on line 6)`},

		// Name.
		{"uppercase name", "name: Prod\n" + sel + tgt,
			`bad.yaml:1: name "Prod" must be 1-48 lowercase letters, digits and dashes, starting and ending with a letter or digit`},
		{"missing name", sel + tgt, "bad.yaml:1: name is required"},

		// Retry.
		{"negative backoff base", "name: a\n" + sel + tgt + "retry:\n  backoff:\n    base: -1s\n",
			"bad.yaml:8: retry.backoff.base must not be negative"},
		{"backoff max below base", "name: a\n" + sel + tgt + "retry:\n  backoff:\n    base: 10s\n    max: 1s\n",
			"bad.yaml:9: retry.backoff.max is below retry.backoff.base"},
		{"max_attempts out of range", "name: a\n" + sel + tgt + "retry:\n  max_attempts: 101\n",
			"bad.yaml:7: retry.max_attempts must be between 1 and 100"},

		// Structure and syntax.
		{"duplicate top-level key", "name: a\n" + sel + tgt + "name: b\n",
			`bad.yaml:6: key "name" given twice (first on line 1)`},
		{"duplicate nested key", "name: a\nselector:\n  ids: [cvm_a]\n  ids: [cvm_b]\n" + tgt,
			`bad.yaml:4: key "ids" given twice (first on line 3)`},
		{"empty file", "", "bad.yaml: the file is empty"},
		{"only comments", "# nothing yet\n\n", "bad.yaml: the file is empty"},
		{"a list", "- name: a\n- name: b\n",
			"bad.yaml:1: a rollout file is a mapping of keys (name, selector, target, ...)"},
		{"a scalar", "hello\n",
			"bad.yaml:1: a rollout file is a mapping of keys (name, selector, target, ...)"},
		{"unclosed flow list", "name: a\nselector: [\n",
			"bad.yaml:2: invalid YAML: did not find expected node content"},
		{"bad mapping", "name: a\n  selector: : x\n",
			"bad.yaml:2: invalid YAML: mapping values are not allowed in this context"},
		{"tab indentation", "name: a\nselector:\n\tids: [cvm_a]\n",
			"bad.yaml:3: invalid YAML: found character that cannot start any token (a tab in the indentation: indent with spaces)"},
		{"two documents", "name: a\n" + sel + tgt + "---\nname: b\n",
			"bad.yaml:6: a second YAML document (---): a rollout file is one document"},
		{"key with a newline stays one line", "name: a\n\"x\\ny\": 1\n" + sel + tgt,
			`bad.yaml:2: unknown key "x\ny" (known keys: name, selector, target, retry, rate, stages, bake, failure_budget, schedule, notify)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := Parse("bad.yaml", []byte(tt.yaml))
			if err == nil {
				t.Fatalf("Parse accepted the file: %+v", f)
			}
			var pe *Error
			if !errors.As(err, &pe) {
				t.Fatalf("error is %T, want *plan.Error: %v", err, err)
			}
			got := err.Error()
			if strings.ContainsAny(got, "\r\n") {
				t.Errorf("error is not one line: %q", got)
			}
			if got != tt.want {
				t.Errorf("error\n got: %s\nwant: %s", got, tt.want)
			}
		})
	}
}

// productExample is the example of "The rollout file" in product.md.
const productExample = `name: kms-migration-eu            # required; the rollout id is derived from it plus a suffix
selector:                          # all given conditions must hold; items of a list are alternatives
  ids: [cvm_ykL5lbAn]
  names: ["prod-*"]                # shell globs on the CVM name
  app_ids: []
  nodes: ["prod7"]                 # node_info.name
  regions: ["eu-central"]          # node_info.region
  statuses: [running]
  exclude_ids: []
  # an empty selector is an error: selecting the whole workspace takes ` + "`all: true`" + `
target:
  kms_urls: ["https://kms.example:8000"]        # omitted: leave unchanged; [] would reset to the node default
  gateway_urls: ["https://gateway.example:8000"]
  restart: false
`

func TestParseProductExample(t *testing.T) {
	f, err := Parse("ex.yaml", []byte(productExample))
	if err != nil {
		t.Fatal(err)
	}
	eq := func(what string, got, want []string) {
		t.Helper()
		if strings.Join(got, "|") != strings.Join(want, "|") || (got == nil) != (want == nil) {
			t.Errorf("%s = %q, want %q", what, got, want)
		}
	}
	if f.Name != "kms-migration-eu" || f.Path != "ex.yaml" {
		t.Errorf("name, path = %q, %q", f.Name, f.Path)
	}
	s := f.Selector
	if s.All {
		t.Error("All set")
	}
	eq("ids", Values(s.IDs), []string{"cvm_ykL5lbAn"})
	eq("names", Values(s.Names), []string{"prod-*"})
	eq("app_ids", Values(s.AppIDs), []string{})
	eq("nodes", Values(s.Nodes), []string{"prod7"})
	eq("regions", Values(s.Regions), []string{"eu-central"})
	eq("statuses", Values(s.Statuses), []string{"running"})
	eq("exclude_ids", Values(s.ExcludeIDs), []string{})
	eq("kms", f.Target.KMS(), []string{"https://kms.example:8000"})
	eq("gateway", f.Target.Gateway(), []string{"https://gateway.example:8000"})
	if f.Target.Restart {
		t.Error("Restart set")
	}
	if s.IDs[0].Line != 3 || (*f.Target.KMSURLs)[0].Line != 12 {
		t.Errorf("item lines = %d, %d, want 3, 12", s.IDs[0].Line, (*f.Target.KMSURLs)[0].Line)
	}
	if f.Retry != (Retry{}) {
		t.Errorf("Retry = %+v, want zero", f.Retry)
	}
	r := f.Retry.WithDefaults()
	if r.MaxAttempts != DefaultMaxAttempts || r.Backoff.Base != DefaultBackoffBase || r.Backoff.Max != DefaultBackoffMax ||
		r.AttemptTimeout != DefaultAttemptTimeout || r.Deadline != DefaultDeadline {
		t.Errorf("WithDefaults = %+v", r)
	}
}

func TestParseGood(t *testing.T) {
	tests := []struct {
		name  string
		yaml  string
		check func(t *testing.T, f *File)
	}{
		{"empty list resets, omitted leaves", "name: a\nselector: {all: true}\ntarget:\n  kms_urls: []\n", func(t *testing.T, f *File) {
			if f.Target.KMSURLs == nil || len(*f.Target.KMSURLs) != 0 {
				t.Errorf("KMSURLs = %v, want non-nil empty", f.Target.KMSURLs)
			}
			if k := f.Target.KMS(); k == nil || len(k) != 0 {
				t.Errorf("KMS() = %#v, want non-nil empty", k)
			}
			if f.Target.GatewayURLs != nil || f.Target.Gateway() != nil {
				t.Errorf("GatewayURLs = %v, want nil", f.Target.GatewayURLs)
			}
		}},
		{"all with exclude_ids", "name: a\nselector:\n  all: true\n  exclude_ids: [cvm_x]\ntarget:\n  gateway_urls: [\"http://gw.example\"]\n  restart: true\n", func(t *testing.T, f *File) {
			if !f.Selector.All || len(f.Selector.ExcludeIDs) != 1 || !f.Target.Restart {
				t.Errorf("got %+v", f)
			}
		}},
		{"restart false", "name: a\nselector: {all: true}\ntarget: {kms_urls: [\"https://k.example\"], restart: False}\n", func(t *testing.T, f *File) {
			if f.Target.Restart {
				t.Error("Restart set")
			}
		}},
		{"retry values", "name: a\nselector: {all: true}\ntarget: {kms_urls: []}\nretry:\n  max_attempts: 3\n  backoff: {base: 1s, max: 1m}\n  attempt_timeout: 10s\n  deadline: 1h30m\n", func(t *testing.T, f *File) {
			want := Retry{MaxAttempts: 3, Backoff: Backoff{Base: time.Second, Max: time.Minute}, AttemptTimeout: 10 * time.Second, Deadline: 90 * time.Minute}
			if f.Retry != want || f.Retry.WithDefaults() != want {
				t.Errorf("Retry = %+v, want %+v", f.Retry, want)
			}
		}},
		{"trailing document marker", "name: a\nselector: {all: true}\ntarget: {kms_urls: []}\n---\n", nil},
		{"numeric name", "name: 42\nselector: {all: true}\ntarget: {kms_urls: []}\n", func(t *testing.T, f *File) {
			if f.Name != "42" {
				t.Errorf("Name = %q", f.Name)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := Parse("good.yaml", []byte(tt.yaml))
			if err != nil {
				t.Fatal(err)
			}
			if tt.check != nil {
				tt.check(t, f)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "rollout.yaml")
	if err := os.WriteFile(p, []byte(productExample), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := Load(p)
	if err != nil || f.Path != p {
		t.Fatalf("Load = %+v, %v", f, err)
	}
	missing := filepath.Join(dir, "nope.yaml")
	if _, err := Load(missing); err == nil || err.Error() != missing+": no such file or directory" {
		t.Errorf("Load(missing) = %v", err)
	}
	if err := os.WriteFile(p, []byte("name: a\nfoo: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(p); err == nil || err.Error() != p+`:2: unknown key "foo" (known keys: name, selector, target, retry, rate, stages, bake, failure_budget, schedule, notify)` {
		t.Errorf("Load(bad) = %v", err)
	}
}

func TestHash(t *testing.T) {
	const a = "name: a\nselector:\n  ids: [cvm_a, cvm_b]\ntarget:\n  kms_urls: [\"https://kms.example:8000\"]\n"
	const sameMeaning = "# the same rollout, laid out differently\nname:   \"a\"\n\ntarget: {kms_urls: ['https://kms.example:8000']}  # moved up\nselector:\n  ids:\n    - cvm_a\n    - cvm_b\n"
	const otherURL = "name: a\nselector:\n  ids: [cvm_a, cvm_b]\ntarget:\n  kms_urls: [\"https://kms.example:8001\"]\n"
	const resetGateway = a + "  gateway_urls: []\n"
	hash := func(s string) string {
		t.Helper()
		f, err := Parse("h.yaml", []byte(s))
		if err != nil {
			t.Fatal(err)
		}
		return f.Hash()
	}
	h := hash(a)
	if len(h) != 64 {
		t.Errorf("Hash = %q, want 64 hex digits", h)
	}
	if g := hash(sameMeaning); g != h {
		t.Errorf("formatting changed the hash: %s vs %s", g, h)
	}
	if f, _ := Parse("elsewhere.yaml", []byte(a)); f.Hash() != h {
		t.Error("the path changed the hash")
	}
	if hash(otherURL) == h {
		t.Error("a changed URL kept the hash")
	}
	if hash(resetGateway) == h {
		t.Error("gateway_urls: [] (reset) hashed like an omitted gateway_urls")
	}
}

// selfDecoding stands for an item type with its own UnmarshalYAML (a stage:
// `10`, `"10%"` or a mapping).
type selfDecoding struct{ raw string }

func (s *selfDecoding) UnmarshalYAML(n *yaml.Node) error { s.raw = n.Value; return nil }

// TestCheckTreeShapes runs checkTree on a schema shaped like later sections
// of the file (pointer booleans, lists of items that decode themselves).
func TestCheckTreeShapes(t *testing.T) {
	type section struct {
		Adaptive *bool          `yaml:"adaptive"`
		Items    []selfDecoding `yaml:"items"`
		Names    []Str          `yaml:"names"`
	}
	type schema struct {
		Sec section `yaml:"sec"`
	}
	tests := []struct {
		yaml string
		want string // "" for no error
	}{
		{"sec:\n  adaptive: false\n  items: [10, \"10%\", {name: a}]\n  names: [a]\n", ""},
		{"sec:\n  adaptive: off\n", `line 2: sec.adaptive: expected true or false, got the string "off"`},
		{"sec:\n  items:\n    - 10\n    - ~\n", "line 4: sec.items has an empty item"},
		{"sec:\n  items:\n", "line 2: sec.items has no value: write a list ([] for none) or leave the key out"},
		{"sec:\n  names: [[a]]\n", "line 2: sec.names: expected a list of strings, got an item that is a list"},
		{"sec: [1]\nother: 2\n", ""}, // wrong kinds and unknown keys are the decoder's
	}
	for _, tt := range tests {
		var doc yaml.Node
		if err := yaml.Unmarshal([]byte(tt.yaml), &doc); err != nil {
			t.Fatal(err)
		}
		got := ""
		if err := checkTree(doc.Content[0], reflect.TypeFor[schema](), ""); err != nil {
			got = err.Error()
		}
		if got != tt.want {
			t.Errorf("checkTree(%q) = %q, want %q", tt.yaml, got, tt.want)
		}
	}
}
