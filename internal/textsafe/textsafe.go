// Package textsafe makes text that comes from outside (a rollout file, the
// API, Redis) fit to show a user: one line, of bounded length, with every
// control character escaped so it can neither break the line nor drive the
// terminal. It is applied at the edges: where an error is printed, where an
// API error or a file error is built, and in table cells.
package textsafe

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// The bounds, in runes of the output. A real value (a URL, a CVM name, an
// API message) is far below MaxQuoted; a whole message line holds a few
// quoted values and its cause within MaxLine.
const (
	MaxQuoted = 400  // one quoted piece of input
	MaxLine   = 1000 // a whole message line
)

// piece is how the rune r, whose bytes in the text are raw, is shown:
// printable text as it is, anything else as a Go escape (\n, \x1b, \u2028,
// \xff for a byte that is not UTF-8). Backslashes and quotes stay as they
// are, so escaping twice changes nothing.
func piece(r rune, raw string) string {
	switch {
	case r == utf8.RuneError && len(raw) == 1:
		return fmt.Sprintf(`\x%02x`, raw[0])
	case r == '\n':
		return `\n`
	case r == '\r':
		return `\r`
	case r == '\t':
		return `\t`
	case r < 0x20 || r == 0x7f:
		return fmt.Sprintf(`\x%02x`, r)
	case unicode.IsControl(r), unicode.In(r, unicode.Zl, unicode.Zp), unicode.Is(unicode.Bidi_Control, r):
		// C1 controls (U+009B is a CSI), line and paragraph separators,
		// and the bidi overrides that reorder what a terminal shows.
		return fmt.Sprintf(`\u%04x`, r)
	}
	return raw
}

// Escape returns s with every control character escaped (see piece).
func Escape(s string) string {
	out, _ := head(s, math.MaxInt)
	return out
}

// head escapes s up to max output runes; n is how many bytes of s it used.
func head(s string, max int) (out string, n int) {
	var b strings.Builder
	width := 0
	for n < len(s) {
		r, size := utf8.DecodeRuneInString(s[n:])
		p := piece(r, s[n:n+size])
		w := utf8.RuneCountInString(p)
		if width+w > max {
			break
		}
		b.WriteString(p)
		width += w
		n += size
	}
	return b.String(), n
}

// tail is head from the end of s: the last runes of s, escaped, within max
// output runes, and how many bytes of s they take.
func tail(s string, max int) (out string, n int) {
	var parts []string
	width := 0
	for n < len(s) {
		r, size := utf8.DecodeLastRuneInString(s[:len(s)-n])
		p := piece(r, s[len(s)-n-size:len(s)-n])
		w := utf8.RuneCountInString(p)
		if width+w > max {
			break
		}
		parts = append(parts, p)
		width += w
		n += size
	}
	var b strings.Builder
	for i := len(parts) - 1; i >= 0; i-- {
		b.WriteString(parts[i])
	}
	return b.String(), n
}

// Line is s as one message line: escaped and at most about MaxLine runes.
// A longer s keeps its start (what failed, the file line) and its end (where
// an error chain puts the cause, such as Redis's "OOM command not allowed")
// and says how many bytes were cut between them.
func Line(s string) string {
	out, n := head(s, MaxLine)
	if n == len(s) {
		return out
	}
	front, n := head(s, MaxLine*2/3)
	back, m := tail(s[n:], MaxLine/3-20)
	return fmt.Sprintf("%s …(%d bytes cut)… %s", front, len(s)-n-m, back)
}

// Cut is s escaped and at most max runes, ending in "…" when it was cut.
// It is for a table cell; a tab is escaped too, so columns stay in place.
func Cut(s string, max int) string {
	out, n := head(s, max)
	if n == len(s) {
		return out
	}
	out, _ = head(s, max-1)
	return out + "…"
}

// Cell is a table cell: Cut to MaxQuoted runes.
func Cell(s string) string { return Cut(s, MaxQuoted) }

// Quote is s in Go quotes, as %q writes it, with at most max runes of s; a
// longer s is cut there and says its full size: "aaa"… (20971520 bytes).
func Quote(s string, max int) string {
	n, i := 0, 0
	for i < len(s) && n < max {
		_, size := utf8.DecodeRuneInString(s[i:])
		i += size
		n++
	}
	if i == len(s) {
		return strconv.Quote(s)
	}
	return fmt.Sprintf("%s… (%d bytes)", strconv.Quote(s[:i]), len(s))
}
