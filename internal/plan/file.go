// Package plan reads a rollout file and turns it, against the live API, into
// a plan: per selected CVM, what a rollout would do (patch, unchanged, skip).
package plan

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// File is a parsed, validated rollout file. The YAML keys are the contract
// in ../shared/docs/product.md; extend them, never rename.
type File struct {
	Name     string   `yaml:"name" json:"name"`
	Selector Selector `yaml:"selector" json:"selector"`
	Target   Target   `yaml:"target" json:"target"`
	Retry    Retry    `yaml:"retry" json:"retry"`

	// Path is where the file was read from (for error lines); not YAML.
	Path string `yaml:"-" json:"-"`
}

// Selector picks CVMs. Every given condition must hold; the items of one
// list are alternatives. An empty selector is an error: `all: true` selects
// the whole workspace on purpose.
type Selector struct {
	All        bool  `yaml:"all" json:"all,omitempty"`
	IDs        []Str `yaml:"ids" json:"ids,omitempty"`
	Names      []Str `yaml:"names" json:"names,omitempty"` // shell globs on the name
	AppIDs     []Str `yaml:"app_ids" json:"app_ids,omitempty"`
	Nodes      []Str `yaml:"nodes" json:"nodes,omitempty"`     // node_info.name
	Regions    []Str `yaml:"regions" json:"regions,omitempty"` // node_info.region
	Statuses   []Str `yaml:"statuses" json:"statuses,omitempty"`
	ExcludeIDs []Str `yaml:"exclude_ids" json:"exclude_ids,omitempty"`
}

// Target is the desired network config. A nil list leaves that list as it
// is; an empty list ([]) resets it to the node's default.
type Target struct {
	KMSURLs     *[]Str `yaml:"kms_urls" json:"kms_urls,omitempty"`
	GatewayURLs *[]Str `yaml:"gateway_urls" json:"gateway_urls,omitempty"`
	Restart     bool   `yaml:"restart" json:"restart,omitempty"`
}

// Retry is the per-CVM retry policy. Zero values take the defaults below.
type Retry struct {
	MaxAttempts int     `yaml:"max_attempts" json:"max_attempts,omitempty"` // tries per CVM, counting the first
	Backoff     Backoff `yaml:"backoff" json:"backoff"`
	// AttemptTimeout bounds one HTTP call; Deadline one whole try of a CVM
	// (reads, PATCH, and waiting for a restart).
	AttemptTimeout time.Duration `yaml:"attempt_timeout" json:"attempt_timeout,omitempty"`
	Deadline       time.Duration `yaml:"deadline" json:"deadline,omitempty"`
}

// Backoff is exponential with full jitter between Base and Max.
type Backoff struct {
	Base time.Duration `yaml:"base" json:"base,omitempty"`
	Max  time.Duration `yaml:"max" json:"max,omitempty"`
}

// Retry defaults.
const (
	DefaultMaxAttempts    = 5
	DefaultBackoffBase    = 2 * time.Second
	DefaultBackoffMax     = 2 * time.Minute
	DefaultAttemptTimeout = 30 * time.Second
	DefaultDeadline       = 5 * time.Minute
)

// WithDefaults returns r with every unset field at its default.
func (r Retry) WithDefaults() Retry {
	if r.MaxAttempts == 0 {
		r.MaxAttempts = DefaultMaxAttempts
	}
	if r.Backoff.Base == 0 {
		r.Backoff.Base = DefaultBackoffBase
	}
	if r.Backoff.Max == 0 {
		r.Backoff.Max = DefaultBackoffMax
	}
	if r.AttemptTimeout == 0 {
		r.AttemptTimeout = DefaultAttemptTimeout
	}
	if r.Deadline == 0 {
		r.Deadline = DefaultDeadline
	}
	return r
}

// Delay is the wait before retry n (1-based): a random duration in
// [0, min(Max, Base*2^(n-1))] ("full jitter"), at least one second since
// asynq schedules retries in whole seconds.
func (b Backoff) Delay(n int) time.Duration {
	d := b.Base
	for i := 1; i < n && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max)
	return max(time.Second, time.Duration(rand.Int64N(int64(d)+1)))
}

// Str is a string that remembers the file line it came from, so an error
// about one list item can name its line.
type Str struct {
	V    string
	Line int
}

// UnmarshalYAML accepts a scalar only.
func (s *Str) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		return &lineError{n.Line, fmt.Sprintf("expected a string, got %s", kindName(n))}
	}
	s.V, s.Line = n.Value, n.Line
	return nil
}

// MarshalJSON writes the plain string.
func (s Str) MarshalJSON() ([]byte, error) { return []byte(strconv.Quote(s.V)), nil }

// UnmarshalJSON reads the plain string (a stored spec read back).
func (s *Str) UnmarshalJSON(b []byte) error {
	v, err := strconv.Unquote(string(b))
	s.V = v
	return err
}

// Values returns the plain strings.
func Values(l []Str) []string {
	out := make([]string, len(l))
	for i, s := range l {
		out[i] = s.V
	}
	return out
}

// KMS and Gateway return the target lists as plain strings (nil: unchanged).
func (t Target) KMS() []string     { return ptrValues(t.KMSURLs) }
func (t Target) Gateway() []string { return ptrValues(t.GatewayURLs) }

func ptrValues(p *[]Str) []string {
	if p == nil {
		return nil
	}
	return Values(*p)
}

// Error is a problem with a rollout file at a line. Its text is the one
// line a user sees: "FILE:LINE: message".
type Error struct {
	Path string
	Line int
	Msg  string
}

func (e *Error) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", e.Path, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.Path, e.Msg)
}

type lineError struct {
	line int
	msg  string
}

func (e *lineError) Error() string { return fmt.Sprintf("line %d: %s", e.line, e.msg) }

// Load reads and validates a rollout file.
func Load(path string) (*File, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, errors.Unwrap(err))
	}
	return Parse(path, b)
}

var yamlLine = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)

// Parse decodes and validates a rollout file's bytes. Unknown keys, wrong
// types and invalid values are errors naming the file and line.
func Parse(path string, data []byte) (*File, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, toFileError(path, err)
	}
	if len(root.Content) == 0 {
		return nil, &Error{Path: path, Msg: "the file is empty"}
	}
	if root.Content[0].Kind != yaml.MappingNode {
		return nil, &Error{Path: path, Line: root.Content[0].Line, Msg: "a rollout file is a mapping of keys (name, selector, target, ...)"}
	}
	if err := checkDuplicateKeys(root.Content[0]); err != nil {
		return nil, toFileError(path, err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var f File
	if err := dec.Decode(&f); err != nil && err != io.EOF {
		return nil, toFileError(path, err)
	}
	f.Path = path
	if err := f.validate(root.Content[0]); err != nil {
		return nil, toFileError(path, err)
	}
	return &f, nil
}

// toFileError turns a yaml or validation error into one "FILE:LINE: msg".
// yaml.v3 reports several problems at once; the first one is the line a
// user fixes first.
func toFileError(path string, err error) error {
	var le *lineError
	if errors.As(err, &le) {
		return &Error{Path: path, Line: le.line, Msg: le.msg}
	}
	var te *yaml.TypeError
	msg := err.Error()
	if errors.As(err, &te) && len(te.Errors) > 0 {
		msg = te.Errors[0]
	}
	msg = strings.TrimPrefix(msg, "yaml: ")
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		n, _ := strconv.Atoi(m[1])
		return &Error{Path: path, Line: n, Msg: friendlier(m[2])}
	}
	return &Error{Path: path, Msg: friendlier(msg)}
}

var notFound = regexp.MustCompile(`^field (\S+) not found in type \S+$`)
var cannotUnmarshal = regexp.MustCompile("^cannot unmarshal !!(\\w+) `?(.*?)`? into (\\S+)$")

func friendlier(msg string) string {
	if m := notFound.FindStringSubmatch(msg); m != nil {
		return fmt.Sprintf("unknown key %q", m[1])
	}
	if m := cannotUnmarshal.FindStringSubmatch(msg); m != nil {
		want := m[3]
		switch {
		case strings.HasPrefix(want, "[]"), strings.HasPrefix(want, "*[]"):
			want = "a list"
		case want == "bool":
			want = "true or false"
		case strings.Contains(want, "int"):
			want = "a whole number"
		case want == "string" || strings.HasSuffix(want, ".Str"):
			want = "a string"
		default:
			want = "a mapping"
		}
		return fmt.Sprintf("expected %s, got %s %q", want, yamlKind(m[1]), m[2])
	}
	return msg
}

func yamlKind(tag string) string {
	switch tag {
	case "seq":
		return "a list"
	case "map":
		return "a mapping"
	case "str":
		return "the string"
	case "int", "float":
		return "the number"
	case "bool":
		return "the boolean"
	}
	return tag
}

func kindName(n *yaml.Node) string {
	switch {
	case n.Kind == yaml.SequenceNode:
		return "a list"
	case n.Kind == yaml.MappingNode:
		return "a mapping"
	case n.Tag == "!!null":
		return "null"
	}
	return fmt.Sprintf("%q", n.Value)
}

// checkDuplicateKeys rejects a key given twice in one mapping (yaml.v3
// already does, but names only the second line; this names both).
func checkDuplicateKeys(n *yaml.Node) error {
	if n.Kind == yaml.MappingNode {
		seen := map[string]int{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			if first, ok := seen[k.Value]; ok {
				return &lineError{k.Line, fmt.Sprintf("key %q given twice (first on line %d)", k.Value, first)}
			}
			seen[k.Value] = k.Line
		}
	}
	for _, c := range n.Content {
		if err := checkDuplicateKeys(c); err != nil {
			return err
		}
	}
	return nil
}

// keyLine finds the line of a key path in the document ("target", "kms_urls").
func keyLine(root *yaml.Node, path ...string) int {
	n, line := root, 0
	for _, p := range path {
		if n.Kind != yaml.MappingNode {
			return line
		}
		found := false
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == p {
				line, n, found = n.Content[i].Line, n.Content[i+1], true
				break
			}
		}
		if !found {
			return line
		}
	}
	return line
}

var namePattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,46}[a-z0-9])?$`)

func (f *File) validate(root *yaml.Node) error {
	if f.Name == "" {
		return &lineError{max(1, keyLine(root, "name")), "name is required"}
	}
	if !namePattern.MatchString(f.Name) {
		return &lineError{keyLine(root, "name"), fmt.Sprintf("name %q must be 1-48 lowercase letters, digits and dashes, starting and ending with a letter or digit", f.Name)}
	}
	if err := f.Selector.validate(root); err != nil {
		return err
	}
	if err := f.Target.validate(root); err != nil {
		return err
	}
	return f.Retry.validate(root)
}

func (r *Retry) validate(root *yaml.Node) error {
	if r.MaxAttempts < 0 || r.MaxAttempts > 100 {
		return &lineError{keyLine(root, "retry", "max_attempts"), "retry.max_attempts must be between 1 and 100"}
	}
	for _, d := range []struct {
		key []string
		v   time.Duration
	}{{[]string{"retry", "backoff", "base"}, r.Backoff.Base}, {[]string{"retry", "backoff", "max"}, r.Backoff.Max},
		{[]string{"retry", "attempt_timeout"}, r.AttemptTimeout}, {[]string{"retry", "deadline"}, r.Deadline}} {
		if d.v < 0 {
			return &lineError{keyLine(root, d.key...), strings.Join(d.key, ".") + " must not be negative"}
		}
	}
	if r.Backoff.Base > 0 && r.Backoff.Max > 0 && r.Backoff.Max < r.Backoff.Base {
		return &lineError{keyLine(root, "retry", "backoff", "max"), "retry.backoff.max is below retry.backoff.base"}
	}
	return nil
}

func (s *Selector) empty() bool {
	return len(s.IDs)+len(s.Names)+len(s.AppIDs)+len(s.Nodes)+len(s.Regions)+len(s.Statuses) == 0
}

func (s *Selector) validate(root *yaml.Node) error {
	line := keyLine(root, "selector")
	if line == 0 {
		return &lineError{1, "selector is required (use `all: true` to select every CVM of the workspace)"}
	}
	if s.empty() && !s.All {
		return &lineError{line, "selector is empty: it would select nothing; use `all: true` to select every CVM of the workspace"}
	}
	if s.All && !s.empty() {
		return &lineError{keyLine(root, "selector", "all"), "selector `all: true` cannot be combined with other conditions (exclude_ids is allowed)"}
	}
	lists := []struct {
		key string
		l   []Str
	}{{"ids", s.IDs}, {"names", s.Names}, {"app_ids", s.AppIDs}, {"nodes", s.Nodes}, {"regions", s.Regions}, {"statuses", s.Statuses}, {"exclude_ids", s.ExcludeIDs}}
	for _, kl := range lists {
		seen := map[string]int{}
		for _, it := range kl.l {
			if strings.TrimSpace(it.V) == "" {
				return &lineError{it.Line, fmt.Sprintf("selector.%s has an empty item", kl.key)}
			}
			if first, ok := seen[it.V]; ok {
				return &lineError{it.Line, fmt.Sprintf("selector.%s lists %q twice (first on line %d)", kl.key, it.V, first)}
			}
			seen[it.V] = it.Line
			if kl.key == "names" {
				if _, err := matchGlob(it.V, ""); err != nil {
					return &lineError{it.Line, fmt.Sprintf("selector.names: %q is not a valid glob", it.V)}
				}
			}
			if (kl.key == "ids" || kl.key == "exclude_ids") && strings.ContainsAny(it.V, "/ \t") {
				return &lineError{it.Line, fmt.Sprintf("selector.%s: %q is not a CVM id (ids look like cvm_ykL5lbAn)", kl.key, it.V)}
			}
		}
	}
	return nil
}

func (t *Target) validate(root *yaml.Node) error {
	line := keyLine(root, "target")
	if line == 0 {
		return &lineError{1, "target is required (kms_urls and/or gateway_urls)"}
	}
	if t.KMSURLs == nil && t.GatewayURLs == nil {
		return &lineError{line, "target sets neither kms_urls nor gateway_urls: there is nothing to change"}
	}
	for _, l := range []struct {
		key string
		p   *[]Str
	}{{"kms_urls", t.KMSURLs}, {"gateway_urls", t.GatewayURLs}} {
		if l.p == nil {
			continue
		}
		seen := map[string]int{}
		for i, it := range *l.p {
			if err := checkURL(it.V); err != nil {
				return &lineError{it.Line, fmt.Sprintf("target.%s[%d]: %q %s", l.key, i, it.V, err)}
			}
			if first, ok := seen[it.V]; ok {
				return &lineError{it.Line, fmt.Sprintf("target.%s lists %q twice (first on line %d)", l.key, it.V, first)}
			}
			seen[it.V] = it.Line
		}
	}
	return nil
}

func checkURL(s string) error {
	if strings.ContainsAny(s, " \t\r\n") {
		return errors.New("contains a space")
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return errors.New("is not an absolute http(s) URL")
	}
	if u.User != nil {
		return errors.New("must not carry credentials")
	}
	return nil
}
