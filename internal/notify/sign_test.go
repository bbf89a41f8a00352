package notify

import (
	"testing"
	"time"
)

// TestSignKnownAnswer pins the signature to the scheme the README's
// openssl and Python snippets compute (their output for these inputs).
func TestSignKnownAnswer(t *testing.T) {
	got := Sign("demo-secret-value", time.Unix(1764592174, 0), []byte(`{"id":"x","event":"paused"}`))
	if want := "t=1764592174,v1=fb1f201f2e820e40b3a72ddb881ac104a367ad49349d99eaef3cb94d0776a8d7"; got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
	if err := Verify("demo-secret-value", got, []byte(`{"id":"x","event":"paused"}`), time.Unix(1764592174, 0), time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := Verify("demo-secret-value", got, []byte(`{"id":"x","event":"paused"}`), time.Unix(1764592174+600, 0), time.Minute); err == nil {
		t.Fatal("an old signature verified")
	}
}
