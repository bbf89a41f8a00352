// Package textsafetest checks, in tests, that a message a user sees obeys
// the textsafe rules.
package textsafetest

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/phalafleet/rollout/internal/textsafe"
)

// Check fails t unless got is one line of at most textsafe.MaxLine runes
// (plus the cut marker), without control characters, that holds parts in
// this order.
func Check(t testing.TB, got string, parts ...string) {
	t.Helper()
	if n := utf8.RuneCountInString(got); n > textsafe.MaxLine+40 {
		t.Errorf("the message is %d runes: %.300s", n, got)
	}
	if strings.ContainsFunc(got, func(r rune) bool { return r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) }) {
		t.Errorf("the message holds a control character: %.300q", got)
	}
	rest := got
	for _, p := range parts {
		i := strings.Index(rest, p)
		if i < 0 {
			t.Fatalf("got %.300q\nwant it to contain %q", got, p)
		}
		rest = rest[i+len(p):]
	}
}
