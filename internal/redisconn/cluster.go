package redisconn

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// newCluster opens a Redis Cluster from its URL (see newClient).
func newCluster(u *url.URL, pool int, tf tlsFiles) (redis.UniversalClient, error) {
	q := u.Query()
	if v := q.Get("cluster"); q.Has("cluster") && v != "true" && v != "1" {
		return nil, fmt.Errorf("cluster=%s: want cluster=true", v)
	}
	q.Del("cluster")
	u.RawQuery = q.Encode()
	if p := strings.Trim(u.Path, "/"); p != "" && p != "0" {
		return nil, fmt.Errorf("a Redis Cluster has db 0 only, not %s: drop /%s from the URL", p, p)
	}
	u.Path = ""
	opt, err := redis.ParseClusterURL(u.String())
	if err != nil {
		return nil, err
	}
	opt.PoolSize = max(opt.PoolSize, 256, pool) // per node
	opt.Protocol = 2
	opt.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	if !q.Has("max_retries") {
		opt.MaxRetries = -1
		// Every node's client: the cluster client's own loop would resend
		// a script whose connection broke (see noResend).
		opt.NewClient = func(o *redis.Options) *redis.Client {
			c := redis.NewClient(o)
			c.AddHook(noResend{})
			return c
		}
	}
	if opt.TLSConfig != nil {
		tf.apply(opt.TLSConfig)
	}
	return redis.NewClusterClient(opt), nil
}

// noResend keeps go-redis's cluster client from sending a script or a
// MULTI again after its connection broke mid-reply: it retries such errors
// (EOF, a reset, a read timeout) on the same node and then another, and a
// script that ran once must not run twice (see newClient). It hides the
// error's kind from the retry check and keeps its words. Redirects (MOVED,
// ASK), READONLY, TRYAGAIN and CLUSTERDOWN are Redis's answers, given
// before the command ran: those are still followed, and so is a dial
// error (nothing was sent).
type noResend struct{}

func (noResend) DialHook(next redis.DialHook) redis.DialHook { return next }

func (noResend) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if err != nil && once(cmd) && lost(err) {
			err = &sentError{err}
			cmd.SetErr(err)
		}
		return err
	}
}

func (noResend) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		if err == nil || !lost(err) {
			return err
		}
		for _, c := range cmds {
			if once(c) {
				err = &sentError{err}
				for _, c := range cmds {
					if c.Err() != nil {
						c.SetErr(err)
					}
				}
				break
			}
		}
		return err
	}
}

// once: a command that must not run twice (scripts; a MULTI's commands).
func once(cmd redis.Cmder) bool {
	switch cmd.Name() {
	case "eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "multi", "exec":
		return true
	}
	return false
}

// lost: the command may have reached Redis and its answer did not come
// back (not a Redis error reply, not a dial error, not a cancel).
func lost(err error) bool {
	var rerr redis.Error
	var op *net.OpError
	switch {
	case errors.As(err, &rerr), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, redis.ErrClosed), errors.Is(err, redis.ErrPoolTimeout):
		return false
	case errors.As(err, &op) && op.Op == "dial":
		return false
	}
	return true
}

// sentError is a lost answer, without the chain that would make go-redis
// retry it.
type sentError struct{ err error }

func (e *sentError) Error() string {
	return e.err.Error() + " (the command may have run; not resent)"
}
