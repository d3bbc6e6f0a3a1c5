package file

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"

	"github.com/holdfast/holdfast/activities/volume"
)

// A minimal NBD client (fixed-newstyle handshake, simple replies) over a private qemu-nbd, used to write
// guest-visible bytes into qcow2 images for restores. qemu-nbd owns the qcow2 allocation logic, so Holdfast
// never writes qcow2 metadata itself.

const (
	nbdRequestMagic = 0x25609513
	nbdReplyMagic   = 0x67446698
	nbdCmdWrite     = 1
	nbdCmdDisc      = 2
	nbdCmdFlush     = 3
	nbdMaxWrite     = 16 << 20 // below qemu-nbd's 32 MiB request limit
)

type nbdWriter struct {
	mu     sync.Mutex
	conn   net.Conn
	size   int64
	handle uint64
	cmd    *exec.Cmd
	done   chan error // qemu-nbd's exit
	dir    string
}

// startQemuNBD exports path (format fmt) read-write on a private UNIX socket and connects to it, with
// QEMU's writeback cache: writes are durable once flushed (Flush, Close).
func startQemuNBD(ctx context.Context, path, format string) (*nbdWriter, error) {
	return startQemuNBDCache(ctx, path, format, "writeback")
}

// startQemuNBDCache is startQemuNBD with QEMU's cache mode cache ("none": O_DIRECT data writes, so a data
// cluster is on disk before any metadata naming it can be).
func startQemuNBDCache(ctx context.Context, path, format, cache string) (*nbdWriter, error) {
	dir, err := os.MkdirTemp("", "holdfast-nbd-")
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(dir, "nbd.sock")
	// --cache=writeback + flush on Close keeps writes fast and durable at the end of a restore.
	cmd := exec.Command("qemu-nbd", "--format", format, "--socket", sock, "--shared=1",
		"--cache="+cache, "--discard=unmap", path)
	var stderr tailBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start qemu-nbd: %w", err)
	}
	w := &nbdWriter{cmd: cmd, dir: dir, done: make(chan error, 1)}
	go func() { w.done <- cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", sock)
		if err == nil {
			w.conn = c
			break
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			w.kill()
			return nil, fmt.Errorf("qemu-nbd %s: %v: %s", path, err, stderr.String())
		}
		select {
		case werr := <-w.done:
			os.RemoveAll(dir)
			return nil, fmt.Errorf("qemu-nbd %s exited: %v: %s", path, werr, stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	if err := w.handshake(); err != nil {
		w.kill()
		return nil, fmt.Errorf("nbd handshake with qemu-nbd %s: %w: %s", path, err, stderr.String())
	}
	return w, nil
}

func (w *nbdWriter) handshake() error {
	be := binary.BigEndian
	_ = w.conn.SetDeadline(time.Now().Add(30 * time.Second))
	defer w.conn.SetDeadline(time.Time{})
	var hello [18]byte
	if _, err := io.ReadFull(w.conn, hello[:]); err != nil {
		return err
	}
	if string(hello[:8]) != "NBDMAGIC" || string(hello[8:16]) != "IHAVEOPT" {
		return errors.New("not a newstyle NBD server")
	}
	// Client flags: fixed newstyle (1) + no zeroes (2); then NBD_OPT_EXPORT_NAME with the default export "".
	var req [4 + 8 + 4 + 4]byte
	be.PutUint32(req[0:], 3)
	copy(req[4:], "IHAVEOPT")
	be.PutUint32(req[12:], 1)
	be.PutUint32(req[16:], 0)
	if _, err := w.conn.Write(req[:]); err != nil {
		return err
	}
	var info [10]byte
	if _, err := io.ReadFull(w.conn, info[:]); err != nil {
		return err
	}
	w.size = int64(be.Uint64(info[0:]))
	return nil
}

func (w *nbdWriter) request(cmd uint16, off int64, data []byte) error {
	be := binary.BigEndian
	w.handle++
	hdr := make([]byte, 28, 28+len(data))
	be.PutUint32(hdr[0:], nbdRequestMagic)
	be.PutUint16(hdr[6:], cmd)
	be.PutUint64(hdr[8:], w.handle)
	be.PutUint64(hdr[16:], uint64(off))
	be.PutUint32(hdr[24:], uint32(len(data)))
	if _, err := w.conn.Write(append(hdr, data...)); err != nil {
		return err
	}
	if cmd == nbdCmdDisc {
		return nil
	}
	var rep [16]byte
	if _, err := io.ReadFull(w.conn, rep[:]); err != nil {
		return err
	}
	if be.Uint32(rep[0:]) != nbdReplyMagic || be.Uint64(rep[8:]) != w.handle {
		return errors.New("nbd: unexpected reply")
	}
	if e := be.Uint32(rep[4:]); e != 0 {
		return fmt.Errorf("nbd: server error %d", e)
	}
	return nil
}

func (w *nbdWriter) Size() int64 { return w.size }

func (w *nbdWriter) WriteAt(p []byte, off int64) (int, error) {
	if err := volume.CheckWrite(off, len(p), w.size); err != nil {
		return 0, err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for n < len(p) {
		chunk := min(len(p)-n, nbdMaxWrite)
		if err := w.request(nbdCmdWrite, off+int64(n), p[n:n+chunk]); err != nil {
			return n, err
		}
		n += chunk
	}
	return n, nil
}

// Flush asks qemu-nbd to flush the image (NBD_CMD_FLUSH): the writes before it are on disk once it answers.
func (w *nbdWriter) Flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.request(nbdCmdFlush, 0, nil)
}

func (w *nbdWriter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	err := w.request(nbdCmdFlush, 0, nil)
	_ = w.request(nbdCmdDisc, 0, nil)
	w.conn.Close()
	// Without --persistent, qemu-nbd exits once its only client has gone, after closing the image cleanly.
	select {
	case werr := <-w.done:
		if err == nil && werr != nil {
			err = fmt.Errorf("qemu-nbd: %w", werr)
		}
	case <-time.After(30 * time.Second):
		w.cmd.Process.Kill()
		<-w.done
		if err == nil {
			err = errors.New("qemu-nbd did not exit after disconnect")
		}
	}
	os.RemoveAll(w.dir)
	return err
}

func (w *nbdWriter) kill() {
	if w.conn != nil {
		w.conn.Close()
	}
	_ = w.cmd.Process.Kill()
	<-w.done
	os.RemoveAll(w.dir)
}

// tailBuffer keeps the last few KiB a helper process wrote to stderr, for error messages.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > 4096 {
		t.buf = t.buf[len(t.buf)-4096:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
