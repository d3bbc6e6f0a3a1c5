package nbd

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
)

var be = binary.BigEndian

// errAborted ends a handshake the client ended itself with NBD_OPT_ABORT: not worth a log line.
var errAborted = errors.New("nbd: client aborted the handshake")

// conn is one client connection. Its fields other than the write side are touched only by the goroutine
// that reads from the connection.
type conn struct {
	srv *Server
	nc  net.Conn
	r   *bufio.Reader
	log *slog.Logger

	noZeroes   bool   // the client asked to omit the 124 zero bytes after NBD_OPT_EXPORT_NAME
	structured bool   // NBD_OPT_STRUCTURED_REPLY was negotiated: every reply is a structured chunk
	allocation bool   // base:allocation was selected (for metaExport): BLOCK_STATUS is allowed
	metaExport string // the export the last NBD_OPT_SET_META_CONTEXT named

	budget budget

	writeMu sync.Mutex // replies from concurrent requests must not interleave
	broken  bool       // a write failed: the stream is out of sync and the connection is closed
}

// transmissionFlags are the same for every export: read-only, and several connections to one export see
// the same bytes (the data never changes), so QEMU may open more than one.
const transmissionFlags = transHasFlags | transReadOnly | transCanMultiConn

// handshake greets the client and negotiates options until one selects an export (returned) or the
// client leaves (an error).
func (c *conn) handshake() (*Export, error) {
	c.r = bufio.NewReader(c.nc)
	greeting := make([]byte, 18)
	be.PutUint64(greeting[0:], magicNBD)
	be.PutUint64(greeting[8:], magicOption)
	be.PutUint16(greeting[16:], flagFixedNewstyle|flagNoZeroes)
	if err := c.send(greeting); err != nil {
		return nil, err
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.r, cf[:]); err != nil {
		return nil, fmt.Errorf("reading client flags: %w", err)
	}
	flags := be.Uint32(cf[:])
	// The protocol says to drop a client that sets flags we do not know: it expects something we won't do.
	if flags&^(clientFlagFixedNewstyle|clientFlagNoZeroes) != 0 {
		return nil, fmt.Errorf("unknown client flags %#x", flags)
	}
	// Without fixed newstyle a client cannot parse our answers to options it did not expect us to know.
	if flags&clientFlagFixedNewstyle == 0 {
		return nil, errors.New("client does not speak fixed newstyle")
	}
	c.noZeroes = flags&clientFlagNoZeroes != 0

	var hdr [16]byte
	for range maxOptions {
		if _, err := io.ReadFull(c.r, hdr[:]); err != nil {
			return nil, fmt.Errorf("reading option: %w", err)
		}
		if be.Uint64(hdr[0:]) != magicOption {
			return nil, errors.New("bad option magic")
		}
		opt, length := be.Uint32(hdr[8:]), be.Uint32(hdr[12:])
		c.log.Debug("nbd: option", "option", opt, "length", length)
		if length > maxOptionLength {
			if opt == optExportName {
				return nil, errors.New("export name too long") // this option has no error reply
			}
			// Skipping it keeps the stream in sync; the handshake deadline bounds how long that takes.
			if _, err := io.CopyN(io.Discard, c.r, int64(length)); err != nil {
				return nil, fmt.Errorf("skipping option %d: %w", opt, err)
			}
			if err := c.optReply(opt, repErrTooBig, []byte("option too long")); err != nil {
				return nil, err
			}
			continue
		}
		data := make([]byte, length)
		if _, err := io.ReadFull(c.r, data); err != nil {
			return nil, fmt.Errorf("reading option %d: %w", opt, err)
		}
		exp, err := c.option(opt, data)
		if err != nil || exp != nil {
			return exp, err
		}
	}
	return nil, fmt.Errorf("more than %d options", maxOptions)
}

// option answers one option. It returns the export when the option enters transmission, an error when
// the connection must end, and neither when negotiation goes on.
func (c *conn) option(opt uint32, data []byte) (*Export, error) {
	switch opt {
	case optExportName:
		e := c.srv.exports[string(data)]
		if e == nil {
			// This old option has no way to say "unknown": the protocol's answer is to hang up.
			return nil, errors.New("unknown export requested with NBD_OPT_EXPORT_NAME")
		}
		reply := make([]byte, 10, 10+124)
		be.PutUint64(reply[0:], uint64(e.Size))
		be.PutUint16(reply[8:], transmissionFlags)
		if !c.noZeroes {
			reply = reply[:10+124]
		}
		c.selectExport(e)
		return e, c.send(reply)

	case optAbort:
		_ = c.optReply(opt, repAck, nil) // the client may already be gone; it asked to end anyway
		return nil, errAborted

	case optList:
		if len(data) != 0 {
			return nil, c.optReply(opt, repErrInvalid, []byte("NBD_OPT_LIST takes no data"))
		}
		for _, name := range c.srv.names {
			p := make([]byte, 4+len(name))
			be.PutUint32(p, uint32(len(name)))
			copy(p[4:], name)
			if err := c.optReply(opt, repServer, p); err != nil {
				return nil, err
			}
		}
		return nil, c.optReply(opt, repAck, nil)

	case optInfo, optGo:
		name, ok := parseInfoRequest(data)
		if !ok {
			return nil, c.optReply(opt, repErrInvalid, []byte("malformed request"))
		}
		e := c.srv.exports[name]
		if e == nil {
			return nil, c.optReply(opt, repErrUnknown, []byte("no such export"))
		}
		// Both answers whatever the client listed: the export information is mandatory, and the block
		// sizes (minimum 1) ask nothing of a client that ignores them.
		info := make([]byte, 12)
		be.PutUint16(info[0:], infoExport)
		be.PutUint64(info[2:], uint64(e.Size))
		be.PutUint16(info[10:], transmissionFlags)
		if err := c.optReply(opt, repInfo, info); err != nil {
			return nil, err
		}
		bs := make([]byte, 14)
		be.PutUint16(bs[0:], infoBlockSize)
		be.PutUint32(bs[2:], minBlockSize)
		be.PutUint32(bs[6:], preferredBlockSize)
		be.PutUint32(bs[10:], MaxPayload)
		if err := c.optReply(opt, repInfo, bs); err != nil {
			return nil, err
		}
		if err := c.optReply(opt, repAck, nil); err != nil {
			return nil, err
		}
		if opt == optGo {
			c.selectExport(e)
			return e, nil
		}
		return nil, nil

	case optStructuredReply:
		if len(data) != 0 {
			return nil, c.optReply(opt, repErrInvalid, []byte("NBD_OPT_STRUCTURED_REPLY takes no data"))
		}
		c.structured = true
		return nil, c.optReply(opt, repAck, nil)

	case optListMetaContext, optSetMetaContext:
		// Block status replies are structured chunks: without them there is no way to answer one.
		if !c.structured {
			return nil, c.optReply(opt, repErrInvalid, []byte("structured replies not negotiated"))
		}
		name, queries, ok := parseMetaRequest(data)
		if !ok {
			return nil, c.optReply(opt, repErrInvalid, []byte("malformed request"))
		}
		if c.srv.exports[name] == nil {
			return nil, c.optReply(opt, repErrUnknown, []byte("no such export"))
		}
		match := false
		for _, q := range queries {
			// Listing accepts a bare namespace ("base:" means all of base); selecting needs a full name.
			match = match || q == metaBaseAllocation || (opt == optListMetaContext && q == "base:")
		}
		if opt == optListMetaContext && len(queries) == 0 {
			match = true // no query lists every context
		}
		if opt == optSetMetaContext {
			c.metaExport, c.allocation = name, match
		}
		if match {
			p := make([]byte, 4+len(metaBaseAllocation))
			be.PutUint32(p, metaBaseAllocationID)
			copy(p[4:], metaBaseAllocation)
			if err := c.optReply(opt, repMetaContext, p); err != nil {
				return nil, err
			}
		}
		return nil, c.optReply(opt, repAck, nil)

	default: // NBD_OPT_STARTTLS among them: TLS belongs to whoever exposes the listener
		return nil, c.optReply(opt, repErrUnsup, nil)
	}
}

// selectExport enters transmission on e. Metadata contexts were negotiated for one export name: they do
// not carry over to another.
func (c *conn) selectExport(e *Export) {
	if c.metaExport != e.Name {
		c.allocation = false
	}
}

// optReply sends one option reply; for an error type, payload is a message for humans.
func (c *conn) optReply(opt, typ uint32, payload []byte) error {
	h := make([]byte, 20)
	be.PutUint64(h[0:], magicOptionReply)
	be.PutUint32(h[8:], opt)
	be.PutUint32(h[12:], typ)
	be.PutUint32(h[16:], uint32(len(payload)))
	return c.send(h, payload)
}

// parseInfoRequest parses the data of NBD_OPT_INFO and NBD_OPT_GO: a name and a list of information
// types. The list is checked for shape only: the answer is the same whatever it asks.
func parseInfoRequest(data []byte) (name string, ok bool) {
	if len(data) < 4 {
		return "", false
	}
	n := be.Uint32(data)
	rest := data[4:]
	if uint64(n)+2 > uint64(len(rest)) {
		return "", false
	}
	name, rest = string(rest[:n]), rest[n:]
	count := be.Uint16(rest)
	return name, len(rest)-2 == 2*int(count)
}

// parseMetaRequest parses the data of NBD_OPT_LIST_META_CONTEXT and _SET_META_CONTEXT: an export name
// and a list of queries. The number of queries is bounded by the data's length before anything is
// allocated for them.
func parseMetaRequest(data []byte) (name string, queries []string, ok bool) {
	if len(data) < 4 {
		return "", nil, false
	}
	n := be.Uint32(data)
	rest := data[4:]
	if uint64(n)+4 > uint64(len(rest)) {
		return "", nil, false
	}
	name, rest = string(rest[:n]), rest[n:]
	count := be.Uint32(rest)
	rest = rest[4:]
	if uint64(count) > uint64(len(rest)/4) {
		return "", nil, false
	}
	queries = make([]string, 0, count)
	for range count {
		if len(rest) < 4 {
			return "", nil, false
		}
		l := be.Uint32(rest)
		rest = rest[4:]
		if uint64(l) > uint64(len(rest)) {
			return "", nil, false
		}
		queries = append(queries, string(rest[:l]))
		rest = rest[l:]
	}
	return name, queries, len(rest) == 0
}
