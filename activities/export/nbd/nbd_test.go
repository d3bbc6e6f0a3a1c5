package nbd_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/holdfast/holdfast/activities/export/nbd"
	"github.com/stretchr/testify/require"
)

func randomBytes(n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{7})
	_, _ = r.Read(b)
	return b
}

// QEMU copies a whole export out, over a unix socket and over TCP, and sees its size.
func TestQemuImgConvert(t *testing.T) {
	requireQemu(t)
	src := randomBytes(64 << 20)
	exp := nbd.Export{Name: "vol", Size: int64(len(src)), Data: bytes.NewReader(src)}
	sock := serveUnix(t, exp)

	var info struct {
		VirtualSize int64  `json:"virtual-size"`
		Format      string `json:"format"`
	}
	out := mustRun(t, "qemu-img", "info", "--output=json", nbdURL(sock, "vol"))
	require.NoError(t, json.Unmarshal([]byte(out), &info), out)
	require.Equal(t, int64(64<<20), info.VirtualSize)

	dst := filepath.Join(t.TempDir(), "out.raw")
	mustRun(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", nbdURL(sock, "vol"), dst)
	got, err := os.ReadFile(dst)
	require.NoError(t, err)
	require.True(t, bytes.Equal(src, got), "the copy differs from the export")

	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	serve(t, l, exp)
	out = mustRun(t, "qemu-img", "info", "--output=json", "nbd://"+l.Addr().String()+"/vol")
	require.NoError(t, json.Unmarshal([]byte(out), &info), out)
	require.Equal(t, int64(64<<20), info.VirtualSize)
}

// The export as the backing file of a qcow2 overlay: writes land in the overlay, unwritten ranges read
// through to the export, and the export itself cannot be written.
func TestQemuOverlay(t *testing.T) {
	requireQemu(t)
	src := randomBytes(8 << 20)
	sock := serveUnix(t, nbd.Export{Name: "vol", Size: int64(len(src)), Data: bytes.NewReader(src)})
	dir := t.TempDir()
	overlay := filepath.Join(dir, "overlay.qcow2")
	mustRun(t, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", nbdURL(sock, "vol"), overlay)
	mustRun(t, "qemu-io", "-c", "write -P 0xab 1M 64k", overlay)
	out := mustRun(t, "qemu-io", "-c", "read -P 0xab 1M 64k", "-c", "read -v 0 16", overlay)
	require.NotContains(t, out, "Pattern verification failed", out)
	// read -v dumps the first bytes: the export's, through the overlay.
	require.Contains(t, out, hexDump(src[:16]), out)

	dst := filepath.Join(dir, "out.raw")
	mustRun(t, "qemu-img", "convert", "-O", "raw", overlay, dst)
	got, err := os.ReadFile(dst)
	require.NoError(t, err)
	want := bytes.Clone(src)
	copy(want[1<<20:1<<20+64<<10], bytes.Repeat([]byte{0xab}, 64<<10))
	require.True(t, bytes.Equal(want, got), "overlay = export with the written range replaced")

	out, err = run(t, "qemu-io", "-f", "raw", "-c", "write 0 4k", nbdURL(sock, "vol"))
	require.Error(t, err, "writing to the export directly must fail: %s", out)
	t.Logf("direct write: %s", strings.TrimSpace(out))
	mustRun(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", nbdURL(sock, "vol"), dst)
	got, err = os.ReadFile(dst)
	require.NoError(t, err)
	require.True(t, bytes.Equal(src, got), "the export is unchanged")
}

// "00000000:  3f 8a ..." as qemu-io's read -v prints it.
func hexDump(b []byte) string {
	var s strings.Builder
	for i, c := range b {
		if i > 0 {
			s.WriteByte(' ')
		}
		s.WriteString(hex2(c))
	}
	return s.String()
}

func hex2(c byte) string {
	const digits = "0123456789abcdef"
	return string([]byte{digits[c>>4], digits[c&15]})
}

// Block status: zero ranges Describe reports reach QEMU, which then need not read them.
func TestQemuBlockStatus(t *testing.T) {
	requireQemu(t)
	src := randomBytes(8 << 20)
	clear(src[2<<20 : 6<<20])
	var reads atomic.Int64
	exp := nbd.Export{Name: "vol", Size: int64(len(src)), Data: countingReader{bytes.NewReader(src), &reads},
		Describe: func(_ context.Context, offset, length int64) ([]nbd.Extent, error) {
			// Data, zero hole, data: described from offset, whole extents (the server cuts them).
			var out []nbd.Extent
			for _, x := range []struct {
				start, end int64
				zero       bool
			}{{0, 2 << 20, false}, {2 << 20, 6 << 20, true}, {6 << 20, 8 << 20, false}} {
				if offset < x.end && offset+length > x.start {
					out = append(out, nbd.Extent{Length: x.end - max(offset, x.start), Zero: x.zero, Hole: x.zero})
				}
			}
			return out, nil
		}}
	sock := serveUnix(t, exp)
	out := mustRun(t, "qemu-img", "map", "--output=json", "-f", "raw", nbdURL(sock, "vol"))
	var extents []struct {
		Start, Length int64
		Zero, Data    bool
	}
	require.NoError(t, json.Unmarshal([]byte(out), &extents), out)
	var zero int64
	for _, e := range extents {
		if e.Zero && !e.Data {
			require.GreaterOrEqual(t, e.Start, int64(2<<20), out)
			require.LessOrEqual(t, e.Start+e.Length, int64(6<<20), out)
			zero += e.Length
		}
	}
	require.Equal(t, int64(4<<20), zero, out)

	dst := filepath.Join(t.TempDir(), "out.raw")
	reads.Store(0)
	mustRun(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", nbdURL(sock, "vol"), dst)
	got, err := os.ReadFile(dst)
	require.NoError(t, err)
	require.True(t, bytes.Equal(src, got))
	require.Equal(t, int64(4<<20), reads.Load(), "convert reads only the data extents")
}

type countingReader struct {
	r *bytes.Reader
	n *atomic.Int64
}

func (c countingReader) ReadAt(p []byte, off int64) (int, error) {
	c.n.Add(int64(len(p)))
	return c.r.ReadAt(p, off)
}

func TestUnknownExport(t *testing.T) {
	requireQemu(t)
	sock := serveUnix(t, nbd.Export{Name: "vol", Size: 1 << 20, Data: bytes.NewReader(make([]byte, 1<<20))})
	out, err := run(t, "qemu-img", "info", nbdURL(sock, "nope"))
	require.Error(t, err, out)
	t.Logf("unknown export: %s", strings.TrimSpace(out))

	rc := dialRaw(t, sock)
	rc.start()
	types, _ := rc.option(7, goData("nope"))
	require.Equal(t, []uint32{1<<31 + 6}, types, "NBD_REP_ERR_UNKNOWN")
	types, _ = rc.option(6, goData("vol")) // NBD_OPT_INFO: the handshake goes on
	require.Equal(t, []uint32{3, 3, 1}, types)
	types, payloads := rc.option(3, nil) // NBD_OPT_LIST
	require.Equal(t, []uint32{2, 1}, types)
	require.Equal(t, "\x00\x00\x00\x03vol", string(payloads[0]))
	types, _ = rc.option(5, nil) // NBD_OPT_STARTTLS: not offered
	require.Equal(t, []uint32{1<<31 + 1}, types, "NBD_REP_ERR_UNSUP")
	types, _ = rc.option(10, []byte{0, 0, 0, 3, 'v', 'o', 'l', 0, 0, 0, 0}) // meta context before structured
	require.Equal(t, []uint32{1<<31 + 3}, types, "NBD_REP_ERR_INVALID")
	types, _ = rc.option(2, nil) // NBD_OPT_ABORT
	require.Equal(t, []uint32{1}, types)
	require.True(t, rc.closed())

	// The old NBD_OPT_EXPORT_NAME cannot say "unknown": the server hangs up.
	rc = dialRaw(t, sock)
	rc.start()
	rc.write(append([]byte("IHAVEOPT\x00\x00\x00\x01\x00\x00\x00\x04"), "nope"...))
	require.True(t, rc.closed())

	// A known name enters transmission: size and flags, without the 124 zero bytes (NO_ZEROES).
	rc = dialRaw(t, sock)
	rc.start()
	rc.write(append([]byte("IHAVEOPT\x00\x00\x00\x01\x00\x00\x00\x03"), "vol"...))
	h := make([]byte, 10)
	_, err = io.ReadFull(rc.c, h)
	require.NoError(t, err)
	require.Equal(t, uint64(1<<20), be.Uint64(h))
	require.Equal(t, uint16(1|2|256), be.Uint16(h[8:]))
	rc.send(0, 0, 0, 4096, nil)
	_, errno, data := rc.reply(4096)
	require.Zero(t, errno)
	require.Equal(t, make([]byte, 4096), data)
}

// Malformed handshakes and requests end their own connection, never the server.
func TestMalformedInput(t *testing.T) {
	requireQemu(t)
	src := randomBytes(1 << 20)
	sock := serveUnix(t, nbd.Export{Name: "vol", Size: int64(len(src)), Data: bytes.NewReader(src)})

	for name, junk := range map[string][]byte{
		"client flags":   {0xff, 0xff, 0xff, 0xff},
		"option magic":   []byte("\x00\x00\x00\x03NOTMAGIC\x00\x00\x00\x07\x00\x00\x00\x00"),
		"huge option":    []byte("\x00\x00\x00\x03IHAVEOPT\x00\x00\x00\x07\xff\xff\xff\xff"),
		"huge name":      []byte("\x00\x00\x00\x03IHAVEOPT\x00\x00\x00\x01\xff\xff\xff\xff"),
		"not fixed":      {0, 0, 0, 0},
		"truncated flag": {0, 0},
	} {
		rc := dialRaw(t, sock)
		rc.write(junk)
		rc.c.(*net.UnixConn).CloseWrite()
		require.True(t, rc.closed(), name)
	}

	// Well-framed but invalid options get an error reply, and the handshake goes on.
	rc := dialRaw(t, sock)
	rc.start()
	for _, data := range [][]byte{{}, {'x'}, {0, 0, 0, 9, 'v'}, {0, 0, 0, 3, 'v', 'o', 'l', 0, 1}, {0xff, 0xff, 0xff, 0xff, 0, 0}} {
		types, _ := rc.option(7, data)
		require.Equal(t, []uint32{1<<31 + 3}, types, "NBD_REP_ERR_INVALID for %q", data)
	}
	types, _ := rc.option(3, []byte("x"))
	require.Equal(t, []uint32{1<<31 + 3}, types)
	types, _ = rc.option(1000, []byte("x"))
	require.Equal(t, []uint32{1<<31 + 1}, types, "NBD_REP_ERR_UNSUP")
	types, _ = rc.option(8, nil)
	require.Equal(t, []uint32{1}, types)
	for _, data := range [][]byte{{}, {0, 0, 0, 3, 'v', 'o', 'l'}, {0, 0, 0, 3, 'v', 'o', 'l', 0xff, 0xff, 0xff, 0xff},
		{0, 0, 0, 3, 'v', 'o', 'l', 0, 0, 0, 1, 0, 0, 0, 5, 'x'}, {0, 0, 0, 3, 'v', 'o', 'l', 0, 0, 0, 0, 'x'}} {
		types, _ := rc.option(10, data)
		require.Equal(t, []uint32{1<<31 + 3}, types, "NBD_REP_ERR_INVALID for %q", data)
	}
	rc.handshakeGo("vol", false, false)
	rc.write([]byte("this is not an NBD request header"))
	require.True(t, rc.closed(), "bad request magic")

	// And the server still serves a well-behaved client.
	out := mustRun(t, "qemu-io", "-f", "raw", "-r", "-c", "read -v 0 16", nbdURL(sock, "vol"))
	require.Contains(t, out, hexDump(src[:16]))
}

// Refused requests fail alone: the connection goes on serving, in both reply forms.
func TestRefusedRequests(t *testing.T) {
	src := randomBytes(1 << 20)
	sock := serveUnix(t, nbd.Export{Name: "vol", Size: int64(len(src)), Data: bytes.NewReader(src)})
	for _, structured := range []bool{false, true} {
		rc := dialRaw(t, sock)
		require.Equal(t, uint64(len(src)), rc.handshakeGo("vol", structured, false))
		size := uint64(len(src))
		for _, c := range []struct {
			name       string
			typ, flags uint16
			offset     uint64
			length     uint32
			payload    []byte
			errno      uint32
		}{
			{name: "past the end", typ: 0, offset: size - 512, length: 1024, errno: 22},
			{name: "offset past the end", typ: 0, offset: 1 << 62, length: 512, errno: 22},
			{name: "offset wraps", typ: 0, offset: ^uint64(0), length: 2, errno: 22},
			{name: "zero length", typ: 0, offset: 0, length: 0, errno: 22},
			{name: "beyond max payload", typ: 0, offset: 0, length: 32<<20 + 1, errno: 75},
			{name: "write", typ: 1, offset: 0, length: 4096, payload: make([]byte, 4096), errno: 1},
			{name: "trim", typ: 4, offset: 0, length: 4096, errno: 1},
			{name: "write zeroes", typ: 6, offset: 0, length: 4096, errno: 1},
			{name: "block status not negotiated", typ: 7, offset: 0, length: 4096, errno: 22},
			{name: "unknown command", typ: 99, offset: 0, length: 4096, errno: 22},
			{name: "flush", typ: 3},
		} {
			cookie := rc.send(c.typ, c.flags, c.offset, c.length, c.payload)
			got, errno, _ := rc.reply(0)
			require.Equal(t, cookie, got, c.name)
			require.Equal(t, c.errno, errno, c.name)
		}
		cookie := rc.send(0, 0, size-4096, 4096, nil)
		got, errno, data := rc.reply(4096)
		require.Equal(t, cookie, got)
		require.Zero(t, errno)
		require.Equal(t, src[size-4096:], data)
		rc.send(2, 0, 0, 0, nil) // NBD_CMD_DISC
		require.True(t, rc.closed())
	}
}

// failingReader fails every read that touches [bad, bad+badLen).
type failingReader struct {
	r           io.ReaderAt
	bad, badLen int64
}

func (f failingReader) ReadAt(p []byte, off int64) (int, error) {
	if off < f.bad+f.badLen && off+int64(len(p)) > f.bad {
		return 0, errors.New("store unreachable")
	}
	return f.r.ReadAt(p, off)
}

// A failing ReadAt is an I/O error for that range only.
func TestReadError(t *testing.T) {
	requireQemu(t)
	src := randomBytes(16 << 20)
	sock := serveUnix(t, nbd.Export{Name: "vol", Size: int64(len(src)),
		Data: failingReader{bytes.NewReader(src), 8 << 20, 64 << 10}})
	out, _ := run(t, "qemu-io", "-f", "raw", "-r", "-c", "read 8M 4k", "-c", "read -v 0 16", nbdURL(sock, "vol"))
	require.Contains(t, out, "Input/output error", out)
	require.Contains(t, out, hexDump(src[:16]), "the next read on the same connection succeeds: %s", out)
	out = mustRun(t, "qemu-io", "-f", "raw", "-r", "-c", "read 9M 4k", nbdURL(sock, "vol"))
	require.Contains(t, out, "read 4096/4096 bytes at offset 9437184", out)

	for _, structured := range []bool{false, true} {
		rc := dialRaw(t, sock)
		rc.handshakeGo("vol", structured, structured)
		rc.send(0, 0, 8<<20, 4096, nil)
		_, errno, _ := rc.reply(4096)
		require.Equal(t, uint32(5), errno, "EIO")
		rc.send(0, 0, 0, 4096, nil)
		_, errno, data := rc.reply(4096)
		require.Zero(t, errno)
		require.Equal(t, src[:4096], data)
	}
}

// slowReader answers every read after a delay, like a network store.
type slowReader struct {
	r        io.ReaderAt
	delay    time.Duration
	inFlight *atomic.Int64
	peak     *atomic.Int64
}

func (s slowReader) ReadAt(p []byte, off int64) (int, error) {
	n := s.inFlight.Add(1)
	defer s.inFlight.Add(-1)
	for {
		peak := s.peak.Load()
		if n <= peak || s.peak.CompareAndSwap(peak, n) {
			break
		}
	}
	time.Sleep(s.delay)
	return s.r.ReadAt(p, off)
}

// Pipelined reads on one connection run concurrently, bounded, and every reply matches its request.
func TestPipelinedReads(t *testing.T) {
	src := randomBytes(4 << 20)
	var inFlight, peak atomic.Int64
	sock := serveUnix(t, nbd.Export{Name: "vol", Size: int64(len(src)),
		Data: slowReader{bytes.NewReader(src), 50 * time.Millisecond, &inFlight, &peak}})
	for _, structured := range []bool{false, true} {
		peak.Store(0)
		rc := dialRaw(t, sock)
		rc.handshakeGo("vol", structured, false)
		const n = 64
		offsets := map[uint64]uint64{}
		start := time.Now()
		for i := range n {
			off := uint64(i) * 65536
			offsets[rc.send(0, 0, off, 65536, nil)] = off
		}
		for range n {
			cookie, errno, data := rc.reply(65536)
			require.Zero(t, errno)
			off, ok := offsets[cookie]
			require.True(t, ok, "reply to a request never sent, or twice")
			delete(offsets, cookie)
			require.Equal(t, src[off:off+65536], data)
		}
		elapsed := time.Since(start)
		require.Equal(t, int64(16), peak.Load(), "in flight per connection")
		require.Less(t, elapsed, 2*time.Second, "64 reads of 50 ms, 16 at a time")
	}
}

func TestNewValidates(t *testing.T) {
	r := bytes.NewReader(nil)
	for name, exports := range map[string][]nbd.Export{
		"duplicate": {{Name: "a", Data: r}, {Name: "a", Data: r}},
		"no data":   {{Name: "a"}},
		"negative":  {{Name: "a", Size: -1, Data: r}},
		"long name": {{Name: strings.Repeat("x", 4097), Data: r}},
	} {
		_, err := nbd.New(nbd.Options{}, exports...)
		require.Error(t, err, name)
	}
}

// A client that never finishes its handshake is cut off; one that is idle in transmission is not, and
// Serve's end closes it.
func TestDeadlinesAndShutdown(t *testing.T) {
	src := randomBytes(1 << 20)
	exp := nbd.Export{Name: "vol", Size: int64(len(src)), Data: bytes.NewReader(src)}
	sock := serveUnixOpts(t, nbd.Options{HandshakeTimeout: 200 * time.Millisecond}, exp)
	silent := dialRaw(t, sock)
	require.True(t, silent.closed(), "handshake timeout")

	idle := dialRaw(t, sock)
	idle.handshakeGo("vol", true, false)
	time.Sleep(500 * time.Millisecond) // past the handshake timeout
	idle.send(0, 0, 0, 512, nil)
	_, errno, data := idle.reply(512)
	require.Zero(t, errno)
	require.Equal(t, src[:512], data)

	s, err := nbd.New(nbd.Options{}, exp)
	require.NoError(t, err)
	dir, err := os.MkdirTemp("", "nbd")
	require.NoError(t, err)
	defer os.RemoveAll(dir)
	l, err := net.Listen("unix", filepath.Join(dir, "s"))
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	rc := dialRaw(t, l.Addr().String())
	rc.handshakeGo("vol", false, false)
	cancel()
	select {
	case err := <-done:
		require.ErrorIs(t, err, context.Canceled)
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
	}
	require.True(t, rc.closed(), "Serve closes its connections on return")
	_, err = net.Dial("unix", l.Addr().String())
	require.Error(t, err, "and its listener")
}
