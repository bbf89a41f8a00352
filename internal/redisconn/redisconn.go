// Package redisconn opens the Redis every part shares: a real one from
// REDIS_URL (one server, Sentinels or a Cluster, over TLS if asked), or an
// embedded miniredis for the demo and tests.
package redisconn

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

func init() {
	// go-redis logs pool errors to stderr on its own; this tool reports
	// Redis trouble as one error line instead.
	redis.SetLogger(quiet{})
}

type quiet struct{}

func (quiet) Printf(context.Context, string, ...any) {}

// Open connects to the Redis rawURL names (see newClient) and checks the
// connection, so a wrong URL fails here with one line.
func Open(ctx context.Context, rawURL string) (redis.UniversalClient, error) {
	return OpenPool(ctx, rawURL, 0)
}

// OpenPool is Open with at least pool connections: a worker needs one per
// task that may wait for an in-flight slot (BLPOP holds its connection),
// plus asynq's own.
func OpenPool(ctx context.Context, rawURL string, pool int) (redis.UniversalClient, error) {
	if rawURL == "" {
		return nil, fmt.Errorf("no Redis: set REDIS_URL or --redis (redis://host:6379/0)")
	}
	rdb, tf, err := newClient(rawURL, pool)
	if err != nil {
		// url.Error quotes the whole URL, password and all: keep only why.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("REDIS_URL %s: %v (want redis://[user:password@]host:port/db; docs/redis.md has the Sentinel, Cluster and TLS forms)", Redact(rawURL), err)
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := rdb.Ping(pctx).Err(); err != nil {
		rdb.Close()
		if msg, ok := tf.trouble(err, strings.HasPrefix(rawURL, "rediss:")); ok {
			return nil, fmt.Errorf("redis %s: TLS: %s", Redact(rawURL), msg)
		}
		return nil, fmt.Errorf("redis %s is not answering: %v", Redact(rawURL), err)
	}
	return rdb, nil
}

// newClient builds the client a URL names:
//
//   - redis://[user:password@]host:port/db (or rediss://): one Redis;
//   - redis://[sentinel-user:sentinel-password@]host:port/db?master_name=NAME
//     [&addr=host2:port2...][&password=MASTER-PASSWORD]: Redis Sentinels,
//     which the client asks for the current master of NAME, before every
//     connection and again after a failover (go-redis's FailoverClient);
//   - redis://[user:password@]host1:port1?addr=host2:port2[&addr=...], or
//     any URL with cluster=true (a single seed, e.g. a managed cluster's
//     configuration endpoint): a Redis Cluster (go-redis's ClusterClient,
//     its URL form). Decision: addr= without master_name means a Cluster,
//     since a single server has no use for more addresses; cluster=true
//     says so where there is one. A Cluster has db 0 only: another db is
//     refused, not ignored.
//
// Any of them over TLS: rediss://, with tls_ca=FILE (a private CA, instead
// of the system roots) and tls_cert=FILE&tls_key=FILE (a client
// certificate); see tlsParams.
//
// Every client has at least pool connections (256 by default) and speaks
// RESP2: this tool uses no push notifications, and under RESP3 go-redis
// checks for them on every reply (7% of a worker's CPU in the profile).
//
// go-redis's own retries are off (MaxRetries -1): it resends a command
// whose reply timed out or broke off, and most of this tool's writes are
// scripts that must run once (a replayed begin counts an attempt that never
// happened; a replayed slot acquire holds a slot for a whole lease; a
// replayed chunk of Create lists CVMs twice). An error goes to the caller
// instead, and every caller is safe to run again: a task is retried by the
// queue, a command by the operator. The price: errors that were safe to
// retry (a dial error, LOADING after a restart, READONLY during a failover)
// reach the caller too. A max_retries parameter in the URL overrides this.
// On a Cluster, go-redis follows MOVED and ASK redirects and READONLY
// (what a failover answers) itself; noResend keeps it from resending a
// script or MULTI whose connection broke (see cluster.go).
func newClient(rawURL string, pool int) (redis.UniversalClient, tlsFiles, error) {
	rawURL, tc, err := tlsParams(rawURL)
	if err != nil {
		return nil, tc, err
	}
	rdb, err := clientFor(rawURL, pool, tc)
	return rdb, tc, err
}

func clientFor(rawURL string, pool int, tc tlsFiles) (redis.UniversalClient, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	q := u.Query()
	switch {
	case q.Has("master_name"):
		fo, err := redis.ParseFailoverURL(rawURL)
		if err != nil {
			return nil, err
		}
		fo.PoolSize = max(fo.PoolSize, 256, pool)
		fo.Protocol = 2
		if !q.Has("max_retries") {
			fo.MaxRetries = -1
		}
		if fo.TLSConfig != nil {
			tc.apply(fo.TLSConfig)
		}
		return redis.NewFailoverClient(fo), nil
	case q.Has("addr") || q.Has("cluster"):
		return newCluster(u, pool, tc)
	}
	opt, err := redis.ParseURL(rawURL)
	if err != nil {
		return nil, err
	}
	opt.PoolSize = max(opt.PoolSize, 256, pool)
	opt.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	opt.Protocol = 2
	if !q.Has("max_retries") {
		opt.MaxRetries = -1
	}
	if opt.TLSConfig != nil {
		tc.apply(opt.TLSConfig)
	}
	return redis.NewClient(opt), nil
}

// Redact hides the passwords of a Redis URL for messages: the user's, and
// a master's given as a password= parameter (Sentinel URLs).
func Redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparseable URL)"
	}
	if q := u.Query(); q.Has("password") {
		q.Set("password", "xxxxx")
		u.RawQuery = q.Encode()
	}
	return u.Redacted()
}

// Embedded is an in-process miniredis on a loopback port.
type Embedded struct {
	M    *miniredis.Miniredis
	stop chan struct{}
	once sync.Once
}

// StartEmbedded starts miniredis. TTLs advance by a 1 s FastForward ticker
// rather than ClockTTL, which sorts every key on every command and makes
// asynq about 30x slower (asynq-notes §2.2).
func StartEmbedded() (*Embedded, error) {
	m, err := miniredis.Run()
	if err != nil {
		return nil, err
	}
	e := &Embedded{M: m, stop: make(chan struct{})}
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		last := time.Now()
		for {
			select {
			case <-e.stop:
				return
			case now := <-t.C:
				m.FastForward(now.Sub(last))
				last = now
			}
		}
	}()
	return e, nil
}

// URL is the redis:// URL other clients use to reach it.
func (e *Embedded) URL() string { return "redis://" + e.M.Addr() + "/0" }

// Close stops it.
func (e *Embedded) Close() {
	e.once.Do(func() { close(e.stop); e.M.Close() })
}
