package textsafe

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestLine(t *testing.T) {
	t.Parallel()
	big := strings.Repeat("a", 20<<20)
	html := "<html>\r\n<head><title>502 Bad Gateway</title></head>\n<body>\n</body>\n</html>\n"
	cases := []struct {
		name, in string
		want     string // the whole line, or a part of it with contains
		contains []string
	}{
		{name: "plain", in: `bad.yaml:6: unknown key "x"`, want: `bad.yaml:6: unknown key "x"`},
		{name: "html page", in: html, want: `<html>\r\n<head><title>502 Bad Gateway</title></head>\n<body>\n</body>\n</html>\n`},
		{name: "terminal escape", in: "cvm \x1b[31mred\x1b[0m", want: `cvm \x1b[31mred\x1b[0m`},
		{name: "carriage return", in: "ok\rFAKE", want: `ok\rFAKE`},
		{name: "nul and del", in: "a\x00b\x7f", want: `a\x00b\x7f`},
		{name: "tab", in: "a\tb", want: `a\tb`},
		{name: "C1 CSI", in: "a\u009b31mb", want: `a\u009b31mb`},
		{name: "line separator", in: "a\u2028b", want: `a\u2028b`},
		{name: "bidi override", in: "a\u202eb", want: `a\u202eb`},
		{name: "not UTF-8", in: "a\xffb", want: `a\xffb`},
		{name: "printable unicode kept", in: "naïve → ok", want: "naïve → ok"},
		{name: "already escaped stays", in: `a\x1bb\n`, want: `a\x1bb\n`},
		{name: "20 MB value keeps head and cause", in: "recording rollout r1: " + big + ": OOM command not allowed when used memory > 'maxmemory'.",
			contains: []string{"recording rollout r1: aaa", "bytes cut", "OOM command not allowed when used memory > 'maxmemory'."}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := Line(c.in)
			if n := utf8.RuneCountInString(got); n > MaxLine+40 {
				t.Fatalf("Line is %d runes", n)
			}
			if strings.ContainsFunc(got, func(r rune) bool { return r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) }) {
				t.Fatalf("Line(%.40q) = %.80q holds a control character", c.in, got)
			}
			if c.want != "" && got != c.want {
				t.Fatalf("Line(%.40q) = %.200q, want %q", c.in, got, c.want)
			}
			for _, w := range c.contains {
				if !strings.Contains(got, w) {
					t.Fatalf("Line(...) = %.200q..., want it to contain %q", got, w)
				}
			}
		})
	}
}

func TestQuoteAndCut(t *testing.T) {
	t.Parallel()
	big := strings.Repeat("é", 1000)
	cases := []struct{ name, got, want string }{
		{"quote short", Quote("a\x1b", MaxQuoted), `"a\x1b"`},
		{"quote long", Quote(big, 3), `"ééé"… (2000 bytes)`},
		{"quote exact", Quote("abc", 3), `"abc"`},
		{"cut short", Cut("a\tb", 10), `a\tb`},
		{"cut long", Cut(big, 4), "ééé…"},
		{"cut escape not split", Cut("ab\x1bcd", 4), "ab…"},
		{"cell", Cell("prod-\x1b]0;owned\x07"), `prod-\x1b]0;owned\x07`},
	}
	for _, c := range cases {
		if c.got != c.want {
			t.Errorf("%s: got %q, want %q", c.name, c.got, c.want)
		}
	}
}
