package testutil

import (
	"net"
	"sync"
	"time"
)

// bufferedConn makes writes to a net.Pipe non-blocking. net.Pipe is
// synchronous, so a pipelined client that writes many commands before it
// reads deadlocks with a server that blocks writing the first reply; in a
// synctest bubble that deadlock shows up as an instant i/o timeout.
type bufferedConn struct {
	net.Conn
	mu     sync.Mutex
	cond   *sync.Cond
	queue  [][]byte
	closed bool
}

func newBufferedConn(c net.Conn) net.Conn {
	b := &bufferedConn{Conn: c}
	b.cond = sync.NewCond(&b.mu)
	go b.pump()
	return b
}

func (b *bufferedConn) pump() {
	for {
		b.mu.Lock()
		for len(b.queue) == 0 && !b.closed {
			b.cond.Wait()
		}
		if len(b.queue) == 0 {
			b.mu.Unlock()
			return
		}
		p := b.queue[0]
		b.queue = b.queue[1:]
		b.mu.Unlock()
		if _, err := b.Conn.Write(p); err != nil {
			return
		}
	}
}

func (b *bufferedConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return 0, net.ErrClosed
	}
	b.queue = append(b.queue, append([]byte(nil), p...))
	b.cond.Signal()
	return len(p), nil
}

func (b *bufferedConn) SetWriteDeadline(time.Time) error { return nil }

func (b *bufferedConn) SetDeadline(t time.Time) error { return b.Conn.SetReadDeadline(t) }

func (b *bufferedConn) Close() error {
	b.mu.Lock()
	b.closed = true
	b.cond.Signal()
	b.mu.Unlock()
	return b.Conn.Close()
}
