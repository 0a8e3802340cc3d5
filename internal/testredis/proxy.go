package testredis

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	// proxyDialTimeout bounds how long the proxy waits to connect to its
	// target for a new client connection.
	proxyDialTimeout = time.Second
	// proxyCloseTimeout bounds how long Close waits for the proxy's
	// goroutines to end.
	proxyCloseTimeout = 5 * time.Second
	// proxyQueue is how many chunks a direction of a connection holds while
	// they wait out their latency; a reader blocks beyond that.
	proxyQueue = 256
)

// Proxy is a TCP proxy that a test puts between a Redis client and a server
// to inject network faults: latency added per direction, extra delay for
// chosen client→server traffic, a blackhole, and resets. Its controls may be
// changed while traffic flows. Make one with NewProxy; it closes in
// t.Cleanup, and every goroutine it started has ended when Close returns.
//
// Latency is applied per forwarded chunk (what one read of the socket
// returned), so a request and its reply pay the up and the down latency
// once each. Chunks leave in the order they came, each no earlier than its
// own delay after it was read: a delayed chunk also holds back the chunks
// behind it on its connection, as on a real TCP stream.
type Proxy struct {
	target string
	ln     net.Listener

	up, down  atomic.Int64 // latency per direction, nanoseconds
	blackhole atomic.Bool
	rule      atomic.Pointer[delayRule]
	accepted  atomic.Int64

	ctx    context.Context // ends on Close; bounds dials
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine the proxy started

	mu     sync.Mutex // protects conns and closed
	conns  map[*proxyConn]struct{}
	closed bool
}

// delayRule delays the client→server chunks that match by d.
type delayRule struct {
	match func(chunk []byte) bool
	d     time.Duration
}

// NewProxy starts a proxy for t on a free loopback port that forwards every
// connection it accepts to target ("host:port"). It is closed in t.Cleanup.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testredis: proxy: %v", err)
	}
	p := &Proxy{target: target, ln: ln, conns: make(map[*proxyConn]struct{})}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("testredis: %v", err)
		}
	})
	return p
}

// Addr returns the address clients connect to, "127.0.0.1:port".
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Target returns the address the proxy forwards to.
func (p *Proxy) Target() string { return p.target }

// SetLatency sets the latency added to every chunk from the client to the
// server (up) and from the server to the client (down). Zero removes it.
// It applies to the chunks read from then on.
func (p *Proxy) SetLatency(up, down time.Duration) {
	p.up.Store(int64(up))
	p.down.Store(int64(down))
}

// DelayWhen delays by d, on top of the up latency, every client→server
// chunk for which match reports true, such as MatchCommand("subscribe").
// match sees each chunk as one read of the socket returned it, and must not
// keep or change it. A nil match removes the rule.
func (p *Proxy) DelayWhen(match func(chunk []byte) bool, d time.Duration) {
	if match == nil {
		p.rule.Store(nil)
		return
	}
	p.rule.Store(&delayRule{match: match, d: d})
}

// SetBlackhole turns the blackhole on or off. While it is on, the proxy
// accepts connections and reads what both sides send, but forwards nothing
// and answers nothing, as a network that drops every packet: clients see
// their commands time out. Connections that lost bytes to it have a broken
// stream, so turning it off closes them; new connections work at once.
func (p *Proxy) SetBlackhole(on bool) {
	p.blackhole.Store(on)
	if on {
		return
	}
	p.mu.Lock()
	var broken []*proxyConn
	for c := range p.conns {
		if c.dropped.Load() {
			broken = append(broken, c)
		}
	}
	p.mu.Unlock()
	for _, c := range broken {
		c.close()
	}
}

// Reset closes every connection now, on both sides, as a network failure
// or a server that drops its clients would. New connections are accepted.
func (p *Proxy) Reset() {
	p.mu.Lock()
	conns := make([]*proxyConn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	for _, c := range conns {
		c.close()
	}
}

// Conns returns the number of client connections open through the proxy.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Accepted returns the number of client connections the proxy has accepted.
func (p *Proxy) Accepted() int64 { return p.accepted.Load() }

// Close stops accepting, closes every connection and waits, for at most 5s,
// for the proxy's goroutines to end; it returns an error if they do not.
// It is idempotent, and NewProxy calls it in t.Cleanup.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	conns := make([]*proxyConn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.mu.Unlock()
	p.cancel()
	_ = p.ln.Close()
	for _, c := range conns {
		c.close()
	}
	done := make(chan struct{})
	go func() {
		p.wg.Wait()
		close(done)
	}()
	t := time.NewTimer(proxyCloseTimeout)
	defer t.Stop()
	select {
	case <-done:
		return nil
	case <-t.C:
		return fmt.Errorf("proxy to %s: its goroutines did not end within %v of Close", p.target, proxyCloseTimeout)
	}
}

// accept accepts connections until the listener is closed.
func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || p.ctx.Err() != nil {
				return
			}
			// A transient failure (out of file descriptors, say): pause a
			// little, or until Close.
			t := time.NewTimer(5 * time.Millisecond)
			select {
			case <-t.C:
			case <-p.ctx.Done():
				t.Stop()
				return
			}
			continue
		}
		p.accepted.Add(1)
		c := &proxyConn{p: p, client: client, done: make(chan struct{})}
		if !p.add(c) {
			_ = client.Close()
			return
		}
		p.wg.Add(1)
		go p.serve(c)
	}
}

// add registers c, unless the proxy is closed.
func (p *Proxy) add(c *proxyConn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) remove(c *proxyConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c)
}

// serve connects c to the target and starts its two directions; a
// connection accepted while the blackhole is on is only read from.
func (p *Proxy) serve(c *proxyConn) {
	defer p.wg.Done()
	if p.blackhole.Load() {
		c.dropped.Store(true)
		drain(c.client)
		c.close()
		return
	}
	d := net.Dialer{Timeout: proxyDialTimeout}
	server, err := d.DialContext(p.ctx, "tcp", p.target)
	if err != nil {
		c.close()
		return
	}
	if !c.setServer(server) {
		return // closed while dialing
	}
	p.pipe(c, c.client, server, true)
	p.pipe(c, server, c.client, false)
}

// drain reads from conn until it fails.
func drain(conn net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		if _, err := conn.Read(buf); err != nil {
			return
		}
	}
}

// chunk is what one read returned, and when it may be written on.
type chunk struct {
	data []byte
	due  time.Time
}

// pipe forwards src to dst for c: a reader stamps each chunk with its due
// time and queues it, a writer writes it when due. Either side failing
// closes c.
func (p *Proxy) pipe(c *proxyConn, src, dst net.Conn, up bool) {
	queue := make(chan chunk, proxyQueue)
	p.wg.Add(2)
	go func() { // reader
		defer p.wg.Done()
		defer close(queue)
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				if p.blackhole.Load() {
					c.dropped.Store(true)
				} else {
					b := bytes.Clone(buf[:n])
					select {
					case queue <- chunk{data: b, due: time.Now().Add(p.delay(up, b))}:
					case <-c.done:
						return
					}
				}
			}
			if err != nil {
				return
			}
		}
	}()
	go func() { // writer
		defer p.wg.Done()
		defer c.close()
		for ch := range queue {
			if wait := time.Until(ch.due); wait > 0 {
				t := time.NewTimer(wait)
				select {
				case <-t.C:
				case <-c.done:
					t.Stop()
					continue // drop the rest; the reader ends on the closed socket
				}
			}
			if p.blackhole.Load() {
				c.dropped.Store(true)
				continue
			}
			if _, err := dst.Write(ch.data); err != nil {
				c.close()
			}
		}
	}()
}

// delay returns the delay of a chunk read in the direction up (client to
// server) or down.
func (p *Proxy) delay(up bool, b []byte) time.Duration {
	if !up {
		return time.Duration(p.down.Load())
	}
	d := time.Duration(p.up.Load())
	if r := p.rule.Load(); r != nil && r.match(b) {
		d += r.d
	}
	return d
}

// proxyConn is a client connection and its connection to the target.
type proxyConn struct {
	p      *Proxy
	client net.Conn
	done   chan struct{} // closed by close

	mu     sync.Mutex // protects server and closed
	server net.Conn   // nil until dialed
	closed bool

	dropped atomic.Bool // the blackhole took bytes of this connection
}

// setServer attaches the connection to the target, or closes it and
// reports false when c was closed meanwhile.
func (c *proxyConn) setServer(server net.Conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		_ = server.Close()
		return false
	}
	c.server = server
	return true
}

// close closes both sides and forgets c; it is idempotent.
func (c *proxyConn) close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	close(c.done)
	_ = c.client.Close()
	if c.server != nil {
		_ = c.server.Close()
	}
	c.mu.Unlock()
	c.p.remove(c)
}

// MatchCommand returns a DelayWhen match for the chunks that hold one of
// the commands names, such as "subscribe" or "evalsha", in the Redis
// protocol (RESP), in any letter case. It looks for the name as a bulk
// string, so a key or argument spelled like the command matches too.
func MatchCommand(names ...string) func(chunk []byte) bool {
	needles := make([][]byte, len(names))
	for i, n := range names {
		needles[i] = []byte("$" + strconv.Itoa(len(n)) + "\r\n" + string(bytes.ToLower([]byte(n))) + "\r\n")
	}
	return func(chunk []byte) bool {
		lower := bytes.ToLower(chunk)
		for _, n := range needles {
			if bytes.Contains(lower, n) {
				return true
			}
		}
		return false
	}
}

// DialVia returns a dialer for redis.Options.Dialer or
// redis.ClusterOptions.Dialer that connects to each proxy's target through
// the proxy, and to any other address directly. It puts a proxy in front
// of one node of a cluster, whose client learns the nodes' addresses from
// the cluster itself.
func DialVia(proxies ...*Proxy) func(ctx context.Context, network, addr string) (net.Conn, error) {
	via := make(map[string]string, len(proxies))
	for _, p := range proxies {
		via[p.target] = p.Addr()
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if a, ok := via[addr]; ok {
			addr = a
		}
		d := net.Dialer{Timeout: proxyDialTimeout}
		return d.DialContext(ctx, network, addr)
	}
}
