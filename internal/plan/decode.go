package plan

// Decoding a rollout file: strict YAML, the checks yaml.v3 does not make,
// and turning every error into one "FILE:LINE: message".

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/phalafleet/rollout/internal/textsafe"
	"gopkg.in/yaml.v3"
)

// Error is a problem with a rollout file at a line. Its text is the one
// line a user sees: "FILE:LINE: message".
type Error struct {
	Path string
	Line int
	Msg  string
}

func (e *Error) Error() string {
	// One line of bounded length, whatever a message quotes from the file.
	if e.Line > 0 {
		return textsafe.Line(fmt.Sprintf("%s:%d: %s", e.Path, e.Line, e.Msg))
	}
	return textsafe.Line(fmt.Sprintf("%s: %s", e.Path, e.Msg))
}

// quote is how a message quotes a value from the file: as %q does, cut to
// textsafe.MaxQuoted runes, so a 20 MB value gives a short line.
func quote(s string) string { return textsafe.Quote(s, textsafe.MaxQuoted) }

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
	strType  = reflect.TypeFor[Str]()
	timeType = reflect.TypeFor[time.Time]()
)

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
//     even quoted, for a bool field;
//   - a number that is not finite (.inf, .nan): the file's hash (its JSON)
//     cannot hold one, so such files would not get a rollout id of their own;
//   - a time that does not parse, which yaml.v3 reports without a line or a
//     key, or that JSON cannot hold (an offset of +24:00).
//
// It also walks the mappings of a type that decodes itself (a stage, a
// window: their mapping form decodes field by field) and the mapping items
// of a list. Wrong kinds (a list where a mapping belongs) are left to the
// decoder.
func checkTree(n *yaml.Node, t reflect.Type, path string) *lineError {
	t = derefPointer(t)
	if n.Kind != yaml.MappingNode || t.Kind() != reflect.Struct {
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
		case ft.Kind() == reflect.Float64 || ft.Kind() == reflect.Float32:
			if err := checkFinite(v, key); err != nil {
				return err
			}
		case ft == timeType:
			if err := checkTime(v, key); err != nil {
				return err
			}
		case ft.Kind() == reflect.Slice:
			if v.ShortTag() == "!!null" {
				if f.Type.Kind() == reflect.Pointer {
					return &lineError{k.Line, fmt.Sprintf("%s has no value: leave the key out to keep the current list, or write [] to reset it to the node default", key)}
				}
				return &lineError{k.Line, fmt.Sprintf("%s has no value: write a list ([] for none) or leave the key out", key)}
			}
			if v.Kind == yaml.SequenceNode {
				for j, it := range v.Content {
					switch {
					case it.ShortTag() == "!!null":
						return &lineError{it.Line, fmt.Sprintf("%s has an empty item", key)}
					case it.Kind != yaml.ScalarNode && ft.Elem() == strType:
						return &lineError{it.Line, fmt.Sprintf("%s: expected a list of strings, got an item that is %s", key, describe(it))}
					}
					if err := checkTree(it, ft.Elem(), fmt.Sprintf("%s[%d]", key, j)); err != nil {
						return err
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

// checkFinite rejects .inf and .nan for a number key.
func checkFinite(v *yaml.Node, key string) *lineError {
	var f float64
	if v.Kind != yaml.ScalarNode || v.Decode(&f) != nil {
		return nil // not a number: the decoder says so
	}
	if math.IsInf(f, 0) || math.IsNaN(f) {
		return &lineError{v.Line, fmt.Sprintf("%s: expected a finite number, got %s", key, textsafe.Cut(v.Value, textsafe.MaxQuoted))}
	}
	return nil
}

// checkTime rejects a time key's value that does not parse as RFC 3339 or
// that JSON cannot write, naming the key and its line.
func checkTime(v *yaml.Node, key string) *lineError {
	if v.Kind != yaml.ScalarNode || v.ShortTag() == "!!null" {
		return nil
	}
	var t time.Time
	err := v.Decode(&t)
	if err == nil {
		_, err = t.MarshalJSON()
	}
	if err == nil {
		return nil
	}
	why := ""
	var pe *time.ParseError
	switch {
	case errors.As(err, &pe):
		if m := strings.TrimPrefix(pe.Message, ": "); m != "" {
			why = " (" + m + ")"
		}
	case !errors.As(err, new(*yaml.TypeError)):
		why = " (" + strings.TrimPrefix(err.Error(), "Time.MarshalJSON: ") + ")"
	}
	return &lineError{v.Line, fmt.Sprintf("%s: expected an RFC 3339 time such as 2026-07-01T09:00:00Z, got %s%s", key, describe(v), why)}
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
			return fmt.Sprintf("unknown key %s%s", quote(m[1]), where)
		}
		return fmt.Sprintf("unknown key %s%s (known keys: %s)", quote(m[1]), where, strings.Join(known, ", "))
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
			got += " " + quote(m[2])
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
		return yamlKind(t) + " " + textsafe.Cut(n.Value, textsafe.MaxQuoted)
	}
	return "the string " + quote(n.Value)
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
	case "timestamp":
		return "the time"
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
	return quote(n.Value)
}

// checkDuplicateKeys rejects a key given twice in one mapping (yaml.v3
// already does, but names only the second line; this names both).
func checkDuplicateKeys(n *yaml.Node) error {
	if n.Kind == yaml.MappingNode {
		seen := map[string]int{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			if first, ok := seen[k.Value]; ok {
				return &lineError{k.Line, fmt.Sprintf("key %s given twice (first on line %d)", quote(k.Value), first)}
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
