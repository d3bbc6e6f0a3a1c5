package export_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/holdfast/holdfast/activities/backup"
	"github.com/holdfast/holdfast/activities/backup/fs"
	"github.com/holdfast/holdfast/activities/export"
	"github.com/holdfast/holdfast/activities/export/nbd"
)

// qemu runs a QEMU tool and returns its output, failing tb when it fails. A missing tool skips tb locally and
// fails it under CI=true.
func qemu(tb testing.TB, args ...string) string {
	tb.Helper()
	if _, err := exec.LookPath(args[0]); err != nil {
		if os.Getenv("CI") == "true" {
			tb.Fatalf("%s unavailable (CI=true): %v", args[0], err)
		}
		tb.Skipf("%s not installed: make deps (qemu-utils) (%v)", args[0], err)
	}
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	require.NoError(tb, err, "%v: %s", args, out)
	return string(out)
}

// The instant-restore mechanism on real QEMU tools, offline: a backup (encrypted, with zero ranges) served as
// an NBD export straight from the store becomes the backing of a new qcow2 volume, which is readable and
// writable at once; a hydration (qemu-img rebase onto no backing) copies the backup's bytes in behind the
// writes and drops the dependency. The result is the backup plus the writes, byte for byte, and needs
// neither the export nor the store any more.
func TestBackupServedAsOverlayBackingHydrates(t *testing.T) {
	dir := t.TempDir()
	st, err := fs.New(fs.Config{Path: filepath.Join(dir, "store")})
	require.NoError(t, err)
	e, err := backup.New(st, backup.Options{Key: bytes.Repeat([]byte{3}, 32), Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	const mib = 1 << 20
	img := make([]byte, 24*mib) // cells: data, zeros, data with a zero tail, ...
	rng := rand.New(rand.NewPCG(1, 2))
	for off := 0; off < len(img); off += 4 * mib {
		if off/(4*mib)%3 == 1 {
			continue // a zero cell: a zero range in the manifest
		}
		for i := off; i < off+3*mib; i++ {
			img[i] = byte(rng.Uint32())
		}
	}
	_, err = e.Backup(context.Background(), backup.BackupRequest{VolumeID: "vol-1", BackupID: "b1",
		Source: bytes.NewReader(img), Size: int64(len(img)), SourceType: "raw"})
	require.NoError(t, err)

	r, err := e.OpenBackup(context.Background(), "vol-1", "b1", backup.ReaderOptions{})
	require.NoError(t, err)
	defer r.Close()
	srv, err := nbd.New(nbd.Options{}, export.Backup("vol-1", r))
	require.NoError(t, err)
	sockDir, err := os.MkdirTemp("", "export") // a unix socket path must fit in 108 bytes
	require.NoError(t, err)
	defer os.RemoveAll(sockDir)
	sock := filepath.Join(sockDir, "nbd.sock")
	l, err := net.Listen("unix", sock)
	require.NoError(t, err)
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, l) }()

	overlay := filepath.Join(dir, "new-volume.qcow2")
	qemu(t, "qemu-img", "create", "-f", "qcow2", "-F", "raw", "-b", "nbd+unix:///vol-1?socket="+sock, overlay)
	// Usable at once: the backup's bytes read through, a guest's write lands in the overlay.
	qemu(t, "qemu-io", "-f", "qcow2", "-c", "read -P 0 4M 4M", "-c", "write -P 0xab 5M 64k",
		"-c", "read -P 0xab 5M 64k", overlay)
	want := bytes.Clone(img)
	for i := 5 * mib; i < 5*mib+64<<10; i++ {
		want[i] = 0xab
	}
	// Hydrate offline, then take the export away: the volume must stand alone.
	qemu(t, "qemu-img", "rebase", "-f", "qcow2", "-b", "", overlay)
	stop()
	require.ErrorIs(t, <-served, context.Canceled)
	var info struct {
		Backing string `json:"backing-filename"`
	}
	require.NoError(t, json.Unmarshal([]byte(qemu(t, "qemu-img", "info", "--output=json", overlay)), &info))
	require.Empty(t, info.Backing, "the hydrated volume still depends on the export")
	out := filepath.Join(dir, "out.raw")
	qemu(t, "qemu-img", "convert", "-f", "qcow2", "-O", "raw", overlay, out)
	got, err := os.ReadFile(out)
	require.NoError(t, err)
	require.True(t, bytes.Equal(got, want), "hydrated volume differs from the backup plus the write")
}
