package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/phalafleet/rollout/internal/api/sim"
	"github.com/phalafleet/rollout/internal/control"
	"github.com/phalafleet/rollout/internal/testutil"
)

// TestPruneAndNotificationsCommands: events lists the notifications with
// their target's host only; prune refuses without --older-than, leaves a
// rollout in its grace, and exports then prunes a finished one, whose
// report then says so.
func TestPruneAndNotificationsCommands(t *testing.T) {
	b := testutil.Setup(t, sim.FleetOptions{CVMs: 4, Seed: 2, OldVMMShare: 1e-9, UnknownVMMShr: 1e-9})
	p := b.Apply(t, fmt.Sprintf("name: pr\nselector: {all: true}\ntarget: {kms_urls: [%q]}\nnotify: [{url: \"http://127.0.0.1:1/hook/s3cr3tpath\"}]\n", newKMS))
	if _, err := runEnv(b, nil, "cancel", p.ID); err != nil {
		t.Fatal(err)
	}
	ctl := &control.Controller{Control: b.Control()}
	for range 2 { // cancels the CVMs, then settles
		if err := ctl.Step(context.Background(), p.ID, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	out, err := runEnv(b, nil, "events", p.ID)
	if err != nil || !strings.Contains(out, "notifications:") || !strings.Contains(out, "http://127.0.0.1:1 ") || strings.Contains(out, "s3cr3t") {
		t.Fatalf("events: %v\n%s", err, out)
	}
	if out, err := runEnv(b, nil, "events", p.ID, "--notifications", "-o", "json"); err != nil || strings.Contains(out, "s3cr3t") || !strings.Contains(out, `"event": "cancelled"`) {
		t.Fatalf("events --notifications -o json: %v\n%s", err, out)
	}
	if _, err := runEnv(b, nil, "prune"); err == nil || !strings.Contains(err.Error(), "--older-than is required") {
		t.Fatalf("prune without --older-than: %v", err)
	}
	if out, err := runEnv(b, nil, "prune", "--older-than", "1s"); err != nil || !strings.Contains(out, "pruned 0 rollouts") {
		t.Fatalf("prune within the grace: %v\n%s", err, out)
	}
	time.Sleep(1100 * time.Millisecond)
	dir := t.TempDir()
	out, err = runEnv(b, nil, "prune", "--older-than", "1s", "--grace", "1s", "--export", dir)
	if err != nil || !strings.Contains(out, p.ID) || !strings.Contains(out, "pruned 1 rollouts") {
		t.Fatalf("prune: %v\n%s", err, out)
	}
	for _, ext := range []string{"csv", "json"} {
		b, err := os.ReadFile(filepath.Join(dir, p.ID+"."+ext))
		if err != nil || strings.Count(string(b), "cvm_") < 4 {
			t.Fatalf("export %s: %v\n%s", ext, err, b)
		}
	}
	if _, err := runEnv(b, nil, "report", p.ID); err == nil || !strings.Contains(err.Error(), "was pruned") {
		t.Fatalf("report of a pruned rollout: %v", err)
	}
	if out, err := runEnv(b, nil, "status", p.ID); err != nil || !strings.Contains(out, "cancelled") {
		t.Fatalf("status of a pruned rollout: %v\n%s", err, out)
	}
}
