package file

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/holdfast/holdfast/activities/volume"
	"github.com/holdfast/holdfast/activities/volume/volumetest"
)

const hMiB = int64(1) << 20

// hydrationFixture is a backup stand-in (a raw file with data in some extents, zeros elsewhere) served
// read-only over NBD by qemu-nbd, as the agent's export serves a backup, and the source a hydration reads.
type hydrationFixture struct {
	dir     string
	data    []byte
	extents []volume.Extent
	backing volume.NBDBacking
	file    *os.File
	nbd     *exec.Cmd
}

func newHydrationFixture(t *testing.T, size int64, extents ...volume.Extent) *hydrationFixture {
	t.Helper()
	dir := t.TempDir()
	f := &hydrationFixture{dir: dir, data: make([]byte, size), extents: extents}
	rng := rand.New(rand.NewPCG(7, 7))
	for _, e := range extents {
		for i := e.Offset; i < e.End(); i++ {
			f.data[i] = byte(rng.Uint32())
		}
	}
	src := filepath.Join(dir, "backup.raw")
	require.NoError(t, os.WriteFile(src, f.data, 0o600))
	var err error
	f.file, err = os.Open(src)
	require.NoError(t, err)
	t.Cleanup(func() { f.file.Close() })
	f.backing = volume.NBDBacking{Socket: filepath.Join(dir, "export.sock"), Export: "vol-new"}
	f.serve(t)
	return f
}

// serve starts (or restarts) the export.
func (f *hydrationFixture) serve(t *testing.T) {
	t.Helper()
	f.nbd = exec.Command("qemu-nbd", "-r", "-f", "raw", "-t", "-x", f.backing.Export, "-k", f.backing.Socket,
		filepath.Join(f.dir, "backup.raw"))
	require.NoError(t, f.nbd.Start())
	cmd := f.nbd
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	require.Eventually(t, func() bool { _, err := os.Stat(f.backing.Socket); return err == nil },
		30*time.Second, 20*time.Millisecond, "qemu-nbd socket")
}

func (f *hydrationFixture) stop() {
	_ = f.nbd.Process.Kill()
	_ = f.nbd.Wait()
	os.Remove(f.backing.Socket)
}

func (f *hydrationFixture) ReadAt(p []byte, off int64) (int, error) { return f.file.ReadAt(p, off) }
func (f *hydrationFixture) Size() int64                             { return int64(len(f.data)) }
func (f *hydrationFixture) Data() []volume.Extent                   { return f.extents }

// write writes n bytes of value at off into the volume through QEMU (qemu-io), as a guest would.
func write(t *testing.T, path string, off, n int64, value byte) {
	t.Helper()
	out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P 0x%x %d %d", value, off, n), path).CombinedOutput()
	require.NoError(t, err, "%s", out)
}

// contents reads the image independently of the driver.
func contents(t *testing.T, path string) []byte {
	t.Helper()
	raw := filepath.Join(t.TempDir(), "contents.raw")
	out, err := exec.Command("qemu-img", "convert", "-f", "qcow2", "-O", "raw", path, raw).CombinedOutput()
	require.NoError(t, err, "%s", out)
	b, err := os.ReadFile(raw)
	require.NoError(t, err)
	return b
}

func requireEqualBytes(t *testing.T, want, got []byte, what string) {
	t.Helper()
	require.Equal(t, len(want), len(got), "%s: size", what)
	if i := firstDiff(want, got); i >= 0 {
		t.Fatalf("%s: first difference at byte %d", what, i)
	}
}

func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return len(a)
}

// An overlay over the export reads the backup at once and takes writes; hydration copies the export's data
// in slices (resuming, after an interruption, with what is still missing) and then drops the backing: the
// volume stands alone, with the backup's bytes plus the write, and the export is no longer needed.
func TestHydrateOffline(t *testing.T) {
	const size = 24 * hMiB
	f := newHydrationFixture(t, size, volume.Extent{Offset: 0, Length: 6 * hMiB},
		volume.Extent{Offset: 12 * hMiB, Length: 8 * hMiB})
	d := New(NoLibvirt)
	vol := volume.Ref{Type: volume.TypeFile, Path: filepath.Join(t.TempDir(), "new.qcow2"), CreatedBy: "op-1"}
	ctx := context.Background()
	require.NoError(t, d.CreateOverlay(ctx, vol, size, f.backing))
	require.NoError(t, d.CreateOverlay(ctx, vol, size, f.backing), "the operation's retry finds its overlay")
	hydrated, err := d.Hydrated(ctx, vol)
	require.NoError(t, err)
	assert.False(t, hydrated)
	requireEqualBytes(t, f.data, contents(t, vol.Path), "readable at once, through the export")

	want := bytes.Clone(f.data)
	write(t, vol.Path, 5*hMiB, 2*hMiB, 0x5a) // across data and zeros
	for i := 5 * hMiB; i < 7*hMiB; i++ {
		want[i] = 0x5a
	}

	defer func(n int64) { hydrateSliceBytes = n }(hydrateSliceBytes)
	hydrateSliceBytes = 4 * hMiB
	// Interrupted after its first slice: what it copied stays copied.
	cctx, cancel := context.WithCancel(ctx)
	var reports []int64
	err = d.Hydrate(cctx, vol, f.backing, f, func(done, total int64) {
		require.Equal(t, int64(14*hMiB), total, "the export's data, not its zeros")
		reports = append(reports, done)
		if done >= 4*hMiB {
			cancel()
		}
	})
	require.ErrorIs(t, err, context.Canceled)
	first := reports[0]
	assert.Equal(t, int64(hMiB), first, "the guest's write already covers 1 MiB of the data")

	reports = nil
	require.NoError(t, d.Hydrate(ctx, vol, f.backing, f, func(done, _ int64) { reports = append(reports, done) }))
	assert.GreaterOrEqual(t, reports[0], 5*hMiB, "resumed: the first slice is not copied again")
	assert.Equal(t, int64(14*hMiB), reports[len(reports)-1])
	hydrated, err = d.Hydrated(ctx, vol)
	require.NoError(t, err)
	assert.True(t, hydrated)

	f.stop() // the export is gone: the volume must not need it
	n, err := d.Size(ctx, vol)
	require.NoError(t, err, "stands alone: the driver serves it like any volume")
	assert.Equal(t, size, n)
	requireEqualBytes(t, want, contents(t, vol.Path), "hydrated volume")
	require.NoError(t, d.Hydrate(ctx, vol, f.backing, f, func(int64, int64) {}), "done is done")
}

// The driver creates overlays only where nothing is, hydrates only its own overlays, and never drops a
// backing it did not write.
func TestOverlaysAreTheOperationsOwn(t *testing.T) {
	const size = 4 * hMiB
	f := newHydrationFixture(t, size, volume.Extent{Offset: 0, Length: hMiB})
	d := New(NoLibvirt)
	ctx := context.Background()
	dir := t.TempDir()

	// A neighbour's disk at the path: refused, untouched.
	taken := filepath.Join(dir, "taken.qcow2")
	require.NoError(t, exec.Command("qemu-img", "create", "-q", "-f", "qcow2", taken, "4M").Run())
	before, err := os.ReadFile(taken)
	require.NoError(t, err)
	err = d.CreateOverlay(ctx, volume.Ref{Type: volume.TypeFile, Path: taken, CreatedBy: "op-1"}, size, f.backing)
	require.ErrorIs(t, err, volume.ErrExists)
	after, err := os.ReadFile(taken)
	require.NoError(t, err)
	assert.Equal(t, before, after)

	// The operation's own overlay, asked again over another export: refused.
	vol := volume.Ref{Type: volume.TypeFile, Path: filepath.Join(dir, "new.qcow2"), CreatedBy: "op-1"}
	require.NoError(t, d.CreateOverlay(ctx, vol, size, f.backing))
	other := volume.NBDBacking{Socket: f.backing.Socket, Export: "someone-else"}
	require.ErrorIs(t, d.CreateOverlay(ctx, vol, size, other), volume.ErrExists)
	require.ErrorIs(t, d.CreateOverlay(ctx, vol, 2*size, f.backing), volume.ErrExists)

	// An image backed by a host file (as a guest-crafted or foreign image would be): never hydrated.
	host := filepath.Join(dir, "host-secret.raw")
	require.NoError(t, os.WriteFile(host, make([]byte, size), 0o600))
	foreign := filepath.Join(dir, "foreign.qcow2")
	require.NoError(t, exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", host, foreign, "4M").Run())
	err = d.Hydrate(ctx, volume.Ref{Type: volume.TypeFile, Path: foreign}, f.backing, f, func(int64, int64) {})
	require.ErrorIs(t, err, volume.ErrUnsupported)
	_, backing, err := readOverlay(volume.Ref{Type: volume.TypeFile, Path: foreign}, foreign)
	require.NoError(t, err)
	assert.Equal(t, host, backing, "backing left as it was")

	// Raw volumes have no backing to read through.
	raw := volume.Ref{Type: volume.TypeFile, Path: filepath.Join(dir, "new.raw"), CreatedBy: "op-2"}
	require.ErrorIs(t, d.CreateOverlay(ctx, raw, size, f.backing), volume.ErrUnsupported)
	_, err = os.Lstat(raw.Path)
	assert.True(t, errors.Is(err, os.ErrNotExist), "nothing made")
}

// A running domain uses the overlay: it reads the backup through it and writes into it while it hydrates,
// and the hydration is QEMU's block-stream through libvirt (the driver's own copy cannot open the image while
// the domain holds QEMU's write lock); the result is the backup plus the guest's writes.
func TestHydrateUnderARunningDomain(t *testing.T) {
	uri := os.Getenv("HOLDFAST_LIBVIRT_URI")
	volumetest.RequireLibvirt(t, uri)
	const size = 32 * hMiB
	f := newHydrationFixture(t, size, volume.Extent{Offset: 0, Length: 10 * hMiB},
		volume.Extent{Offset: 16 * hMiB, Length: 8 * hMiB})
	d := New(uri)
	vol := volume.Ref{Type: volume.TypeFile, Path: filepath.Join(t.TempDir(), "live.qcow2"), CreatedBy: "op-1"}
	ctx := context.Background()
	require.NoError(t, d.CreateOverlay(ctx, vol, size, f.backing))
	dom := volumetest.StartDomain(t, uri, fmt.Sprintf(`<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='%s'/><target dev='vda' bus='virtio'/></disk>`, vol.Path))
	want := bytes.Clone(f.data)
	dom.Write(t, "vda", 9*hMiB, 2*hMiB, 0x66)
	for i := 9 * hMiB; i < 11*hMiB; i++ {
		want[i] = 0x66
	}
	var last, total int64
	require.NoError(t, d.Hydrate(ctx, vol, f.backing, f, func(done, all int64) { last, total = done, all }))
	assert.Equal(t, total, last, "progress reaches its total")
	hydrated, err := d.Hydrated(ctx, vol)
	require.NoError(t, err)
	assert.True(t, hydrated, "QEMU dropped the backing")
	dom.Write(t, "vda", 30*hMiB, hMiB, 0x77) // the guest keeps writing, with the export gone
	for i := 30 * hMiB; i < 31*hMiB; i++ {
		want[i] = 0x77
	}
	f.stop()
	dom.Stop(t)
	requireEqualBytes(t, want, contents(t, vol.Path), "hydrated under the domain")
}

// A volume attached to a domain that is not running yet (a panel attached it to a stopped VM) is left alone
// while the domain may start: the domain starts (it gets the image's lock), and the hydration is then the
// domain's block-stream.
func TestHydrationLeavesAnAttachedDomainFreeToStart(t *testing.T) {
	uri := os.Getenv("HOLDFAST_LIBVIRT_URI")
	volumetest.RequireLibvirt(t, uri)
	const size = 16 * hMiB
	f := newHydrationFixture(t, size, volume.Extent{Offset: 0, Length: 8 * hMiB})
	d := New(uri)
	vol := volume.Ref{Type: volume.TypeFile, Path: filepath.Join(t.TempDir(), "attached.qcow2"), CreatedBy: "op-1"}
	ctx := context.Background()
	require.NoError(t, d.CreateOverlay(ctx, vol, size, f.backing))
	dom := volumetest.DefineDomain(t, uri, fmt.Sprintf(`<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='%s'/><target dev='vda' bus='virtio'/></disk>`, vol.Path))

	hydrated := make(chan error, 1)
	var reports atomic.Int64
	go func() {
		hydrated <- d.Hydrate(ctx, vol, f.backing, f, func(int64, int64) { reports.Add(1) })
	}()
	time.Sleep(3 * hydratePoll) // several looks at the attachment
	assert.Zero(t, reports.Load(), "nothing copied while the domain may start")
	dom.Start(t) // fails if the hydration holds the image's lock
	select {
	case err := <-hydrated:
		require.NoError(t, err)
	case <-time.After(2 * time.Minute):
		t.Fatal("hydration under the started domain did not end")
	}
	dom.Stop(t)
	f.stop()
	requireEqualBytes(t, f.data, contents(t, vol.Path), "hydrated by the domain")
}
