package file_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/holdfast/holdfast/activities/volume"
	"github.com/holdfast/holdfast/activities/volume/file"
)

// Nothing the driver did not create is taken over, overwritten or deleted: a volume is created exclusively,
// reused only by a retry of the operation that created it, and deleted for that operation only.

// A neighbour's file (created by no Holdfast operation, or by another one) at a new volume's path is never
// reused, overwritten or deleted, whatever its size.
func TestNeighboursFileIsNeitherTakenNorDeleted(t *testing.T) {
	for _, format := range []volume.Format{volume.FormatRaw, volume.FormatQCOW2} {
		t.Run(string(format), func(t *testing.T) {
			ctx := tctx(t)
			d := file.New(file.NoLibvirt)
			dir := t.TempDir()
			src := volume.Ref{Type: volume.TypeFile, Path: filepath.Join(dir, "src."+string(format)), Format: format}
			w, err := d.CreateVolume(ctx, src, 1<<20)
			require.NoError(t, err)
			require.NoError(t, w.Close())
			_, err = d.CreateSnapshot(ctx, src, "s1")
			require.NoError(t, err)

			// The neighbour's disk: same size as the restore, made by no Holdfast operation.
			neighbour := filepath.Join(dir, "neighbour."+string(format))
			if format == volume.FormatQCOW2 {
				qemuImg(t, "create", "-q", "-f", "qcow2", neighbour, "1M")
				qemuImg(t, "snapshot", "-c", "theirs", neighbour)
			} else {
				require.NoError(t, os.WriteFile(neighbour, bytes.Repeat([]byte("theirs"), (1<<20)/6+1)[:1<<20], 0o600))
			}
			before := readFile(t, neighbour)
			for _, by := range []string{"op-b", ""} {
				target := volume.Ref{Type: volume.TypeFile, Path: neighbour, Format: format, CreatedBy: by}
				for _, size := range []int64{1 << 20, 2 << 20} {
					w, err := d.CreateVolume(ctx, target, size)
					if err == nil {
						w.Close()
					}
					require.ErrorIs(t, err, volume.ErrExists, "CreateVolume by %q, size %d", by, size)
				}
				require.ErrorIs(t, d.CreateVolumeFromSnapshot(ctx, src, "s1", target), volume.ErrExists)
			}
			err = d.DeleteVolume(ctx, volume.Ref{Type: volume.TypeFile, Path: neighbour, Format: format, CreatedBy: "op-b"})
			require.ErrorIs(t, err, volume.ErrNotOwned)
			require.Equal(t, before, readFile(t, neighbour), "the neighbour's file is untouched")
			requireAbsent(t, metaDirOf(neighbour))
		})
	}
}

// The creator's retry reuses its volume; another operation's delete is refused; the creator's delete works.
func TestCreatorOwnsItsVolume(t *testing.T) {
	ctx := tctx(t)
	d := file.New(file.NoLibvirt)
	path := filepath.Join(t.TempDir(), "new.raw")
	mine := volume.Ref{Type: volume.TypeFile, Path: path, Format: volume.FormatRaw, CreatedBy: "op-a"}
	w, err := d.CreateVolume(ctx, mine, 1<<20)
	require.NoError(t, err)
	_, err = w.WriteAt([]byte("first attempt"), 0)
	require.NoError(t, err)
	require.NoError(t, w.Close())

	w, err = d.CreateVolume(ctx, mine, 1<<20)
	require.NoError(t, err, "a retry of op-a reuses its volume")
	require.NoError(t, w.Close())
	theirs := mine
	theirs.CreatedBy = "op-b"
	require.ErrorIs(t, d.DeleteVolume(ctx, theirs), volume.ErrNotOwned)
	require.Equal(t, []byte("first attempt"), readFile(t, path)[:13])
	require.NoError(t, d.DeleteVolume(ctx, mine))
	requireAbsent(t, path)
	requireAbsent(t, metaDirOf(path))
}
