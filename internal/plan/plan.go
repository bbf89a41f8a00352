package plan

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/phalafleet/rollout/internal/api"
	"golang.org/x/sync/errgroup"
)

// Action is what a rollout will do to one CVM.
type Action string

const (
	Patch     Action = "patch"
	Unchanged Action = "unchanged" // already at target: no PATCH
	Skip      Action = "skip"      // not patchable; Reason says why
	// Unknown: the current config could not be read (Reason says why), so
	// the plan cannot tell patch from unchanged. Never patched or queued.
	Unknown Action = "unknown"
)

// Item is one selected CVM in a plan.
type Item struct {
	CVMID   string   `json:"cvm_id"`
	Name    string   `json:"name"`
	Node    string   `json:"node"`
	Region  string   `json:"region"`
	Status  string   `json:"status"`
	VMM     string   `json:"vmm_version"`
	Action  Action   `json:"action"`
	Reason  string   `json:"reason,omitempty"`
	KMS     []string `json:"current_kms_urls,omitempty"`
	Gateway []string `json:"current_gateway_urls,omitempty"`
	Stage   int      `json:"stage"`
	// Target, when set, replaces the file's target for this CVM (a
	// rollback restores each CVM's own before-image).
	Target *Target `json:"target,omitempty"`
}

// Plan is what applying a rollout file would do, CVM by CVM.
type Plan struct {
	ID       string         `json:"id"` // rollout id: name plus a hash of the file
	Name     string         `json:"name"`
	SpecHash string         `json:"spec_hash"`
	Items    []Item         `json:"items"`
	Counts   map[Action]int `json:"counts"`
	Stages   []Stage        `json:"stages"`
	// PausesAfter is the failure count that trips the failure budget
	// (max_failed+1), or 0 without a budget.
	PausesAfter int `json:"pauses_after_failures,omitempty"`
	// Hash covers the file and what the plan found for every CVM; apply
	// --plan-hash refuses to run if a fresh plan differs from the one shown.
	Hash string `json:"plan_hash"`
	File *File  `json:"-"`
	// RollbackOf and RunOf name the rollout this plan undoes or is a run
	// of; apply records them, and the family guard (control.busy) uses them.
	RollbackOf string `json:"rollback_of,omitempty"`
	RunOf      string `json:"run_of,omitempty"`
	// Family is the rollout whose file started it all (for a run, or a
	// rollback of it or of a run); empty for that rollout itself.
	Family string `json:"family,omitempty"`
}

// Reader is the part of the API a plan reads.
type Reader interface {
	ListCVMs(ctx context.Context) ([]api.CVM, error)
	GetNetworkConfig(ctx context.Context, id string) (*api.NetworkConfig, error)
}

// DefaultReadConcurrency bounds parallel network-config reads.
const DefaultReadConcurrency = 32

// Options tune Build; zero values are the defaults.
type Options struct {
	Concurrency int // parallel network-config reads (DefaultReadConcurrency)
	// ReadTimeout bounds the wait for usable answers (DefaultReadTimeout):
	// see patience.
	ReadTimeout time.Duration
	// Pace, when set, paces every request of the plan (list pages and
	// retries included): package ratelimit's, from the file's rate section.
	Pace api.Pacer
}

// ID is the id of the rollout f's plan records: its name plus a hash of
// the file.
func (f *File) ID() string { return f.Name + "-" + f.Hash()[:8] }

// Build resolves f's selector against the API and reads the current network
// config of every selected, patchable CVM (at most concurrency reads at once).
func Build(ctx context.Context, r Reader, f *File, concurrency int) (*Plan, error) {
	return BuildWith(ctx, r, f, Options{Concurrency: concurrency})
}

// BuildWith is Build with options. Reads the API throttles or fails
// transiently are retried (see patience). A CVM whose config still cannot
// be read is Unknown; if no config at all could be read, or the list
// cannot be, Build fails.
func BuildWith(ctx context.Context, r Reader, f *File, o Options) (*Plan, error) {
	if o.Concurrency <= 0 {
		o.Concurrency = DefaultReadConcurrency
	}
	if o.Pace != nil {
		ctx = api.WithPacer(ctx, o.Pace)
	}
	pt := newPatience(ctx, o.ReadTimeout)
	defer pt.stop()
	var cvms []api.CVM
	err := pt.read(func(ctx context.Context) (err error) {
		cvms, err = r.ListCVMs(ctx)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listing CVMs: %w", err)
	}
	p := &Plan{Name: f.Name, File: f, Counts: map[Action]int{}}
	p.SpecHash = f.Hash()
	p.ID = f.ID()

	seen := map[string]bool{}
	unmatched := map[string]*api.CVM{} // in the workspace, not selected
	for i := range cvms {
		c := &cvms[i]
		if seen[c.ID] {
			continue
		}
		if !f.Selector.Matches(c) {
			unmatched[c.ID] = c
			continue
		}
		seen[c.ID] = true
		it := Item{CVMID: c.ID, Name: c.Name, Node: c.NodeName(), Region: c.NodeRegion(), Status: c.Status, VMM: c.VMMVersion(), Action: Patch}
		if ok, reason := api.VMMGate(it.VMM); !ok {
			it.Action, it.Reason = Skip, reason
		}
		p.Items = append(p.Items, it)
	}
	// Ids asked for by id that are not selected: either the workspace does
	// not have them, or they fail another condition of the selector.
	for _, id := range f.Selector.IDs {
		if seen[id.V] || contains(f.Selector.ExcludeIDs, id.V) {
			continue
		}
		seen[id.V] = true
		it := Item{CVMID: id.V, Action: Skip, Reason: "CVM not found"}
		if c := unmatched[id.V]; c != nil {
			it = Item{CVMID: c.ID, Name: c.Name, Node: c.NodeName(), Region: c.NodeRegion(), Status: c.Status, VMM: c.VMMVersion(),
				Action: Skip, Reason: "listed in selector.ids but fails another selector condition"}
		}
		p.Items = append(p.Items, it)
	}
	sort.Slice(p.Items, func(i, j int) bool { return p.Items[i].CVMID < p.Items[j].CVMID })

	g := errgroup.Group{}
	g.SetLimit(o.Concurrency)
	var mu sync.Mutex
	var toRead, answered int
	var lastErr error
	for i := range p.Items {
		it := &p.Items[i]
		if it.Action != Patch {
			continue
		}
		toRead++
		g.Go(func() error {
			var nc *api.NetworkConfig
			err := pt.read(func(ctx context.Context) (err error) {
				nc, err = r.GetNetworkConfig(ctx, it.CVMID)
				return err
			})
			switch {
			case err == nil:
				it.KMS, it.Gateway = nc.KMSURLs, nc.GatewayURLs
				if _, changed := f.Target.Diff(nc); !changed {
					it.Action = Unchanged
				}
			case api.StatusOf(err) == 404:
				it.Action, it.Reason = Skip, "CVM not found"
			case ctx.Err() != nil:
				return ctx.Err()
			default:
				// Neither patch nor unchanged: the worker would read it
				// again, but a plan must not promise a PATCH it has not
				// checked, nor change with the API's load.
				it.Action, it.Reason = Unknown, unreadable+err.Error()
				var ge *GaveUpError
				mu.Lock()
				if lastErr == nil || !errors.As(err, &ge) || ge.Last != nil {
					lastErr = err // one that says what the API answered, if any did
				}
				mu.Unlock()
				return nil
			}
			mu.Lock()
			answered++
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	if toRead > 0 && answered == 0 {
		return nil, fmt.Errorf("reading network configs: none of %d could be read: %w", toRead, lastErr)
	}
	p.Finish()
	return p, nil
}

// unreadable starts an Unknown item's Reason.
const unreadable = "current config unreadable: "

// ReadError is why an Unknown item's config could not be read: its Reason
// without the "current config unreadable: " in front.
func (it Item) ReadError() string { return strings.TrimPrefix(it.Reason, unreadable) }

// Finish counts the actions, assigns stages and computes the hash, once
// every item's action is known.
func (p *Plan) Finish() {
	if p.Counts == nil {
		p.Counts = map[Action]int{}
	}
	for _, it := range p.Items {
		p.Counts[it.Action]++
	}
	p.AssignStages()
	p.Hash = p.ComputeHash()
}

// Hash is a stable digest of the file's meaning (not its formatting), so the
// same rollout file always yields the same rollout id. It panics on a File
// that JSON cannot write (a NaN or infinite number): Parse rejects those, so
// such a File was built in code, and hashing what is left of it would give
// every such File the same id.
func (f *File) Hash() string {
	b, err := json.Marshal(f)
	if err != nil {
		panic(fmt.Sprintf("plan: hashing rollout file %s: %v", f.Path, err))
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Diff returns the PATCH body that moves cur to the target, with only the
// lists that differ set, and whether anything differs.
func (t Target) Diff(cur *api.NetworkConfig) (api.NetworkConfigUpdate, bool) {
	var upd api.NetworkConfigUpdate
	if k := t.KMS(); k != nil && !slices.Equal(k, cur.KMSURLs) {
		upd.KMSURLs = &k
	}
	if g := t.Gateway(); g != nil && !slices.Equal(g, cur.GatewayURLs) {
		upd.GatewayURLs = &g
	}
	upd.Restart = t.Restart
	return upd, upd.KMSURLs != nil || upd.GatewayURLs != nil
}

// Reached reports whether cur already holds every list the target sets.
func (t Target) Reached(cur *api.NetworkConfig) bool {
	_, changed := t.Diff(cur)
	return !changed
}

// AssignStages sizes the stages for the CVMs to patch and gives each its
// stage, in plan order (sorted by CVM id, so the same fleet gives the same
// stages). CVMs not to patch have stage -1.
func (p *Plan) AssignStages() {
	p.Stages = StagePlan(p.File.Stages, p.Counts[Patch], p.File.Bake)
	stage, used := 0, 0
	for i := range p.Items {
		it := &p.Items[i]
		if it.Action != Patch {
			it.Stage = -1
			continue
		}
		for used >= p.Stages[stage].Size && stage+1 < len(p.Stages) {
			stage, used = stage+1, 0
		}
		it.Stage = stage
		used++
	}
	if b := p.File.FailureBudget; b != nil {
		p.PausesAfter = b.Limit(p.Counts[Patch]) + 1
	}
}

// ComputeHash digests the file and each CVM's action, reason, current
// config and stage. An unknown CVM counts by its id and action only: its
// reason is an error text (request ids, timings) that differs every run.
func (p *Plan) ComputeHash() string {
	h := sha256.New()
	h.Write([]byte(p.SpecHash))
	for _, it := range p.Items {
		var b []byte
		if it.Action == Unknown {
			b, _ = json.Marshal([]any{it.CVMID, it.Action, it.Target})
		} else {
			b, _ = json.Marshal([]any{it.CVMID, it.Action, it.Reason, it.KMS, it.Gateway, it.Stage, it.Target})
		}
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// TargetOf builds a target from plain lists (nil: leave that list).
func TargetOf(kms, gateway []string, restart bool) Target {
	t := Target{Restart: restart}
	if kms != nil {
		l := make([]Str, len(kms))
		for i, v := range kms {
			l[i] = Str{V: v}
		}
		t.KMSURLs = &l
	}
	if gateway != nil {
		l := make([]Str, len(gateway))
		for i, v := range gateway {
			l[i] = Str{V: v}
		}
		t.GatewayURLs = &l
	}
	return t
}
