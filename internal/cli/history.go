package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/phalafleet/rollout/internal/store"
	"github.com/phalafleet/rollout/internal/textsafe"
)

// resolve turns a command's rollout argument into a rollout id: an id as
// it is; else a rollout file's name, when one rollout (a family root) has
// that name, is its latest run. A name several rollouts have (the file
// was edited, which gives a new id) is an error listing them.
func resolve(ctx context.Context, st *store.Store, cmd, arg string) (string, error) {
	_, err := st.Get(ctx, arg)
	if !errors.Is(err, store.ErrNotFound) {
		return arg, err
	}
	root, members, rerr := familyByName(ctx, st, cmd, arg)
	if rerr != nil {
		return "", rerr
	}
	if root == "" {
		return "", fmt.Errorf("%s: %w: %s (no rollout has that id or name; rollout list shows them)", cmd, store.ErrNotFound, arg)
	}
	for _, r := range members { // newest first
		if r.RollbackOf == "" {
			return r.ID, nil
		}
	}
	return root, nil
}

// familyByName is the family whose root is arg (an id) or whose root's
// name is arg: the root and every member, newest first. root is "" when
// none matches.
func familyByName(ctx context.Context, st *store.Store, cmd, arg string) (root string, members []*store.Rollout, err error) {
	all, err := st.List(ctx)
	if err != nil {
		return "", nil, err
	}
	var roots []*store.Rollout
	for _, r := range all {
		if r.ID == arg {
			roots = []*store.Rollout{{ID: store.Family(r.ID)}}
			break
		}
		if r.ID == r.Family && r.Name == arg {
			roots = append(roots, r)
		}
	}
	switch len(roots) {
	case 0:
		return "", nil, nil
	case 1:
	default:
		var c []string
		for _, r := range roots {
			c = append(c, fmt.Sprintf("%s (created %s)", r.ID, r.CreatedAt.UTC().Format(time.RFC3339)))
		}
		return "", nil, fmt.Errorf("%s: %d rollouts are named %q: %s; give the id", cmd, len(roots), arg, strings.Join(c, ", "))
	}
	root = roots[0].ID
	for _, r := range all {
		if store.Family(r.ID) == root {
			members = append(members, r)
		}
	}
	return root, members, nil
}

// openOne is open for a command on one rollout given by id or name.
func (c *redisCmd) openOne(ctx context.Context, e *Env, args []string) (string, *store.Store, func(), error) {
	pos, st, done, err := c.open(ctx, e, args, 1)
	if err != nil {
		return "", nil, nil, err
	}
	id, err := resolve(ctx, st, c.fs.Name(), pos[0])
	if err != nil {
		done()
		return "", nil, nil, err
	}
	return id, st, done, nil
}

// History is `history -o json`.
type History struct {
	Root     string   `json:"root"`
	Name     string   `json:"name"`
	Rollouts []Status `json:"rollouts"` // newest first
}

// runHistory shows a rollout with its runs and rollbacks, newest first.
func runHistory(ctx context.Context, e *Env, args []string) error {
	c := newRedisCmd("history", "table", "json")
	pos, st, closeRedis, err := c.open(ctx, e, args, 1)
	if err != nil {
		return err
	}
	defer closeRedis()
	arg := pos[0]
	if r, err := st.Get(ctx, arg); err == nil {
		arg = r.Family // a run or rollback's id shows its whole family
	}
	root, members, err := familyByName(ctx, st, "history", arg)
	if err != nil {
		return err
	}
	if root == "" {
		return fmt.Errorf("history: %w: %s (no rollout has that id or name; rollout list shows them)", store.ErrNotFound, pos[0])
	}
	h := History{Root: root, Rollouts: []Status{}}
	for _, r := range members {
		if r.ID == root {
			h.Name = r.Name
		}
		h.Rollouts = append(h.Rollouts, statusJSON(r))
	}
	if c.format() == "json" {
		return writeJSON(e.Stdout, h)
	}
	fmt.Fprintf(e.Stdout, "Rollout %s (%s): %d rollouts in its family, newest first\n\n", root, textsafe.Cell(h.Name), len(members))
	tw := tabwriter.NewWriter(e.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tKIND\tSTATE\tPATCHED\tFAILED\tCANCELLED\tCREATED\tBY")
	for _, r := range members {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\t%d\t%d\t%s\t%s\n", r.ID, kind(r), r.State, r.Counts[store.Succeeded], toPatch(r),
			r.Counts[store.Failed], r.Counts[store.Cancelled], r.CreatedAt.Local().Format(time.RFC3339), textsafe.Cell(r.CreatedBy))
	}
	return tw.Flush()
}

// kind says what a member of a family is.
func kind(r *store.Rollout) string {
	switch {
	case r.RollbackOf != "":
		return "rollback of " + r.RollbackOf
	case r.RunOf != "":
		return "run of " + r.RunOf
	}
	return "rollout"
}
