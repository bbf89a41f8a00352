package plan

import (
	"math"
	"strings"
	"testing"

	"github.com/phalafleet/rollout/internal/textsafe/textsafetest"
)

// TestHostileFiles feeds Parse files built to break its error lines or the
// rollout id: each must give one "FILE:LINE: ..." line of bounded length,
// without control characters, that names the key.
func TestHostileFiles(t *testing.T) {
	t.Parallel()
	const head = "name: a\nselector:\n  all: true\ntarget:\n  kms_urls: [\"https://kms.example\"]\n" // lines 1-5
	big := strings.Repeat("a", 20<<20)                                                               // the 20 MB file
	mid := strings.Repeat("a", 2<<20)                                                                // enough for the other rows, and quicker under -race
	cases := []struct {
		name string
		yaml string
		want []string // parts of the error line, in order
	}{
		{"rate .inf", head + "rate:\n  per_second: .inf\n", []string{"bad.yaml:7: rate.per_second: expected a finite number, got .inf"}},
		{"rate .nan", head + "rate:\n  per_minute: .NaN\n", []string{"bad.yaml:7: rate.per_minute: expected a finite number, got .NaN"}},
		{"rate -.inf", head + "rate:\n  per_second: -.Inf\n", []string{"bad.yaml:7: rate.per_second: expected a finite number, got -.Inf"}},
		{"stage percent .nan", head + "stages:\n  - 1\n  - {percent: .nan}\n", []string{"bad.yaml:8: stages[1].percent: expected a finite number, got .nan"}},
		{"start_at words", head + "schedule:\n  start_at: tomorrow\n",
			[]string{`bad.yaml:7: schedule.start_at: expected an RFC 3339 time such as 2026-07-01T09:00:00Z, got the string "tomorrow"`}},
		{"end_at out of range", head + "schedule:\n  end_at: 2025-13-45T99:00:00Z\n",
			[]string{`bad.yaml:7: schedule.end_at: expected an RFC 3339 time such as 2026-07-01T09:00:00Z, got the string "2025-13-45T99:00:00Z" (month out of range)`}},
		{"start_at offset the hash cannot encode", head + "schedule:\n  start_at: 2025-01-01T00:00:00+24:00\n",
			[]string{`bad.yaml:7: schedule.start_at: `, `2025-01-01T00:00:00+24:00`}},
		{"20 MB name", "name: " + big + "\nselector: {all: true}\n", []string{`bad.yaml:1: name "aaaa`, `"… (20971520 bytes) must be 1-48 lowercase letters`}},
		{"2 MB url", "name: a\nselector: {all: true}\ntarget:\n  kms_urls: [\"https://k/" + mid + " x\"]\n", []string{`bad.yaml:4: target.kms_urls[0]: "https://k/aaa`, `(2097164 bytes) contains a space`}},
		{"2 MB selector item twice", "name: a\nselector:\n  names: [" + mid + ", " + mid + "]\n", []string{`bad.yaml:3: selector.names lists "aaa`, `(2097152 bytes) twice (first on line 3)`}},
		{"2 MB string for a number", head + "retry:\n  max_attempts: " + mid + "\n", []string{`bad.yaml:7: retry.max_attempts: expected a whole number, got the string "aaa`, `… (2097152 bytes)`}},
		{"terminal escape in name", "name: \"a\\e[31mred\\r\\0x\"\n", []string{`bad.yaml:1: name "a\x1b[31mred\r\x00x" must be`}},
		{"escape in a timezone", head + "schedule:\n  windows:\n    - {cron: \"0 2 * * *\", duration: 1h, timezone: \"\\e[2J\"}\n",
			[]string{`bad.yaml:8: schedule.windows[0]: unknown timezone "\x1b[2J"`}},
		{"escape in an unknown key", head + "\"\\e]0;x\\a\": 1\n", []string{`bad.yaml:6: unknown key "\x1b]0;x\a"`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse("bad.yaml", []byte(c.yaml))
			if err == nil {
				t.Fatal("accepted")
			}
			textsafetest.Check(t, err.Error(), c.want...)
		})
	}
}

// TestHashNeverIgnoresAnError: a File holding a value JSON cannot encode
// (Parse rejects those) must not hash like every other such File.
func TestHashNeverIgnoresAnError(t *testing.T) {
	t.Parallel()
	f, err := Parse("h.yaml", []byte("name: a\nselector: {all: true}\ntarget: {kms_urls: []}\nrate: {per_second: 5}\n"))
	if err != nil {
		t.Fatal(err)
	}
	f.Rate.PerSecond = math.Inf(1)
	defer func() {
		if recover() == nil {
			t.Fatal("Hash of a File with +Inf returned a hash")
		}
	}()
	f.Hash()
}
