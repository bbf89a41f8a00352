package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// NewRollout is what apply records.
type NewRollout struct {
	ID, Name, Spec, SpecHash, CreatedBy string
	State                               RolloutState // running or scheduled
	Reason                              string
	Stages                              []NewStage // len >= 1
	CVMs                                []NewCVM   // every selected CVM, in plan order
	RunOf, RollbackOf                   string
	// Budget, when set, is the failure budget; BudgetMax, when set, gives
	// its MaxFailed from the number of CVMs to patch once claims are
	// settled (a max_failed given as a share).
	Budget     *Budget
	BudgetMax  func(toPatch int) int
	OwnTargets bool // each CVM has its own target (a rollback)
	Repeat     bool // schedule.repeat: the controller starts runs
	// AllowOverlap skips the CVMs another active rollout holds instead of
	// refusing the rollout.
	AllowOverlap bool
	// Event is the audit line written with the record ("" for none).
	Event string
	// Lease is the token of a reservation that already holds this
	// rollout's creation lease (a run, see ReserveRun).
	Lease string
	// Notify are the notification targets of its events (outbox.go).
	Notify []NotifyTarget
}

// NewStage is one stage of a new rollout.
type NewStage struct {
	Name   string
	Bake   time.Duration
	Manual bool
}

// NewCVM is one CVM's starting record.
type NewCVM struct {
	ID, Name string
	Stage    int
	State    CVMState // pending, unchanged or skipped
	Reason   string
	Target   string // JSON of a per-CVM target that replaces the file's; "" for none
}

// Created is what Create did.
type Created struct {
	New bool // false: the rollout was recorded already (apply continues it)
	// Overlap is how many CVMs were skipped because another active
	// rollout holds them (AllowOverlap), by that rollout.
	Overlap map[string]int
}

// Create records a rollout. It is idempotent: for a rollout already fully
// recorded it changes nothing and returns New=false, so a re-run of apply
// continues the rollout. A crash part-way leaves it unready, and the next
// Create writes it again from scratch (no task is queued before ready).
//
// Before it writes, it takes the rollout's creation lease, which is refused
// while another member of its family is going (a BusyError: a family works
// one member at a time), and claims the CVMs it will patch (an
// OverlapError when another active rollout holds any, unless
// AllowOverlap). Two callers at once do not both write: the second waits
// for the first to finish and reports the rollout as existing. A writer
// that dies holds the lease for createLease at most.
func (s *Store) Create(ctx context.Context, r NewRollout, now time.Time) (Created, error) {
	key := RolloutKey(r.ID)
	token, err := s.claimCreation(ctx, r.ID, r.Lease)
	if err != nil || token == "" {
		return Created{}, err
	}
	defer releaseLeaseScript.Run(context.WithoutCancel(ctx), s.rdb, []string{CreatingKey(r.ID)}, token)
	// Every write below goes through leased: a writer that stalled past its
	// lease (and was replaced) writes nothing more.
	leased := func(write func(redis.Pipeliner)) error {
		return s.leased(ctx, r.ID, token, write)
	}
	// An earlier writer that died part-way left records to overwrite
	// whole; a fresh rollout has none, and skips a DEL per CVM.
	leftovers, err := s.rdb.Exists(ctx, key).Result()
	if err != nil {
		return Created{}, err
	}
	out := Created{New: true}
	// Claims first where their answer changes the records (AllowOverlap
	// skips what another rollout holds). Otherwise they run beside the
	// record writes, which is most of an apply's Redis time: nothing is
	// ready (or queued) before both are done, and a refused rollout's
	// records are taken back below.
	claimed := make(chan error, 1)
	if r.AllowOverlap {
		owner, err := s.claim(ctx, r)
		if err != nil {
			return Created{}, err
		}
		out.Overlap = byHolder(owner)
		claimed <- nil
	} else {
		go func() {
			_, err := s.claim(ctx, r)
			claimed <- err
		}()
	}
	wroteRecords := false
	defer func() {
		if !wroteRecords {
			<-claimed // no claim outlives Create
		}
	}()
	counts := map[CVMState]int{}
	stageCounts := map[string]int{}
	stageSize := make([]int, len(r.Stages))
	for _, c := range r.CVMs {
		counts[c.State]++
		stageCounts[stageCountField(c.Stage, c.State)]++
		if c.State == Pending {
			stageSize[c.Stage]++
		}
	}
	ts := now.UTC().Format(time.RFC3339Nano)
	meta := map[string]any{
		"id": r.ID, "name": r.Name, "spec": r.Spec, "spec_hash": r.SpecHash, "created_at": ts, "updated_at": ts,
		"created_by": r.CreatedBy, "state": string(r.State), "reason": r.Reason, "total": len(r.CVMs),
		"stages": len(r.Stages), "stage": 0, "dispatched": -1, "family": Family(r.ID),
	}
	for _, st := range CVMStates {
		meta[countField(st)] = counts[st]
	}
	for i, stg := range r.Stages {
		meta[stageField(i, "name")] = stg.Name
		meta[stageField(i, "size")] = stageSize[i]
		meta[stageField(i, "bake")] = stg.Bake.String()
		if stg.Manual {
			meta[stageField(i, "promote")] = "manual"
		}
		for _, st := range CVMStates {
			meta[stageCountField(i, st)] = stageCounts[stageCountField(i, st)]
		}
	}
	for k, v := range map[string]string{"run_of": r.RunOf, "rollback_of": r.RollbackOf} {
		if v != "" {
			meta[k] = v
		}
	}
	if r.OwnTargets {
		meta["own_targets"] = "1"
	}
	if n := encodeTargets(r.Notify); n != "" {
		meta["notify"] = n
	}
	if b := r.Budget; b != nil {
		maxFailed := b.MaxFailed
		if r.BudgetMax != nil {
			maxFailed = r.BudgetMax(counts[Pending])
		}
		meta["budget_max_failed"], meta["budget_min_executed"], meta["budget_action"] = maxFailed, b.MinExecuted, string(b.Action)
	}
	if err := leased(func(pipe redis.Pipeliner) {
		pipe.Del(ctx, key, OrderKey(r.ID))
		for i := range r.Stages {
			pipe.Del(ctx, StageKey(r.ID, i))
		}
		pipe.HSet(ctx, key, meta)
	}); err != nil {
		return Created{}, err
	}
	for start := 0; start < len(r.CVMs); start += chunk {
		part := r.CVMs[start:min(start+chunk, len(r.CVMs))]
		ids := make([]any, len(part))
		stageIDs := map[int][]any{}
		if err := leased(func(pipe redis.Pipeliner) {
			for i, c := range part {
				ids[i] = c.ID
				rec := []any{"name", c.Name, "stage", c.Stage, "state", string(c.State)}
				if c.Reason != "" {
					rec = append(rec, "reason", c.Reason)
				}
				if c.Target != "" {
					rec = append(rec, "target", c.Target)
				}
				if c.State.Terminal() {
					rec = append(rec, "finished_at", ts)
				}
				if leftovers > 0 {
					pipe.Del(ctx, CVMKey(r.ID, c.ID))
				}
				pipe.HSet(ctx, CVMKey(r.ID, c.ID), rec...)
				if c.State == Pending {
					stageIDs[c.Stage] = append(stageIDs[c.Stage], c.ID)
				}
			}
			pipe.RPush(ctx, OrderKey(r.ID), ids...)
			for st, l := range stageIDs {
				pipe.RPush(ctx, StageKey(r.ID, st), l...)
			}
		}); err != nil {
			return Created{}, err
		}
	}
	wroteRecords = true
	if err := <-claimed; err != nil {
		if derr := s.unwrite(context.WithoutCancel(ctx), r); derr != nil {
			return Created{}, errors.Join(err, derr)
		}
		return Created{}, err
	}
	// The fleet-wide sets first (they are supersets: an entry whose
	// rollout is not ready is settled by the controller), then ready and
	// the audit line in one MULTI, so no crash leaves a ready rollout
	// that nothing lists or drives.
	pipe := s.rdb.Pipeline()
	pipe.ZAdd(ctx, IndexKey, redis.Z{Score: float64(now.UnixMilli()), Member: r.ID})
	pipe.HSet(ctx, ActiveKey, r.ID, newToken())
	if r.Repeat {
		pipe.SAdd(ctx, RepeatingKey, r.ID)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return Created{}, err
	}
	err = leased(func(pipe redis.Pipeliner) {
		pipe.HSet(ctx, key, "ready", "1")
		if r.Repeat {
			pipe.HSet(ctx, key, "repeat", "1")
		}
		if r.RollbackOf != "" { // same family, same slot
			pipe.HSet(ctx, RolloutKey(r.RollbackOf), "latest_rollback", r.ID)
		}
		if r.Event != "" {
			pushEvent(ctx, pipe, r.ID, now, r.CreatedBy, r.Event)
		}
		if len(r.Notify) > 0 { // applied (rollback_started), with ready
			notifyScript.Eval(ctx, pipe, []string{key}, ts, "applied", "", r.Reason)
		}
	})
	if err != nil {
		return Created{}, err
	}
	return out, nil
}

// unwrite deletes what Create wrote of a rollout that is not ready (its
// claims were refused), while the creation lease is still held.
func (s *Store) unwrite(ctx context.Context, r NewRollout) error {
	keys := []string{RolloutKey(r.ID), OrderKey(r.ID)}
	for i := range r.Stages {
		keys = append(keys, StageKey(r.ID, i))
	}
	for start := 0; start < len(r.CVMs) || len(keys) > 0; start += chunk {
		for _, c := range r.CVMs[min(start, len(r.CVMs)):min(start+chunk, len(r.CVMs))] {
			keys = append(keys, CVMKey(r.ID, c.ID))
		}
		if err := s.rdb.Del(ctx, keys...).Err(); err != nil {
			return err
		}
		keys = keys[:0]
	}
	return nil
}

// claim claims the CVMs r will patch (see claimScript), in chunks of
// claimChunk (each chunk is atomic: of two applies racing, one wins each
// CVM). With AllowOverlap the CVMs another rollout holds turn skipped in
// r.CVMs; without it any overlap gives back what this call claimed and is
// an OverlapError.
//
// It returns the CVMs held by others, each with its holder.
func (s *Store) claim(ctx context.Context, r NewRollout) (map[string]string, error) {
	var ids []string
	for _, c := range r.CVMs {
		if c.State == Pending {
			ids = append(ids, c.ID)
		}
	}
	mode := "strict"
	if r.AllowOverlap {
		mode = "skip"
	}
	owner := map[string]string{}
	for start := 0; start < len(ids); start += claimChunk {
		part := ids[start:min(start+claimChunk, len(ids))]
		args := make([]any, 0, 4+len(part))
		args = append(args, r.ID, Family(r.ID), mode, newToken())
		for _, id := range part {
			args = append(args, id)
		}
		res, err := claimScript.Run(ctx, s.rdb, []string{OwnersKey, ActiveKey}, args...).StringSlice()
		if err != nil {
			return nil, fmt.Errorf("claiming CVMs: %w", err)
		}
		for i := 0; i+1 < len(res); i += 2 {
			owner[res[i]] = res[i+1]
		}
		if len(res) > 0 && mode == "strict" {
			break
		}
	}
	if len(owner) > 0 && mode == "strict" {
		if err := s.ReleaseClaims(context.WithoutCancel(ctx), r.ID, ids); err != nil {
			return nil, err
		}
		return nil, &OverlapError{ID: r.ID, Owners: byHolder(owner), Overlap: len(owner)}
	}
	for i := range r.CVMs {
		if o, ok := owner[r.CVMs[i].ID]; ok {
			r.CVMs[i].State, r.CVMs[i].Reason, r.CVMs[i].Stage = Skipped, "in active rollout "+o+" (apply --allow-overlap)", -1
		}
	}
	return owner, nil
}

// byHolder counts the CVMs of owner (cvm -> holder) by holder; nil for none.
func byHolder(owner map[string]string) map[string]int {
	if len(owner) == 0 {
		return nil
	}
	n := map[string]int{}
	for _, o := range owner {
		n[o]++
	}
	return n
}

// claimChunk bounds one claim script's work (a script blocks Redis).
const claimChunk = 20000

// ClaimFree claims for an existing rollout the CVMs of cvms no other
// active rollout holds (retry --failed: what it retries may belong to
// another rollout since it ended), and returns the others with their
// holders.
func (s *Store) ClaimFree(ctx context.Context, id string, cvms []string) (map[string]string, error) {
	cs := make([]NewCVM, len(cvms))
	for i, c := range cvms {
		cs[i] = NewCVM{ID: c, State: Pending}
	}
	return s.claim(ctx, NewRollout{ID: id, CVMs: cs, AllowOverlap: true})
}

// ReleaseClaims gives back the claims rollout id holds on cvms.
func (s *Store) ReleaseClaims(ctx context.Context, id string, cvms []string) error {
	_, err := s.release(ctx, id, "", cvms, false)
	return err
}

// release runs releaseClaimsScript over cvms in chunks of claimChunk; leave takes
// id out of the active hash with the last chunk. It reports false when a
// token was given and id was activated again since (nothing more released).
func (s *Store) release(ctx context.Context, id, token string, cvms []string, leave bool) (bool, error) {
	for start := 0; ; start += claimChunk {
		part := cvms[min(start, len(cvms)):min(start+claimChunk, len(cvms))]
		last := start+claimChunk >= len(cvms)
		args := make([]any, 0, 3+len(part))
		args = append(args, id, token, btoi(leave && last))
		for _, c := range part {
			args = append(args, c)
		}
		ok, err := releaseClaimsScript.Run(ctx, s.rdb, []string{OwnersKey, ActiveKey}, args...).Int()
		if err != nil || ok == 0 || last {
			return ok == 1, err
		}
	}
}

// Owner is the active rollout that holds a CVM, or "".
func (s *Store) Owner(ctx context.Context, cvm string) (string, error) {
	o, err := s.rdb.HGet(ctx, OwnersKey, cvm).Result()
	if err == redis.Nil {
		return "", nil
	} else if err != nil {
		return "", err
	}
	if ok, err := s.rdb.HExists(ctx, ActiveKey, o).Result(); err != nil || !ok {
		return "", err
	}
	return o, nil
}

// createLease bounds how long a dead writer blocks the creation of its
// rollout (and its family); a live one renews it with every chunk of
// records.
const createLease = 30 * time.Second

// errLeaseLost: this writer stalled past its creation lease and another
// process took over the rollout's creation.
var errLeaseLost = errors.New("another process took over recording this rollout (this one stalled past its lease); run apply again")

func newToken() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// claimCreation takes the creation lease of rollout id and returns its
// token, or waits until the rollout is ready (token "") or the lease of a
// dead writer runs out (then takes it). token, when set, is a
// reservation's lease to take over.
func (s *Store) claimCreation(ctx context.Context, id, token string) (string, error) {
	if token == "" {
		token = newToken()
	}
	for {
		res, err := leaseScript.Run(ctx, s.rdb, []string{CreatingKey(id), RolloutKey(id), GoingKey(id)},
			token, createLease.Milliseconds(), id, Family(id)).Text()
		switch {
		case err != nil:
			return "", err
		case res == "ok":
			return token, nil
		case res == "ready":
			return "", nil
		case strings.HasPrefix(res, "busy:"):
			return "", &BusyError{Op: "apply", ID: id, Other: strings.TrimPrefix(res, "busy:")}
		}
		select { // "held": another process is recording it
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// leased runs write in a MULTI that commits only while this writer still
// holds the creation lease (WATCH on it: a lease that expired or changed
// hands aborts the transaction), and renews the lease.
func (s *Store) leased(ctx context.Context, id, token string, write func(redis.Pipeliner)) error {
	lease := CreatingKey(id)
	err := s.rdb.Watch(ctx, func(tx *redis.Tx) error {
		if cur, err := tx.Get(ctx, lease).Result(); err == redis.Nil || err == nil && cur != token {
			return errLeaseLost
		} else if err != nil {
			return err
		}
		cmds, err := tx.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
			write(pipe)
			pipe.PExpire(ctx, lease, createLease)
			return nil
		})
		return txErr(cmds, err)
	}, lease)
	if errors.Is(err, redis.TxFailedErr) {
		return errLeaseLost
	}
	return err
}

// ReserveRun reserves run n+1 of root, where n is the latest run number the
// caller saw (see reserveRunScript); retake instead takes over a lapsed
// reservation of run n. It returns the lease token to pass to Create as
// NewRollout.Lease; ok false means the runs moved on (read again).
func (s *Store) ReserveRun(ctx context.Context, root string, n int, run string, repeat, retake bool) (token string, ok bool, err error) {
	token = newToken()
	res, err := reserveRunScript.Run(ctx, s.rdb, []string{RolloutKey(root), GoingKey(root), CreatingKey(run)},
		n, run, btoi(repeat), token, btoi(retake), createLease.Milliseconds(), root).Result()
	if err != nil {
		return "", false, err
	}
	switch v := res.(type) {
	case int64:
		return token, v == 1, nil
	case string:
		return "", false, &NotAllowedError{Op: "run", ID: root, Why: "no new run starts: " + v}
	}
	return "", false, fmt.Errorf("reserve run: unexpected reply %v", res)
}

func btoi(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// RunID names run n (n >= 2) of a repeating rollout; run 1 is the rollout itself.
func RunID(root string, n int) string { return root + "-run" + strconv.Itoa(n) }

// RollbackID names rollback n of a rollout: "<id>-rollback", then
// "<id>-rollback2", ... (a cancelled rollback is finished by the next).
func RollbackID(id string, n int) string {
	if n <= 1 {
		return id + "-rollback"
	}
	return id + "-rollback" + strconv.Itoa(n)
}
