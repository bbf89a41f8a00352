package plan

// Validating a decoded rollout file: the rules yaml cannot express, each
// error at the line of the key or item it is about.

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

var namePattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,46}[a-z0-9])?$`)

func (f *File) validate(root *yaml.Node) error {
	if f.Name == "" {
		return &lineError{max(1, keyLine(root, "name")), "name is required"}
	}
	if !namePattern.MatchString(f.Name) {
		return &lineError{keyLine(root, "name"), fmt.Sprintf("name %s must be 1-48 lowercase letters, digits and dashes, starting and ending with a letter or digit", quote(f.Name))}
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
	if err := validateNotify(f.Notify, func(i int) int { return itemLine(root, i, "notify") }); err != nil {
		return err
	}
	return f.Schedule.validate(root)
}

// itemLine is the line of item i of the list at path, or of the list.
func itemLine(root *yaml.Node, i int, path ...string) int {
	line := keyLine(root, path...)
	n := root
	for _, k := range path {
		var next *yaml.Node
		for j := 0; n != nil && j+1 < len(n.Content); j += 2 {
			if n.Content[j].Value == k {
				next = n.Content[j+1]
			}
		}
		n = next
	}
	if n != nil && n.Kind == yaml.SequenceNode && i < len(n.Content) {
		return n.Content[i].Line
	}
	return line
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
				return &lineError{it.Line, fmt.Sprintf("selector.%s lists %s twice (first on line %d)", kl.key, quote(it.V), first)}
			}
			seen[it.V] = it.Line
			if kl.key == "names" {
				if _, err := matchGlob(it.V, ""); err != nil {
					return &lineError{it.Line, fmt.Sprintf("selector.names: %s is not a valid glob", quote(it.V))}
				}
			}
			if (kl.key == "ids" || kl.key == "exclude_ids") && strings.ContainsAny(it.V, "/ \t") {
				return &lineError{it.Line, fmt.Sprintf("selector.%s: %s is not a CVM id (ids look like cvm_ykL5lbAn)", kl.key, quote(it.V))}
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
				return &lineError{it.Line, fmt.Sprintf("target.%s[%d]: %s %s", l.key, i, quote(redactURL(it.V)), err)}
			}
			if first, ok := seen[it.V]; ok {
				return &lineError{it.Line, fmt.Sprintf("target.%s lists %s twice (first on line %d)", l.key, quote(redactURL(it.V)), first)}
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
