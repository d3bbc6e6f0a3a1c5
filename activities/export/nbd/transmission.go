package nbd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// request is one transmission-phase request header.
type request struct {
	flags  uint16
	typ    uint16
	cookie uint64 // the client's handle, echoed in the reply
	offset uint64
	length uint32
}

// parseRequest decodes a request header. A bad magic means the stream is out of sync: nothing after it can
// be trusted, so the caller ends the connection.
func parseRequest(b []byte) (request, error) {
	if len(b) != requestHeaderLength || be.Uint32(b) != magicRequest {
		return request{}, errors.New("bad request magic")
	}
	return request{
		flags:  be.Uint16(b[4:]),
		typ:    be.Uint16(b[6:]),
		cookie: be.Uint64(b[8:]),
		offset: be.Uint64(b[16:]),
		length: be.Uint32(b[24:]),
	}, nil
}

// checkRange returns the error a request for [offset, offset+length) of e deserves, or 0. maxLength
// bounds the length (the payload of a READ); 0 means only the export's end does.
func checkRange(e *Export, req request, maxLength uint32) uint32 {
	switch {
	case maxLength != 0 && req.length > maxLength:
		return errOverflow
	case req.length == 0, req.offset > uint64(e.Size), uint64(req.length) > uint64(e.Size)-req.offset:
		return errInvalid
	}
	return 0
}

// transmit serves requests on e until the client disconnects or breaks the protocol. Reads and block
// status queries run concurrently, bounded by c.budget; everything else is answered in order. It returns
// only once every request it started has been answered (or the connection has failed).
func (c *conn) transmit(ctx context.Context, e *Export) (err error) {
	defer func() {
		if err != nil {
			// The stream is out of sync or the client misbehaved: replies still in flight are worthless, and
			// closing now unblocks any of them stuck writing to a client that no longer reads.
			c.nc.Close()
		} else {
			// The client said goodbye (or closed its side): its pending replies are still owed, but a
			// client that never reads them must not keep the connection forever.
			_ = c.nc.SetWriteDeadline(time.Now().Add(c.srv.opts.HandshakeTimeout))
		}
		c.budget.drain()
	}()
	var hdr [requestHeaderLength]byte
	for {
		if _, err := io.ReadFull(c.r, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				return nil // the client left without NBD_CMD_DISC, or Serve is shutting down
			}
			return fmt.Errorf("reading request: %w", err)
		}
		req, err := parseRequest(hdr[:])
		if err != nil {
			return err
		}
		switch req.typ {
		case cmdRead:
			if errno := checkRange(e, req, MaxPayload); errno != 0 {
				err = c.replyError(req, errno)
				break
			}
			n := int(req.length)
			c.budget.acquire(n)
			go func() {
				defer c.budget.release(n)
				c.read(e, req)
			}()

		case cmdBlockStatus:
			if !c.allocation {
				err = c.replyError(req, errInvalid)
				break
			}
			if errno := checkRange(e, req, 0); errno != 0 {
				err = c.replyError(req, errno)
				break
			}
			c.budget.acquire(0)
			go func() {
				defer c.budget.release(0)
				c.blockStatus(ctx, e, req)
			}()

		case cmdWrite:
			// The payload follows the header whatever the answer; it must be consumed to stay in sync.
			// Beyond MaxPayload the client is not one we want to read gigabytes from.
			if req.length > MaxPayload {
				_ = c.replyError(req, errOverflow)
				return errors.New("write payload beyond the maximum")
			}
			if _, err := io.CopyN(io.Discard, c.r, int64(req.length)); err != nil {
				return fmt.Errorf("skipping write payload: %w", err)
			}
			err = c.replyError(req, errPerm)

		case cmdTrim, cmdWriteZeroes:
			err = c.replyError(req, errPerm)

		case cmdFlush:
			// Not advertised, but harmless: there is nothing unwritten, so the answer is "done".
			err = c.replyOK(req)

		case cmdDisc:
			return nil // the deferred drain answers what is in flight before the connection closes

		default:
			err = c.replyError(req, errInvalid)
		}
		if err != nil {
			return err
		}
	}
}

// read answers one READ. A failed ReadAt fails this request only: the client gets EIO for the range and
// the connection serves on.
func (c *conn) read(e *Export, req request) {
	buf := make([]byte, req.length)
	if err := readAt(e.Data, buf, int64(req.offset)); err != nil {
		c.log.Warn("nbd: read failed", "offset", req.offset, "length", req.length, "error", err)
		_ = c.replyError(req, errIO)
		return
	}
	_ = c.replyData(req, buf) // a failed write has closed the connection; the reader sees it
}

// readAt fills buf from r at off. A panic in r fails the read instead of the process, which serves
// other exports (other VMs' disks) too.
func readAt(r io.ReaderAt, buf []byte, off int64) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("ReadAt panicked: %v", p)
		}
	}()
	n, err := r.ReadAt(buf, off)
	if n == len(buf) {
		return nil // io.ReaderAt may report io.EOF with a full read that ends at the end
	}
	if err == nil || errors.Is(err, io.EOF) {
		// Data is shorter than the export's Size: serving zeros would be guessing.
		return fmt.Errorf("short read: %d of %d bytes: %w", n, len(buf), io.ErrUnexpectedEOF)
	}
	return err
}

// blockStatus answers one BLOCK_STATUS for base:allocation.
func (c *conn) blockStatus(ctx context.Context, e *Export, req request) {
	offset, length := int64(req.offset), int64(req.length)
	extents := []Extent{{Length: length}}
	if e.Describe != nil {
		var err error
		if extents, err = describe(ctx, e, offset, length); err != nil {
			c.log.Warn("nbd: block status failed", "offset", offset, "length", length, "error", err)
			_ = c.replyError(req, errIO)
			return
		}
	}
	limit := maxDescriptors
	if req.flags&cmdFlagReqOne != 0 {
		limit = 1
	}
	payload, err := encodeExtents(extents, length, limit)
	if err != nil {
		c.log.Warn("nbd: block status failed", "offset", offset, "length", length, "error", err)
		_ = c.replyError(req, errIO)
		return
	}
	_ = c.replyChunk(req, replyTypeBlockStatus, payload)
}

func describe(ctx context.Context, e *Export, offset, length int64) (extents []Extent, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("Describe panicked: %v", p)
		}
	}()
	return e.Describe(ctx, offset, length)
}

// encodeExtents encodes a BLOCK_STATUS payload: the context ID, then at most limit descriptors covering
// at most length bytes. Neighbours with the same status are merged (fewer, longer descriptors tell the
// client more per request), and what extends past length is cut: the client asked about that range only.
func encodeExtents(extents []Extent, length int64, limit int) ([]byte, error) {
	p := make([]byte, 4, 4+8*min(len(extents), limit))
	be.PutUint32(p, metaBaseAllocationID)
	var covered int64
	count := 0
	var last uint32
	for _, x := range extents {
		if covered == length {
			break
		}
		if x.Length <= 0 {
			return nil, fmt.Errorf("Describe returned an extent of length %d", x.Length)
		}
		l := min(x.Length, length-covered)
		var flags uint32
		if x.Hole {
			flags |= stateHole
		}
		if x.Zero {
			flags |= stateZero
		}
		if count > 0 && flags == last {
			d := p[len(p)-8:]
			be.PutUint32(d, be.Uint32(d)+uint32(l)) // the sum stays within length, a uint32
		} else {
			if count == limit {
				break
			}
			p = be.AppendUint32(p, uint32(l))
			p = be.AppendUint32(p, flags)
			count++
			last = flags
		}
		covered += l
	}
	if count == 0 {
		return nil, errors.New("Describe returned no extent")
	}
	return p, nil
}
