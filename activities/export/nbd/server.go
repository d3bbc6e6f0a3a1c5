package nbd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"
)

// Export is one block device the server offers, read-only.
type Export struct {
	// Name is the export name clients ask for (NBD_OPT_GO, the path of nbd+unix:///NAME). It may be empty,
	// which is the name QEMU sends for a URL without a path; no other export stands in for a missing one.
	Name string
	// Size is the device size in bytes; reads past it are refused, so Data is never asked for more.
	Size int64
	// Data holds the bytes. ReadAt is called concurrently, for ranges within [0, Size) of at most
	// MaxPayload bytes; it must return the full range or an error (the client then gets EIO for that range
	// only). It should not block forever: Serve waits for reads in flight before it returns.
	Data io.ReaderAt
	// Describe, optional, answers NBD_CMD_BLOCK_STATUS for "base:allocation": the extents of
	// [offset, offset+length), in order from offset. It may describe less than asked (at least one
	// extent); what it describes beyond the range is ignored. Nil reports every byte as data, which is
	// always correct, only slower for a client that would skip zeros.
	Describe func(ctx context.Context, offset, length int64) ([]Extent, error)
}

// Extent is a run of bytes with one allocation status, as Export.Describe reports it.
type Extent struct {
	Length int64
	// Zero says the run reads as zeros; a client copying the export may skip it.
	Zero bool
	// Hole says the run is not allocated in the source (for a backup: no chunk stores it). A hole that is
	// not also Zero tells the client nothing about its content, so report zero holes with both set.
	Hole bool
}

// Options tune a Server; the zero value is the default.
type Options struct {
	// Logger receives connection and read-error events (never data); nil discards them.
	Logger *slog.Logger
	// HandshakeTimeout bounds a connection's whole option negotiation (default 30 s). The transmission
	// phase has no deadline: a VM's backing file may sit idle for hours.
	HandshakeTimeout time.Duration
	// MaxInFlight bounds the requests one connection has in flight (default 16): QEMU pipelines reads,
	// and a network store answers each slowly, so they run concurrently. Their buffers together are
	// bounded by 2×MaxPayload as well, whatever the count.
	MaxInFlight int
}

// Server serves a fixed set of exports over NBD. It is safe for concurrent use; one Server may run Serve
// on several listeners at once.
type Server struct {
	exports map[string]*Export
	names   []string // in the order given, for NBD_OPT_LIST
	log     *slog.Logger
	opts    Options
}

// New returns a Server for exports. Names must be unique and at most 4096 bytes, sizes non-negative, and
// Data set.
func New(opts Options, exports ...Export) (*Server, error) {
	s := &Server{exports: make(map[string]*Export, len(exports)), log: opts.Logger, opts: opts}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.opts.HandshakeTimeout <= 0 {
		s.opts.HandshakeTimeout = 30 * time.Second
	}
	if s.opts.MaxInFlight <= 0 {
		s.opts.MaxInFlight = 16
	}
	for i := range exports {
		e := exports[i]
		switch {
		case len(e.Name) > maxNameLength:
			return nil, fmt.Errorf("nbd: export %d: name longer than %d bytes", i, maxNameLength)
		case e.Size < 0:
			return nil, fmt.Errorf("nbd: export %q: negative size %d", e.Name, e.Size)
		case e.Data == nil:
			return nil, fmt.Errorf("nbd: export %q: no Data", e.Name)
		}
		if _, dup := s.exports[e.Name]; dup {
			return nil, fmt.Errorf("nbd: export %q listed twice", e.Name)
		}
		s.exports[e.Name] = &e
		s.names = append(s.names, e.Name)
	}
	return s, nil
}

// Serve accepts connections on l and serves each until the client disconnects, ctx is done or l is
// closed. On return it has closed l and every connection it accepted, and waited for their reads in
// flight. It returns ctx.Err() once ctx is done, otherwise the error that ended Accept (net.ErrClosed when
// l was closed).
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Closing the listener is the only way to interrupt Accept.
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	defer l.Close()

	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel() // runs before wg.Wait: every connection closes when ctx is done

	var backoff time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if retryableAccept(err) {
				// Out of descriptors or memory: wait for connections to end rather than spin or give up.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("nbd: accept failed; retrying", "error", err, "retry_in", backoff)
				select {
				case <-time.After(backoff):
					continue
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			return err
		}
		backoff = 0
		wg.Go(func() {
			defer nc.Close()
			closeOnDone := context.AfterFunc(ctx, func() { nc.Close() })
			defer closeOnDone()
			s.serveConn(ctx, nc)
		})
	}
}

func retryableAccept(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM) || errors.Is(err, syscall.ECONNABORTED)
}

// serveConn runs one connection: the handshake, then the transmission phase. It returns when the
// connection is over and nothing it started is still running.
func (s *Server) serveConn(ctx context.Context, nc net.Conn) {
	c := &conn{srv: s, nc: nc, log: s.log}
	if addr := nc.RemoteAddr(); addr != nil {
		c.log = c.log.With("remote", addr.String())
	}
	c.budget.init(s.opts.MaxInFlight, 2*MaxPayload)
	if err := nc.SetDeadline(time.Now().Add(s.opts.HandshakeTimeout)); err != nil {
		return
	}
	exp, err := c.handshake()
	if err != nil {
		if !errors.Is(err, errAborted) {
			c.log.Debug("nbd: handshake ended", "error", err)
		}
		return
	}
	// The handshake's deadline must not cut an idle but healthy client in transmission.
	if err := nc.SetDeadline(time.Time{}); err != nil {
		return
	}
	c.log = c.log.With("export", exp.Name)
	c.log.Debug("nbd: transmission", "structured_replies", c.structured, "base_allocation", c.allocation)
	err = c.transmit(ctx, exp)
	c.log.Debug("nbd: connection ended", "error", err)
}
