package nbd

import (
	"errors"
	"net"
	"sync"
)

// errBroken answers a send on a connection whose stream a failed write has already corrupted.
var errBroken = errors.New("nbd: connection broken by an earlier failed write")

// send writes bufs as one message. Concurrent requests reply through it, so a reply is never split by
// another's. A failed write leaves a partial message on the wire: the connection is closed, which also
// stops its reader.
func (c *conn) send(bufs ...[]byte) error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	if c.broken {
		return errBroken
	}
	b := net.Buffers(bufs)
	if _, err := b.WriteTo(c.nc); err != nil {
		c.broken = true
		c.nc.Close()
		return err
	}
	return nil
}

// replyChunk sends the one and final structured chunk of a reply.
func (c *conn) replyChunk(req request, typ uint16, payload []byte, data ...[]byte) error {
	n := len(payload)
	for _, d := range data {
		n += len(d)
	}
	h := make([]byte, 20)
	be.PutUint32(h[0:], magicStructuredReply)
	be.PutUint16(h[4:], replyFlagDone)
	be.PutUint16(h[6:], typ)
	be.PutUint64(h[8:], req.cookie)
	be.PutUint32(h[16:], uint32(n))
	return c.send(append([][]byte{h, payload}, data...)...)
}

// replySimple sends a simple reply, followed by data for a successful READ.
func (c *conn) replySimple(req request, errno uint32, data []byte) error {
	h := make([]byte, 16)
	be.PutUint32(h[0:], magicSimpleReply)
	be.PutUint32(h[4:], errno)
	be.PutUint64(h[8:], req.cookie)
	return c.send(h, data)
}

// Once structured replies are negotiated every reply is structured: QEMU drops the connection on a simple
// reply to a READ, and a single form keeps the rule simple.

func (c *conn) replyOK(req request) error {
	if c.structured {
		return c.replyChunk(req, replyTypeNone, nil)
	}
	return c.replySimple(req, 0, nil)
}

func (c *conn) replyError(req request, errno uint32) error {
	if c.structured {
		p := make([]byte, 6) // error, then an empty message
		be.PutUint32(p, errno)
		return c.replyChunk(req, replyTypeError, p)
	}
	return c.replySimple(req, errno, nil)
}

func (c *conn) replyData(req request, data []byte) error {
	if c.structured {
		p := be.AppendUint64(nil, req.offset)
		return c.replyChunk(req, replyTypeOffsetData, p, data)
	}
	return c.replySimple(req, 0, data)
}

// budget bounds what one connection has in flight: a number of requests, and the bytes of their buffers.
// A single request may always run, however large, so that the largest legal READ never waits forever.
type budget struct {
	mu                    sync.Mutex
	cond                  sync.Cond
	requests, bytes       int
	maxRequests, maxBytes int
}

func (b *budget) init(maxRequests, maxBytes int) {
	b.cond.L = &b.mu
	b.maxRequests, b.maxBytes = maxRequests, maxBytes
}

// acquire waits until a request of n bytes fits. Only the connection's reader calls it, so requests start
// in the order they arrived.
func (b *budget) acquire(n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for b.requests >= b.maxRequests || (b.requests > 0 && b.bytes+n > b.maxBytes) {
		b.cond.Wait()
	}
	b.requests++
	b.bytes += n
}

func (b *budget) release(n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.requests--
	b.bytes -= n
	b.cond.Broadcast()
}

// drain waits until nothing is in flight.
func (b *budget) drain() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for b.requests > 0 {
		b.cond.Wait()
	}
}
