package api

import (
	"strings"
	"testing"
)

func TestParseVersion(t *testing.T) {
	tests := []struct {
		in      string
		want    string // Version.String(); "" when an error is expected
		wantErr bool
	}{
		{in: "0.5.7", want: "0.5.7"},
		{in: "v0.5.7", want: "0.5.7"},
		{in: "V0.5.7", want: "0.5.7"},
		{in: "0.5.10", want: "0.5.10"},
		{in: "0.5.7-rc1", want: "0.5.7-rc1"},
		{in: "0.6.0-dev", want: "0.6.0-dev"},
		{in: "v0.6.0 (git:abc)", want: "0.6.0"},
		{in: "0.5.7(git:abc)", want: "0.5.7"},
		{in: " 0.5.8 ", want: "0.5.8"},
		{in: "\t0.5.8\n", want: "0.5.8"},
		{in: "0.5", want: "0.5.0"},
		{in: "1", want: "1.0.0"},
		{in: "0.5.7+build.5", want: "0.5.7"},
		{in: "", wantErr: true},
		{in: "   ", wantErr: true},
		{in: "v", wantErr: true},
		{in: "unknown", wantErr: true},
		{in: "1.x", wantErr: true},
		{in: "0.5.7.1", wantErr: true},
		{in: "0..7", wantErr: true},
		{in: "-rc1", wantErr: true},
		{in: "(git:abc)", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			v, err := ParseVersion(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseVersion(%q) = %v, want an error", tt.in, v)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseVersion(%q): %v", tt.in, err)
			}
			if got := v.String(); got != tt.want {
				t.Errorf("ParseVersion(%q) = %s, want %s", tt.in, got, tt.want)
			}
			if v.Raw != tt.in {
				t.Errorf("Raw = %q, want the input %q", v.Raw, tt.in)
			}
		})
	}
}

func TestVersionCompare(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"0.5.7", "0.5.7", 0},
		{"v0.5.7", "0.5.7", 0},
		{"0.5", "0.5.0", 0},
		{"0.5.7 (git:abc)", "0.5.7", 0},
		{"0.5.7+meta", "0.5.7", 0},
		{"0.5.10", "0.5.7", 1}, // numeric, not lexical
		{"0.5.7", "0.5.10", -1},
		{"0.10.0", "0.9.9", 1},
		{"1.0.0", "0.99.99", 1},
		{"0.5.6", "0.5.7", -1},
		{"0.5.7-rc1", "0.5.7", -1}, // a pre-release sorts below its release
		{"0.5.7", "0.5.7-rc1", 1},
		{"0.5.7-rc1", "0.5.7-rc2", -1},
		{"0.5.7-rc2", "0.5.7-rc1", 1},
		{"0.5.7-rc1", "0.5.6", 1},
		{"0.6.0-dev", "0.5.7", 1},
	}
	for _, tt := range tests {
		t.Run(tt.a+"_vs_"+tt.b, func(t *testing.T) {
			a, err := ParseVersion(tt.a)
			if err != nil {
				t.Fatal(err)
			}
			b, err := ParseVersion(tt.b)
			if err != nil {
				t.Fatal(err)
			}
			if got := a.Compare(b); got != tt.want {
				t.Errorf("Compare(%s, %s) = %d, want %d", tt.a, tt.b, got, tt.want)
			}
			if got := b.Compare(a); got != -tt.want {
				t.Errorf("Compare(%s, %s) = %d, want %d (antisymmetry)", tt.b, tt.a, got, -tt.want)
			}
			if got := a.Less(b); got != (tt.want < 0) {
				t.Errorf("Less(%s, %s) = %v", tt.a, tt.b, got)
			}
		})
	}
}

func TestVMMGate(t *testing.T) {
	tests := []struct {
		raw        string
		wantOK     bool
		wantReason string // substring of the reason when refused
	}{
		{raw: "0.5.7", wantOK: true},
		{raw: "v0.5.7", wantOK: true},
		{raw: "0.5.8", wantOK: true},
		{raw: " 0.5.8 ", wantOK: true},
		{raw: "0.5.10", wantOK: true},
		{raw: "v0.5.10 (git:9f1c2ab)", wantOK: true},
		{raw: "v0.6.0 (git:abc)", wantOK: true},
		{raw: "0.6.0-dev", wantOK: true},
		{raw: "1.0", wantOK: true},
		{raw: "0.5.7-rc1", wantReason: "below 0.5.7"},
		{raw: "0.5.6", wantReason: "below 0.5.7"},
		{raw: "v0.5.5", wantReason: "below 0.5.7"},
		{raw: "0.4.2", wantReason: "below 0.5.7"},
		{raw: "0.5", wantReason: "below 0.5.7"},
		{raw: "", wantReason: "unknown"},
		{raw: "  ", wantReason: "unknown"},
		{raw: "unknown", wantReason: "unknown"},
		{raw: "1.x", wantReason: "unknown"},
		{raw: "garbled!", wantReason: "unknown"},
	}
	for _, tt := range tests {
		t.Run(tt.raw, func(t *testing.T) {
			ok, reason := VMMGate(tt.raw)
			if ok != tt.wantOK {
				t.Fatalf("VMMGate(%q) ok = %v (reason %q), want %v", tt.raw, ok, reason, tt.wantOK)
			}
			if ok {
				if reason != "" {
					t.Errorf("VMMGate(%q) reason = %q, want empty when ok", tt.raw, reason)
				}
				return
			}
			if !strings.Contains(reason, tt.wantReason) {
				t.Errorf("VMMGate(%q) reason = %q, want it to contain %q", tt.raw, reason, tt.wantReason)
			}
		})
	}
}
