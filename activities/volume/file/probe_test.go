package file_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/holdfast/holdfast/activities/volume"
	"github.com/holdfast/holdfast/activities/volume/file"
)

// Nothing a guest wrote decides a volume's format, and nothing but a regular file is a volume. These run
// without libvirt: they are about files, not domains.

const secretText = "HOLDFAST-HOST-SECRET-0123456789 "

func tctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// hostSecret writes a host file with known content, standing in for /etc/shadow or a neighbour's disk.
func hostSecret(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "host-secret")
	require.NoError(t, os.WriteFile(path, bytes.Repeat([]byte(secretText), (1<<20)/len(secretText)), 0o600))
	return path
}

func qemuImg(t *testing.T, args ...string) {
	t.Helper()
	out, err := exec.Command("qemu-img", args...).CombinedOutput()
	require.NoError(t, err, "qemu-img %v: %s", args, out)
}

// qcow2WithBacking returns the bytes of a genuine qcow2 image (virtual size 4 MiB) whose backing file is
// backing: the header a hostile guest writes to the start of its raw disk.
func qcow2WithBacking(t *testing.T, backing string) []byte {
	t.Helper()
	p := filepath.Join(t.TempDir(), "hostile.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-b", backing, "-F", "raw", p, "4M")
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	return b
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return b
}

func readSnapshot(t *testing.T, d volume.Driver, vol volume.Ref, name string) []byte {
	t.Helper()
	r, err := d.OpenSnapshot(tctx(t), vol, name)
	require.NoError(t, err)
	defer r.Close()
	got := make([]byte, r.Size())
	n, err := r.ReadAt(got, 0)
	require.Equal(t, len(got), n, "read: %v", err)
	return got
}

// A raw volume's guest wrote a qcow2 header whose backing file is a host file. The volume is raw because it
// was registered raw (or, registered before formats were recorded, because its name does not end in
// .qcow2): every operation sees the guest's bytes as they are, and the host file is never read.
func TestRawVolumeWithGuestWrittenQCOW2HeaderStaysRaw(t *testing.T) {
	dir := t.TempDir()
	secret := hostSecret(t, dir)
	hostile := qcow2WithBacking(t, secret)
	const size = 2 << 20 // differs from the header's virtual size (4 MiB)
	disk := make([]byte, size)
	copy(disk, hostile)
	copy(disk[size-4096:], bytes.Repeat([]byte{0x5a}, 4096))

	for _, tc := range []struct {
		name   string
		format volume.Format
	}{
		{"disk.raw", volume.FormatRaw},
		{"disk.qcow2-registered-raw", volume.FormatRaw},
		{"disk.raw", ""},
		{"disk.img", ""},
		{"sdb", ""},
	} {
		t.Run(tc.name+"/format="+string(tc.format), func(t *testing.T) {
			ctx := tctx(t)
			d := file.New(file.NoLibvirt)
			path := filepath.Join(t.TempDir(), tc.name)
			require.NoError(t, os.WriteFile(path, disk, 0o600))
			vol := volume.Ref{Type: volume.TypeFile, Path: path, Format: tc.format}

			got, err := d.Size(ctx, vol)
			require.NoError(t, err)
			require.Equal(t, int64(size), got, "the size of a raw volume is its file's")

			s, err := d.CreateSnapshot(ctx, vol, "s1")
			require.NoError(t, err)
			require.Equal(t, int64(size), s.Size)
			require.Equal(t, disk, readFile(t, path), "taking a snapshot does not touch the guest's bytes")
			snap := readSnapshot(t, d, vol, "s1")
			require.Equal(t, disk, snap, "the snapshot holds the guest's bytes, header included")
			require.NotContains(t, string(snap), secretText)
			list, err := d.ListSnapshots(ctx, vol)
			require.NoError(t, err)
			require.Len(t, list, 1)
			require.Equal(t, int64(size), list[0].Size)

			// In place writes go to the raw bytes; a rollback restores them.
			w, err := d.OpenWriter(ctx, vol)
			require.NoError(t, err)
			require.Equal(t, int64(size), w.Size())
			_, err = w.WriteAt([]byte("overwritten"), 0)
			require.NoError(t, err)
			require.NoError(t, w.Close())
			require.Equal(t, []byte("overwritten"), readFile(t, path)[:11])
			require.NoError(t, d.RollbackSnapshot(ctx, vol, "s1"))
			require.Equal(t, disk, readFile(t, path))

			// A copy to a new raw volume is the same bytes.
			dst := volume.Ref{Type: volume.TypeFile, Path: filepath.Join(filepath.Dir(path), "copy.raw"),
				Format: volume.FormatRaw, CreatedBy: "op-clone"}
			require.NoError(t, d.CreateVolumeFromSnapshot(ctx, vol, "s1", dst))
			require.Equal(t, disk, readFile(t, dst.Path))

			require.NoError(t, d.DeleteSnapshot(ctx, vol, "s1"))
			require.Equal(t, disk, readFile(t, path))
			require.NotContains(t, string(readFile(t, secret)), "overwritten")
		})
	}
}

// A volume registered as qcow2 whose image names a backing file or an external data file is refused by
// every operation: following either reads (or writes) a host file. The error does not name that file.
func TestQCOW2WithBackingOrDataFileIsRefused(t *testing.T) {
	dir := t.TempDir()
	secret := hostSecret(t, dir)
	withBacking := filepath.Join(dir, "backed.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-b", secret, "-F", "raw", withBacking, "1M")
	withData := filepath.Join(dir, "data.qcow2")
	dataFile := filepath.Join(dir, "external-data")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-o", "data_file="+dataFile+",data_file_raw=on", withData, "1M")

	for _, path := range []string{withBacking, withData} {
		for _, format := range []volume.Format{volume.FormatQCOW2, ""} {
			t.Run(filepath.Base(path)+"/format="+string(format), func(t *testing.T) {
				ctx := tctx(t)
				d := file.New(file.NoLibvirt)
				vol := volume.Ref{Type: volume.TypeFile, Path: path, Format: format}
				before := readFile(t, path)
				check := func(what string, err error) {
					t.Helper()
					require.ErrorIs(t, err, volume.ErrUnsupported, what)
					require.NotContains(t, err.Error(), secret, what)
					require.NotContains(t, err.Error(), dataFile, what)
				}
				_, err := d.Size(ctx, vol)
				check("Size", err)
				_, err = d.CreateSnapshot(ctx, vol, "s1")
				check("CreateSnapshot", err)
				_, err = d.ListSnapshots(ctx, vol)
				check("ListSnapshots", err)
				_, err = d.OpenSnapshot(ctx, vol, "s1")
				check("OpenSnapshot", err)
				check("RollbackSnapshot", d.RollbackSnapshot(ctx, vol, "s1"))
				_, err = d.OpenWriter(ctx, vol)
				check("OpenWriter", err)
				err = d.CreateVolumeFromSnapshot(ctx, vol, "s1", volume.Ref{Type: volume.TypeFile,
					Path: filepath.Join(t.TempDir(), "x.raw"), CreatedBy: "op-clone"})
				check("CreateVolumeFromSnapshot", err)
				require.Equal(t, before, readFile(t, path), "the image is untouched")
				requireAbsent(t, metaDirOf(path))
			})
		}
	}
}

// A volume recorded as qcow2 whose file is not qcow2 (a raw disk registered under the wrong format) is
// refused, not read as raw.
func TestRecordedQCOW2ThatIsNotQCOW2IsRefused(t *testing.T) {
	ctx := tctx(t)
	path := filepath.Join(t.TempDir(), "disk.qcow2")
	require.NoError(t, os.WriteFile(path, bytes.Repeat([]byte{0x11}, 1<<20), 0o600))
	d := file.New(file.NoLibvirt)
	for _, format := range []volume.Format{volume.FormatQCOW2, ""} {
		_, err := d.Size(ctx, volume.Ref{Type: volume.TypeFile, Path: path, Format: format})
		require.ErrorIs(t, err, volume.ErrUnsupported, "format %q", format)
		require.ErrorContains(t, err, "not a qcow2 image")
	}
	_, err := d.Size(ctx, volume.Ref{Type: volume.TypeFile, Path: path, Format: "vmdk"})
	require.ErrorIs(t, err, volume.ErrUnsupported, "an unknown format")
	_, err = d.CreateVolume(ctx, volume.Ref{Type: volume.TypeFile, Path: path + ".new", Format: "vmdk"}, 1<<20)
	require.ErrorIs(t, err, volume.ErrUnsupported, "an unknown format")
	requireAbsent(t, path+".new")
}

// A symlink, a device, a FIFO or a directory is never a volume: every operation refuses it without
// creating anything next to it, and without touching what it points to.
func TestSymlinksAndDevicesAreNotVolumes(t *testing.T) {
	dir := t.TempDir()
	secret := hostSecret(t, dir)
	secretBefore := readFile(t, secret)
	link := filepath.Join(dir, "link.raw")
	require.NoError(t, os.Symlink(secret, link))
	fifo := filepath.Join(dir, "fifo.raw")
	require.NoError(t, syscall.Mkfifo(fifo, 0o600))
	sub := filepath.Join(dir, "dir.raw")
	require.NoError(t, os.Mkdir(sub, 0o700))
	paths := []string{link, fifo, sub}
	// A private /dev/null twin where allowed (root): every call can be made on it without risking the real one.
	devNull := filepath.Join(dir, "null")
	if err := syscall.Mknod(devNull, syscall.S_IFCHR|0o666, 1<<8|3); err == nil {
		paths = append(paths, devNull)
	} else {
		t.Logf("mknod: %v (device checks use /dev/null read-only calls only)", err)
	}

	for _, path := range paths {
		t.Run(filepath.Base(path), func(t *testing.T) {
			ctx := tctx(t)
			d := file.New(file.NoLibvirt)
			for _, format := range []volume.Format{volume.FormatRaw, volume.FormatQCOW2, ""} {
				vol := volume.Ref{Type: volume.TypeFile, Path: path, Format: format}
				_, err := d.Size(ctx, vol)
				require.ErrorIs(t, err, volume.ErrUnsupported, "Size")
				_, err = d.CreateSnapshot(ctx, vol, "s1")
				require.ErrorIs(t, err, volume.ErrUnsupported, "CreateSnapshot")
				_, err = d.ListSnapshots(ctx, vol)
				require.ErrorIs(t, err, volume.ErrUnsupported, "ListSnapshots")
				_, err = d.OpenSnapshot(ctx, vol, "s1")
				require.ErrorIs(t, err, volume.ErrUnsupported, "OpenSnapshot")
				require.ErrorIs(t, d.RollbackSnapshot(ctx, vol, "s1"), volume.ErrUnsupported, "RollbackSnapshot")
				_, err = d.OpenWriter(ctx, vol)
				require.ErrorIs(t, err, volume.ErrUnsupported, "OpenWriter")
				require.ErrorIs(t, d.DeleteVolume(ctx, vol), volume.ErrUnsupported, "DeleteVolume")
				vol.CreatedBy = "op-a"
				require.Error(t, d.DeleteVolume(ctx, vol), "DeleteVolume by an operation")
				_, err = d.CreateVolume(ctx, vol, 1<<20)
				require.ErrorIs(t, err, volume.ErrExists, "CreateVolume over it")
			}
			_, err := os.Lstat(path)
			require.NoError(t, err, "still there")
			requireAbsent(t, metaDirOf(path))
			requireAbsent(t, metaDirOf(secret))
			require.Equal(t, secretBefore, readFile(t, secret))
		})
	}

	t.Run("dev-null", func(t *testing.T) {
		ctx := tctx(t)
		d := file.New(file.NoLibvirt)
		vol := volume.Ref{Type: volume.TypeFile, Path: "/dev/null"}
		_, err := d.Size(ctx, vol)
		require.ErrorIs(t, err, volume.ErrUnsupported)
		_, err = d.ListSnapshots(ctx, vol)
		require.ErrorIs(t, err, volume.ErrUnsupported)
		_, err = d.OpenSnapshot(ctx, vol, "s1")
		require.ErrorIs(t, err, volume.ErrUnsupported)
	})
}

// qemu tools get the image as options, not a file name to parse: a path with a comma still works.
func TestQCOW2PathWithComma(t *testing.T) {
	ctx := tctx(t)
	d := file.New(file.NoLibvirt)
	vol := volume.Ref{Type: volume.TypeFile, Path: filepath.Join(t.TempDir(), "a,b=c.qcow2"),
		Format: volume.FormatQCOW2, CreatedBy: "op-a"}
	w, err := d.CreateVolume(ctx, vol, 1<<20)
	require.NoError(t, err)
	_, err = w.WriteAt([]byte("one"), 0)
	require.NoError(t, err)
	require.NoError(t, w.Close())
	_, err = d.CreateSnapshot(ctx, vol, "s1")
	require.NoError(t, err)
	w, err = d.OpenWriter(ctx, vol)
	require.NoError(t, err)
	_, err = w.WriteAt([]byte("two"), 0)
	require.NoError(t, err)
	require.NoError(t, w.Close())
	require.NoError(t, d.RollbackSnapshot(ctx, vol, "s1"))
	_, err = d.CreateSnapshot(ctx, vol, "s2")
	require.NoError(t, err)
	require.Equal(t, []byte("one"), readSnapshot(t, d, vol, "s2")[:3])
	require.NoError(t, d.DeleteSnapshot(ctx, vol, "s1"))
	require.NoError(t, d.DeleteVolume(ctx, vol))
}

func metaDirOf(path string) string {
	return filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".holdfast")
}

func requireAbsent(t *testing.T, path string) {
	t.Helper()
	_, err := os.Lstat(path)
	require.True(t, errors.Is(err, os.ErrNotExist), "%s exists (%v)", path, err)
}
