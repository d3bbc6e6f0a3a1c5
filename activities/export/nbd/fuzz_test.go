package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

// FuzzConn feeds arbitrary client bytes through a whole connection — handshake, options, requests — and
// checks that the server neither panics nor hangs, whatever the client sends. The seeds are well-formed
// sessions, so that mutations reach the transmission phase. `go test` runs the seeds; fuzz with
// go test -run '^$' -fuzz FuzzConn ./activities/export/nbd/
func FuzzConn(f *testing.F) {
	for _, seed := range seedSessions() {
		f.Add(seed)
	}
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	s, err := New(Options{MaxInFlight: 4}, Export{Name: "vol", Size: int64(len(data)), Data: bytes.NewReader(data),
		Describe: func(_ context.Context, offset, length int64) ([]Extent, error) {
			// Extents of varying size and status, some longer than asked.
			return []Extent{{Length: 1 + offset%5000, Zero: true, Hole: true}, {Length: 4096}, {Length: length}}, nil
		}})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		done := make(chan struct{})
		go func() {
			defer close(done)
			s.serveConn(context.Background(), &fakeConn{r: bytes.NewReader(in)})
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("serveConn did not return at the end of its input")
		}
	})
}

// FuzzParseMetaRequest checks the option parser's bounds directly: whatever it accepts, it accepted
// from the data, and it never allocates more queries than the data could hold.
func FuzzParseMetaRequest(f *testing.F) {
	f.Add([]byte{0, 0, 0, 3, 'v', 'o', 'l', 0, 0, 0, 1, 0, 0, 0, 15, 'b', 'a', 's', 'e', ':', 'a', 'l', 'l', 'o', 'c', 'a', 't', 'i', 'o', 'n'})
	f.Add([]byte{0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		name, queries, ok := parseMetaRequest(data)
		if !ok {
			return
		}
		n := len(name)
		for _, q := range queries {
			n += 4 + len(q)
		}
		if 8+n != len(data) {
			t.Fatalf("accepted %d bytes of %d", 8+n, len(data))
		}
	})
}

// seedSessions are client byte streams QEMU-like clients send.
func seedSessions() [][]byte {
	opt := func(b []byte, code uint32, data []byte) []byte {
		b = binary.BigEndian.AppendUint64(b, magicOption)
		b = binary.BigEndian.AppendUint32(b, code)
		b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
		return append(b, data...)
	}
	req := func(b []byte, typ, flags uint16, offset uint64, length uint32) []byte {
		b = binary.BigEndian.AppendUint32(b, magicRequest)
		b = binary.BigEndian.AppendUint16(b, flags)
		b = binary.BigEndian.AppendUint16(b, typ)
		b = binary.BigEndian.AppendUint64(b, 42)
		b = binary.BigEndian.AppendUint64(b, offset)
		return binary.BigEndian.AppendUint32(b, length)
	}
	goData := []byte{0, 0, 0, 3, 'v', 'o', 'l', 0, 1, 0, 3}
	meta := []byte{0, 0, 0, 3, 'v', 'o', 'l', 0, 0, 0, 1, 0, 0, 0, 15}
	meta = append(meta, metaBaseAllocation...)
	requests := func(b []byte) []byte {
		b = req(b, cmdRead, 0, 0, 4096)
		b = req(b, cmdRead, 0, 1<<20-10, 100)
		b = req(b, cmdBlockStatus, cmdFlagReqOne, 0, 1<<20)
		b = req(b, cmdBlockStatus, 0, 100, 100000)
		b = req(b, cmdWrite, 0, 0, 4)
		b = append(b, 1, 2, 3, 4)
		b = req(b, cmdTrim, 0, 0, 4096)
		b = req(b, cmdFlush, 0, 0, 0)
		return req(b, cmdDisc, 0, 0, 0)
	}

	flags := []byte{0, 0, 0, 3}
	structured := opt(bytes.Clone(flags), optStructuredReply, nil)
	structured = opt(structured, optSetMetaContext, meta)
	return [][]byte{
		requests(opt(bytes.Clone(flags), optGo, goData)),
		requests(opt(structured, optGo, goData)),
		requests(opt(bytes.Clone(flags), optExportName, []byte("vol"))),
		opt(opt(opt(bytes.Clone(flags), optList, nil), optInfo, goData), optAbort, nil),
		opt(opt(bytes.Clone(flags), optStructuredReply, nil), optListMetaContext, []byte{0, 0, 0, 3, 'v', 'o', 'l', 0, 0, 0, 0}),
	}
}

// fakeConn is a net.Conn whose client says in and ignores every reply.
type fakeConn struct{ r io.Reader }

func (c *fakeConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *fakeConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *fakeConn) Close() error                     { return nil }
func (c *fakeConn) LocalAddr() net.Addr              { return fakeAddr{} }
func (c *fakeConn) RemoteAddr() net.Addr             { return fakeAddr{} }
func (c *fakeConn) SetDeadline(time.Time) error      { return nil }
func (c *fakeConn) SetReadDeadline(time.Time) error  { return nil }
func (c *fakeConn) SetWriteDeadline(time.Time) error { return nil }

type fakeAddr struct{}

func (fakeAddr) Network() string { return "fake" }
func (fakeAddr) String() string  { return "fake" }
