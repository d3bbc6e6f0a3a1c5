package nbd_test

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/holdfast/holdfast/activities/export/nbd"
	"github.com/stretchr/testify/require"
)

// requireQemu skips the test locally when the QEMU tools are missing, naming the make target that installs
// them, and fails it under CI=true: CI must never pass by skipping.
func requireQemu(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s unavailable (CI=true): %v", tool, err)
			}
			t.Skipf("%s not installed: make deps (qemu-utils) (%v)", tool, err)
		}
	}
}

// testLogger sends the server's log, debug level included, to the test's: `go test -v` shows what each
// client negotiated.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// serveUnix serves exports on a fresh unix socket until the test ends, and returns the socket's path.
func serveUnix(t *testing.T, exports ...nbd.Export) string {
	t.Helper()
	return serveUnixOpts(t, nbd.Options{}, exports...)
}

func serveUnixOpts(t *testing.T, opts nbd.Options, exports ...nbd.Export) string {
	t.Helper()
	// Not t.TempDir: a unix socket's path must fit in 108 bytes, and test names make it long.
	dir, err := os.MkdirTemp("", "nbd")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "s")
	l, err := net.Listen("unix", sock)
	require.NoError(t, err)
	serveOpts(t, l, opts, exports...)
	return sock
}

// serve runs a Server on l until the test ends, then checks that it stops promptly.
func serve(t *testing.T, l net.Listener, exports ...nbd.Export) {
	t.Helper()
	serveOpts(t, l, nbd.Options{}, exports...)
}

func serveOpts(t *testing.T, l net.Listener, opts nbd.Options, exports ...nbd.Export) {
	t.Helper()
	opts.Logger = testLogger(t)
	s, err := nbd.New(opts, exports...)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Serve returned %v, want context.Canceled", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Serve did not return after its context was cancelled")
		}
	})
}

func nbdURL(sock, name string) string { return "nbd+unix:///" + name + "?socket=" + sock }

// run runs a QEMU tool and returns its combined output and error.
func run(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

func mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := run(t, name, args...)
	require.NoError(t, err, "%s %s: %s", name, strings.Join(args, " "), out)
	return out
}

// rawClient speaks NBD by hand, to send what QEMU never would.
type rawClient struct {
	t          *testing.T
	c          net.Conn
	structured bool
	started    bool
	cookie     uint64
}

var be = binary.BigEndian

// dialRaw connects and reads the greeting; the client flags are still to be sent.
func dialRaw(t *testing.T, sock string) *rawClient {
	t.Helper()
	c, err := net.Dial("unix", sock)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))
	g := make([]byte, 18)
	_, err = io.ReadFull(c, g)
	require.NoError(t, err)
	require.Equal(t, "NBDMAGICIHAVEOPT", string(g[:16]))
	require.Equal(t, uint16(3), be.Uint16(g[16:]), "handshake flags: fixed newstyle, no zeroes")
	return &rawClient{t: t, c: c}
}

// start sends the client flags (fixed newstyle, no zeroes), once.
func (rc *rawClient) start() {
	rc.t.Helper()
	if !rc.started {
		rc.write([]byte{0, 0, 0, 3})
		rc.started = true
	}
}

func (rc *rawClient) write(b []byte) {
	rc.t.Helper()
	_, err := rc.c.Write(b)
	require.NoError(rc.t, err)
}

// option sends one option and returns the replies up to and including the final one.
func (rc *rawClient) option(opt uint32, data []byte) (types []uint32, payloads [][]byte) {
	rc.t.Helper()
	h := make([]byte, 16)
	be.PutUint64(h, 0x49484156454f5054)
	be.PutUint32(h[8:], opt)
	be.PutUint32(h[12:], uint32(len(data)))
	rc.write(append(h, data...))
	for {
		rh := make([]byte, 20)
		_, err := io.ReadFull(rc.c, rh)
		require.NoError(rc.t, err)
		require.Equal(rc.t, uint64(0x0003e889045565a9), be.Uint64(rh))
		require.Equal(rc.t, opt, be.Uint32(rh[8:]))
		typ, n := be.Uint32(rh[12:]), be.Uint32(rh[16:])
		p := make([]byte, n)
		_, err = io.ReadFull(rc.c, p)
		require.NoError(rc.t, err)
		types, payloads = append(types, typ), append(payloads, p)
		if typ == 1 || typ&(1<<31) != 0 { // ACK or an error
			return types, payloads
		}
	}
}

func goData(name string) []byte {
	d := be.AppendUint32(nil, uint32(len(name)))
	d = append(d, name...)
	return be.AppendUint16(d, 0)
}

// handshakeGo negotiates (optionally structured replies and base:allocation) and enters transmission on
// name, returning the export size.
func (rc *rawClient) handshakeGo(name string, structured, allocation bool) uint64 {
	rc.t.Helper()
	rc.start()
	if structured {
		types, _ := rc.option(8, nil)
		require.Equal(rc.t, []uint32{1}, types)
		rc.structured = true
	}
	if allocation {
		d := be.AppendUint32(nil, uint32(len(name)))
		d = append(d, name...)
		d = be.AppendUint32(d, 1)
		d = be.AppendUint32(d, uint32(len("base:allocation")))
		d = append(d, "base:allocation"...)
		types, _ := rc.option(10, d)
		require.Equal(rc.t, []uint32{4, 1}, types)
	}
	types, payloads := rc.option(7, goData(name))
	require.Equal(rc.t, []uint32{3, 3, 1}, types)
	require.Equal(rc.t, uint16(0), be.Uint16(payloads[0]))
	require.Equal(rc.t, uint16(1|2|256), be.Uint16(payloads[0][10:]), "transmission flags")
	return be.Uint64(payloads[0][2:])
}

// send sends a request and returns its cookie.
func (rc *rawClient) send(typ, flags uint16, offset uint64, length uint32, payload []byte) uint64 {
	rc.t.Helper()
	rc.cookie++
	h := make([]byte, 28)
	be.PutUint32(h, 0x25609513)
	be.PutUint16(h[4:], flags)
	be.PutUint16(h[6:], typ)
	be.PutUint64(h[8:], rc.cookie)
	be.PutUint64(h[16:], offset)
	be.PutUint32(h[24:], length)
	rc.write(append(h, payload...))
	return rc.cookie
}

// reply reads one reply: its cookie, error and data (a READ's bytes or a BLOCK_STATUS payload). readLen
// is the READ's length for a simple reply, which does not carry it.
func (rc *rawClient) reply(readLen uint32) (cookie uint64, errno uint32, data []byte) {
	rc.t.Helper()
	if !rc.structured {
		h := make([]byte, 16)
		_, err := io.ReadFull(rc.c, h)
		require.NoError(rc.t, err)
		require.Equal(rc.t, uint32(0x67446698), be.Uint32(h))
		cookie, errno = be.Uint64(h[8:]), be.Uint32(h[4:])
		if errno == 0 && readLen > 0 {
			data = make([]byte, readLen)
			_, err = io.ReadFull(rc.c, data)
			require.NoError(rc.t, err)
		}
		return cookie, errno, data
	}
	h := make([]byte, 20)
	_, err := io.ReadFull(rc.c, h)
	require.NoError(rc.t, err)
	require.Equal(rc.t, uint32(0x668e33ef), be.Uint32(h))
	require.Equal(rc.t, uint16(1), be.Uint16(h[4:]), "every reply is one chunk, flagged done")
	typ, cookie, n := be.Uint16(h[6:]), be.Uint64(h[8:]), be.Uint32(h[16:])
	p := make([]byte, n)
	_, err = io.ReadFull(rc.c, p)
	require.NoError(rc.t, err)
	switch typ {
	case 0:
		return cookie, 0, nil
	case 1: // offset, data
		return cookie, 0, p[8:]
	case 5: // context ID, descriptors
		return cookie, 0, p
	case 1<<15 + 1:
		require.GreaterOrEqual(rc.t, len(p), 6)
		return cookie, be.Uint32(p), nil
	}
	rc.t.Fatalf("unexpected chunk type %d", typ)
	return
}

// closed reports whether the server has closed the connection (reads EOF within a second).
func (rc *rawClient) closed() bool {
	require.NoError(rc.t, rc.c.SetReadDeadline(time.Now().Add(time.Second)))
	_, err := io.ReadFull(rc.c, make([]byte, 1))
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)
}
