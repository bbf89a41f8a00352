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
	"reflect"
	"regexp"
	"slices"
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
	Rate     Rate     `yaml:"rate" json:"rate"`

	// Stages split the CVMs to patch into waves; Bake is the default wait
	// after a stage before the next starts.
	Stages        []StageSpec    `yaml:"stages" json:"stages,omitempty"`
	Bake          time.Duration  `yaml:"bake" json:"bake,omitempty"`
	FailureBudget *FailureBudget `yaml:"failure_budget" json:"failure_budget,omitempty"`
	Schedule      *Schedule      `yaml:"schedule" json:"schedule,omitempty"`

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

// Backoff is exponential with "equal jitter" between Base and Max.
type Backoff struct {
	Base time.Duration `yaml:"base" json:"base,omitempty"`
	Max  time.Duration `yaml:"max" json:"max,omitempty"`
}

// Retry defaults.
const (
	DefaultMaxAttempts    = 8 // with the backoff below, rides out an API outage of at least 2 minutes (7 waits of 2s, 4s, ... 120s, each at least half that)
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

// Delay is the wait before retry n (1-based): with d = min(Max,
// Base*2^(n-1)), a random duration in [d/2, d] ("equal jitter": spread out,
// yet the total wait of n retries has a floor, so a short API outage does
// not use up every attempt), at least one second since asynq schedules
// retries in whole seconds.
func (b Backoff) Delay(n int) time.Duration {
	d := b.Base
	for i := 1; i < n && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max)
	return max(time.Second, d/2+time.Duration(rand.Int64N(int64(d/2)+1)))
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
	// One line, whatever a message quotes from the file.
	msg := strings.NewReplacer("\r", `\r`, "\n", `\n`).Replace(e.Msg)
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", e.Path, e.Line, msg)
	}
	return fmt.Sprintf("%s: %s", e.Path, msg)
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

var yamlLine = regexp.MustCompile(`(?s)^(?:yaml: )?line (\d+): (.*)$`)

// Parse decodes and validates a rollout file's bytes. Unknown keys, wrong
// types and invalid values are errors naming the file and line.
func Parse(path string, data []byte) (*File, error) {
	var root, next yaml.Node
	docs := yaml.NewDecoder(bytes.NewReader(data))
	if err := docs.Decode(&root); err != nil && err != io.EOF {
		return nil, toFileError(path, data, nil, err)
	}
	if len(root.Content) == 0 {
		return nil, &Error{Path: path, Msg: "the file is empty"}
	}
	doc := root.Content[0]
	if doc.Kind != yaml.MappingNode {
		return nil, &Error{Path: path, Line: doc.Line, Msg: "a rollout file is a mapping of keys (name, selector, target, ...)"}
	}
	// yaml.v3 reads one document; a second one would be silently ignored.
	switch err := docs.Decode(&next); {
	case err == io.EOF:
	case err != nil:
		return nil, toFileError(path, data, nil, err)
	case len(next.Content) > 0 && next.Content[0].ShortTag() != "!!null":
		return nil, &Error{Path: path, Line: next.Line, Msg: "a second YAML document (---): a rollout file is one document"}
	}
	if err := checkDuplicateKeys(doc); err != nil {
		return nil, toFileError(path, data, doc, err)
	}
	// Checks yaml.v3 does not make; reported with the decode errors below,
	// whichever comes first in the file.
	treeErr := checkTree(doc, reflect.TypeFor[File](), "")
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var f File
	if err := dec.Decode(&f); err != nil && err != io.EOF {
		e := toFileError(path, data, doc, err).(*Error)
		if treeErr != nil && (e.Line == 0 || treeErr.line <= e.Line) {
			return nil, toFileError(path, data, doc, treeErr)
		}
		return nil, e
	}
	if treeErr != nil {
		return nil, toFileError(path, data, doc, treeErr)
	}
	f.Path = path
	if err := f.validate(doc); err != nil {
		return nil, toFileError(path, data, doc, err)
	}
	return &f, nil
}

var (
	strType         = reflect.TypeFor[Str]()
	unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()
)

// hasOwnYAML reports whether t decodes itself (Str, a stage, a window, ...).
func hasOwnYAML(t reflect.Type) bool {
	return t.Implements(unmarshalerType) || reflect.PointerTo(t).Implements(unmarshalerType)
}

func derefPointer(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}

// checkTree walks the document along the File type and rejects what
// yaml.v3 would let through silently:
//   - a null list item (`- ` or `[~]`), which yaml.v3 drops: `kms_urls: [~]`
//     would become [] and reset the list;
//   - a list key with no value (`kms_urls:`), which reads as "omitted";
//   - anything but true/false for a boolean: yaml.v3 takes yes/no/on/off,
//     even quoted, for a bool field.
//
// Wrong kinds (a list where a mapping belongs) are left to the decoder.
func checkTree(n *yaml.Node, t reflect.Type, path string) *lineError {
	t = derefPointer(t)
	if n.Kind != yaml.MappingNode || t.Kind() != reflect.Struct || hasOwnYAML(t) {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		f, ok := fieldByKey(t, k.Value)
		if !ok {
			continue // the decoder reports unknown keys
		}
		key := joinKey(path, k.Value)
		ft := derefPointer(f.Type)
		switch {
		case ft.Kind() == reflect.Bool:
			if v.Kind == yaml.ScalarNode && v.ShortTag() != "!!bool" {
				return &lineError{v.Line, fmt.Sprintf("%s: expected true or false, got %s", key, describe(v))}
			}
		case ft.Kind() == reflect.Slice:
			if v.ShortTag() == "!!null" {
				if f.Type.Kind() == reflect.Pointer {
					return &lineError{k.Line, fmt.Sprintf("%s has no value: leave the key out to keep the current list, or write [] to reset it to the node default", key)}
				}
				return &lineError{k.Line, fmt.Sprintf("%s has no value: write a list ([] for none) or leave the key out", key)}
			}
			if v.Kind == yaml.SequenceNode {
				for _, it := range v.Content {
					switch {
					case it.ShortTag() == "!!null":
						return &lineError{it.Line, fmt.Sprintf("%s has an empty item", key)}
					case it.Kind != yaml.ScalarNode && ft.Elem() == strType:
						return &lineError{it.Line, fmt.Sprintf("%s: expected a list of strings, got an item that is %s", key, describe(it))}
					}
				}
			}
		default:
			if err := checkTree(v, ft, key); err != nil {
				return err
			}
		}
	}
	return nil
}

// fieldByKey finds the struct field a YAML key decodes into.
func fieldByKey(t reflect.Type, key string) (reflect.StructField, bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		if name, _, _ := strings.Cut(f.Tag.Get("yaml"), ","); name == key && f.IsExported() {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// knownKeys lists the YAML keys of the struct at a dotted key path of File
// ("" for the top level), or nil when the path is not a struct.
func knownKeys(path string) []string {
	t := reflect.TypeFor[File]()
	if path != "" {
		for _, p := range strings.Split(path, ".") {
			f, ok := fieldByKey(t, p)
			if !ok {
				return nil
			}
			t = derefPointer(f.Type)
			for t.Kind() == reflect.Slice {
				t = derefPointer(t.Elem())
			}
		}
	}
	if t.Kind() != reflect.Struct || t == strType {
		return nil
	}
	var keys []string
	for i := range t.NumField() {
		if name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ","); name != "" && name != "-" && t.Field(i).IsExported() {
			keys = append(keys, name)
		}
	}
	return keys
}

func joinKey(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// walkPairs calls fn for every key/value pair of every mapping under n, in
// file order, with the dotted path of the mapping holding it.
func walkPairs(n *yaml.Node, path string, fn func(path string, k, v *yaml.Node) bool) bool {
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if !fn(path, k, v) || !walkPairs(v, joinKey(path, k.Value), fn) {
				return false
			}
		}
	case yaml.SequenceNode:
		for _, c := range n.Content {
			if !walkPairs(c, path, fn) {
				return false
			}
		}
	}
	return true
}

// toFileError turns a yaml or validation error into one "FILE:LINE: msg".
// yaml.v3 reports several problems at once; the first one is the line a
// user fixes first.
// doc (nil before the document is known) lets a message name the key.
func toFileError(path string, data []byte, doc *yaml.Node, err error) error {
	var le *lineError
	if errors.As(err, &le) {
		return &Error{Path: path, Line: le.line, Msg: le.msg}
	}
	var te *yaml.TypeError
	msg := err.Error()
	typeErr := errors.As(err, &te) && len(te.Errors) > 0
	if typeErr {
		msg = te.Errors[0]
	}
	msg = strings.TrimPrefix(msg, "yaml: ")
	line := 0
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	}
	if typeErr {
		msg = friendlier(doc, line, msg)
	} else {
		// A syntax error: yaml.v3's words, said to be about YAML.
		msg = "invalid YAML: " + msg
		if line > 0 && tabIndented(data, line) {
			msg += " (a tab in the indentation: indent with spaces)"
		}
	}
	return &Error{Path: path, Line: line, Msg: msg}
}

func tabIndented(data []byte, line int) bool {
	lines := bytes.Split(data, []byte("\n"))
	for _, l := range lines[max(0, line-2):min(len(lines), line)] {
		if i := bytes.IndexFunc(l, func(r rune) bool { return r != ' ' }); i >= 0 && l[i] == '\t' {
			return true
		}
	}
	return false
}

var notFound = regexp.MustCompile(`(?s)^field (.+) not found in type \S+$`)
var cannotUnmarshal = regexp.MustCompile("(?s)^cannot unmarshal !!(\\w+)(?: `(.*)`)? into (\\S+)$")

// friendlier rewrites one yaml.v3 type error at line: which key, what was
// expected, what the file holds (in full: yaml.v3 cuts values short).
func friendlier(doc *yaml.Node, line int, msg string) string {
	if m := notFound.FindStringSubmatch(msg); m != nil {
		where, known := "", knownKeys("")
		if doc != nil {
			known = nil // unless found: a key reached through an alias
			walkPairs(doc, "", func(path string, k, _ *yaml.Node) bool {
				if k.Line == line && k.Value == m[1] && !slices.Contains(knownKeys(path), k.Value) {
					if path != "" {
						where = " in " + path
					}
					known = knownKeys(path)
					return false
				}
				return true
			})
		}
		if len(known) == 0 {
			return fmt.Sprintf("unknown key %q%s", m[1], where)
		}
		return fmt.Sprintf("unknown key %q%s (known keys: %s)", m[1], where, strings.Join(known, ", "))
	}
	if m := cannotUnmarshal.FindStringSubmatch(msg); m != nil {
		want := m[3]
		switch {
		case strings.HasPrefix(want, "[]"), strings.HasPrefix(want, "*[]"):
			want = "a list"
		case want == "bool":
			want = "true or false"
		case want == "time.Duration":
			want = "a duration such as 30s, 5m or 1h30m"
		case strings.Contains(want, "int"):
			want = "a whole number"
		case want == "string" || strings.HasSuffix(want, ".Str"):
			want = "a string"
		default:
			want = "a mapping"
		}
		// Find the value the error is about, for its key and full text.
		var key string
		var val *yaml.Node
		if doc != nil {
			walkPairs(doc, "", func(path string, k, v *yaml.Node) bool {
				if v.Line == line && nodeTag(v) == m[1] && (v.Kind != yaml.ScalarNode || strings.HasPrefix(v.Value, strings.TrimSuffix(m[2], "..."))) {
					key, val = joinKey(path, k.Value), v
					return false
				}
				return true
			})
		}
		if val != nil {
			return fmt.Sprintf("%s: expected %s, got %s", key, want, describe(val))
		}
		got := yamlKind(m[1])
		if m[2] != "" {
			got += fmt.Sprintf(" %q", m[2])
		}
		return fmt.Sprintf("expected %s, got %s", want, got)
	}
	return msg
}

func nodeTag(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "seq"
	case yaml.MappingNode:
		return "map"
	}
	return strings.TrimPrefix(n.ShortTag(), "!!")
}

// describe says what a node holds: a list, a mapping, null, the string "x".
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode, yaml.MappingNode:
		return kindName(n)
	case yaml.AliasNode:
		return "an alias"
	}
	if n.ShortTag() == "!!null" {
		return "null"
	}
	if t := nodeTag(n); t != "str" {
		return yamlKind(t) + " " + n.Value
	}
	return fmt.Sprintf("the string %q", n.Value)
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
	case "null":
		return "null"
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
	if err := f.Retry.validate(root); err != nil {
		return err
	}
	if err := f.Rate.validate(root); err != nil {
		return err
	}
	if err := validateStages(f.Stages, f.Bake, root); err != nil {
		return err
	}
	if err := f.FailureBudget.validate(root); err != nil {
		return err
	}
	return f.Schedule.validate(root)
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
				return &lineError{it.Line, fmt.Sprintf("target.%s[%d]: %q %s", l.key, i, redactURL(it.V), err)}
			}
			if first, ok := seen[it.V]; ok {
				return &lineError{it.Line, fmt.Sprintf("target.%s lists %q twice (first on line %d)", l.key, redactURL(it.V), first)}
			}
			seen[it.V] = it.Line
		}
	}
	return nil
}

// redactURL hides a password in a URL an error message quotes.
func redactURL(s string) string {
	if u, err := url.Parse(s); err == nil && u.User != nil {
		return u.Redacted()
	}
	return s
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
