package testutil

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Real redis-server processes for the topology tests (Cluster, Sentinel,
// TLS). Each skips its test with one line where the program is absent;
// .ci/run installs it.

// Server is a redis-server this test started.
type Server struct {
	Port int
	Dir  string
	Cmd  *exec.Cmd
}

// Addr is host:port.
func (s *Server) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.Port) }

// NeedProgram returns the path of a program, or skips the test.
func NeedProgram(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s is not installed (.ci/run installs it)", name)
	}
	return p
}

// FreePort picks a free loopback port.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// StartRedis starts redis-server on a free loopback port with no
// persistence, plus args, and waits until it accepts connections. It is
// killed when the test ends.
func StartRedis(t testing.TB, args ...string) *Server {
	t.Helper()
	return StartRedisConf(t, "", FreePort(t), args...)
}

// StartRedisConf is StartRedis with a config file first ("" for none; a
// Sentinel's) on port.
func StartRedisConf(t testing.TB, conf string, port int, args ...string) *Server {
	t.Helper()
	bin := NeedProgram(t, "redis-server")
	dir := t.TempDir()
	var all []string
	if conf != "" {
		all = append(all, conf)
	}
	all = append(all, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", dir, "--logfile", filepath.Join(dir, "redis.log"))
	all = append(all, args...)
	cmd := exec.Command(bin, all...)
	cmd.Dir = dir
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	listen := port
	for i, a := range all { // a TLS-only server listens on --tls-port
		if a == "--tls-port" && i+1 < len(all) {
			listen, _ = strconv.Atoi(all[i+1])
		}
	}
	s := &Server{Port: listen, Dir: dir, Cmd: cmd}
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(listen)); err == nil {
			c.Close()
			return s
		}
		if cmd.ProcessState != nil || time.Now().After(end) {
			log, _ := os.ReadFile(filepath.Join(dir, "redis.log"))
			t.Fatalf("redis-server %v did not start:\n%s", args, lastLines(string(log), 5))
		}
	}
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(l[max(0, len(l)-n):], "\n")
}

// Cluster is a Redis Cluster of 3 masters and 3 replicas on loopback.
type Cluster struct {
	Nodes []*Server
	tls   *TLSFiles // TLS-only nodes (StartClusterTLS)
}

// URL is the cluster's REDIS_URL (go-redis's cluster form; for a TLS
// cluster, rediss:// with the CA and the client certificate).
func (c *Cluster) URL() string {
	u := "redis://" + c.Nodes[0].Addr()
	if c.tls != nil {
		u = "rediss://" + c.Nodes[0].Addr() + "?tls_ca=" + c.tls.CA + "&tls_cert=" + c.tls.ClientCert + "&tls_key=" + c.tls.ClientKey
	}
	for _, n := range c.Nodes[1:] {
		sep := "&"
		if !strings.Contains(u, "?") {
			sep = "?"
		}
		u += sep + "addr=" + n.Addr()
	}
	return u
}

// StartCluster starts 6 redis-servers in cluster mode, joins them with
// redis-cli --cluster create (3 masters, one replica each) and waits until
// every node says cluster_state:ok and every replica is in sync.
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	return startCluster(t, nil)
}

// StartClusterTLS is StartCluster with every node TLS-only: clients,
// replication and the cluster bus, each with certificates f's CA signed
// (a client certificate required).
func StartClusterTLS(t testing.TB, f TLSFiles) *Cluster {
	t.Helper()
	NeedTLS(t)
	return startCluster(t, &f)
}

func startCluster(t testing.TB, f *TLSFiles) *Cluster {
	t.Helper()
	cli := NeedProgram(t, "redis-cli")
	c := &Cluster{tls: f}
	args := []string{"create"}
	for range 6 {
		cluster := []string{"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "3000"}
		var n *Server
		if f == nil {
			n = StartRedis(t, cluster...)
		} else {
			n = StartRedisConf(t, "", 0, append(cluster, "--tls-port", strconv.Itoa(FreePort(t)), "--tls-cluster", "yes", "--tls-replication", "yes",
				"--tls-cert-file", f.ServerCert, "--tls-key-file", f.ServerKey, "--tls-ca-cert-file", f.CA, "--tls-auth-clients", "yes",
				"--tls-client-cert-file", f.ClientCert, "--tls-client-key-file", f.ClientKey)...)
		}
		c.Nodes = append(c.Nodes, n)
		args = append(args, n.Addr())
	}
	args = append([]string{"--cluster"}, append(args, "--cluster-replicas", "1", "--cluster-yes")...)
	if f != nil {
		args = append([]string{"--tls", "--cacert", f.CA, "--cert", f.ClientCert, "--key", f.ClientKey}, args...)
	}
	if out, err := exec.Command(cli, args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, lastLines(string(out), 5))
	}
	for end := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		ok := 0
		for _, n := range c.Nodes {
			nc := c.Node(n)
			info, err := nc.ClusterInfo(context.Background()).Result()
			nc.Close()
			if err == nil && strings.Contains(info, "cluster_state:ok") && strings.Contains(info, "cluster_known_nodes:6") {
				ok++
			}
		}
		if ok == len(c.Nodes) && c.replicated() {
			return c
		}
		if time.Now().After(end) {
			t.Fatalf("the cluster is not ok after 30s (%d of 6 nodes say ok)", ok)
		}
	}
}

// replicated: every slot range has a replica in sync with its master
// (cluster_state:ok comes before the replicas have joined).
func (c *Cluster) replicated() bool {
	ctx := context.Background()
	n0 := c.Node(c.Nodes[0])
	defer n0.Close()
	slots, err := n0.ClusterSlots(ctx).Result()
	if err != nil || len(slots) == 0 {
		return false
	}
	for _, s := range slots {
		if len(s.Nodes) < 2 {
			return false
		}
		r := c.client(s.Nodes[1].Addr)
		info, err := r.Info(ctx, "replication").Result()
		r.Close()
		if err != nil || !strings.Contains(info, "master_link_status:up") {
			return false
		}
	}
	return true
}

// Node is a plain client on one node.
func (c *Cluster) Node(n *Server) *redis.Client { return c.client(n.Addr()) }

func (c *Cluster) client(addr string) *redis.Client {
	o := &redis.Options{Addr: addr, MaxRetries: -1}
	if c.tls != nil {
		o.TLSConfig = c.tls.ClientConfig()
	}
	return redis.NewClient(o)
}

// FailoverSlot forces the master that serves key's slot to hand over to
// its replica (CLUSTER FAILOVER on the replica, the planned kind that
// loses no acknowledged write), and waits until the replica is master. It
// returns the old master's and the new master's addresses.
func (c *Cluster) FailoverSlot(t testing.TB, key string) (from, to string) {
	t.Helper()
	ctx := context.Background()
	n0 := c.Node(c.Nodes[0])
	defer n0.Close()
	slot, err := n0.ClusterKeySlot(ctx, key).Result()
	if err != nil {
		t.Fatal(err)
	}
	slots, err := n0.ClusterSlots(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range slots {
		if int64(s.Start) <= slot && slot <= int64(s.End) && len(s.Nodes) > 1 {
			from, to = s.Nodes[0].Addr, s.Nodes[1].Addr
		}
	}
	if to == "" {
		t.Fatalf("no replica serves slot %d", slot)
	}
	r := c.client(to)
	defer r.Close()
	if err := r.Do(ctx, "CLUSTER", "FAILOVER").Err(); err != nil {
		t.Fatalf("CLUSTER FAILOVER on %s: %v", to, err)
	}
	for end := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if info, err := r.Info(ctx, "replication").Result(); err == nil && strings.Contains(info, "role:master") {
			return from, to
		}
		if time.Now().After(end) {
			t.Fatalf("%s is not master 20s after CLUSTER FAILOVER", to)
		}
	}
}
