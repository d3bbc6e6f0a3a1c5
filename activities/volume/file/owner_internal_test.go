package file

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/holdfast/holdfast/activities/volume"
)

// The crash windows of create (see owner.go), reproduced by leaving the files a crash would leave.

func ownerTestRef(t *testing.T, op string) volume.Ref {
	return volume.Ref{Type: volume.TypeFile, Path: filepath.Join(t.TempDir(), "new.raw"), CreatedBy: op}
}

func requireGone(t *testing.T, path string) {
	t.Helper()
	_, err := os.Lstat(path)
	require.ErrorIs(t, err, fs.ErrNotExist, path)
}

// Crash after link, before the owner record: the claim name still links the file.
func TestCrashAfterLinkBeforeRecord(t *testing.T) {
	ctx := context.Background()
	d := New(NoLibvirt)
	for _, retry := range []bool{true, false} {
		vol := ownerTestRef(t, "op-a")
		claim, err := newClaim(vol.Path, "op-a")
		require.NoError(t, err)
		require.NoError(t, makeImage(ctx, claim, volume.FormatRaw, 1<<20))
		require.NoError(t, os.Link(claim, vol.Path))

		other := vol
		other.CreatedBy = "op-b"
		_, err = d.CreateVolume(ctx, other, 1<<20)
		require.ErrorIs(t, err, volume.ErrExists)
		require.ErrorIs(t, d.DeleteVolume(ctx, other), volume.ErrNotOwned)

		if retry {
			w, err := d.CreateVolume(ctx, vol, 1<<20)
			require.NoError(t, err, "the creator's retry recognises its file by the claim")
			require.NoError(t, w.Close())
			requireGone(t, claim)
			r, ok := readOwner(vol.Path)
			require.True(t, ok, "the retry completed the record")
			require.Equal(t, "op-a", r.CreatedBy)
			require.ErrorIs(t, d.DeleteVolume(ctx, other), volume.ErrNotOwned)
		}
		require.NoError(t, d.DeleteVolume(ctx, vol), "the creator's compensation deletes it")
		requireGone(t, vol.Path)
		requireGone(t, claim)
		requireGone(t, metaDir(vol.Path))
	}
}

// Crash before link: only the claim file exists; the path is free.
func TestCrashBeforeLink(t *testing.T) {
	ctx := context.Background()
	d := New(NoLibvirt)
	vol := ownerTestRef(t, "op-a")
	claim, err := newClaim(vol.Path, "op-a")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(claim, []byte("half made"), 0o600))
	require.NoError(t, d.DeleteVolume(ctx, vol), "compensation of a volume never linked")
	requireGone(t, claim)

	_, err = newClaim(vol.Path, "op-a")
	require.NoError(t, err)
	w, err := d.CreateVolume(ctx, vol, 1<<20)
	require.NoError(t, err, "a retry replaces its own leftover claim")
	require.Equal(t, int64(1<<20), w.Size())
	require.NoError(t, w.Close())
	requireGone(t, claim)
}

// A metadata directory left by a deleted image (a crash between removing the image and its metadata, or an
// image deleted by hand) vouches for nothing, and a new volume there inherits none of its snapshots.
func TestStaleMetadataIsNotInherited(t *testing.T) {
	ctx := context.Background()
	d := New(NoLibvirt)
	a := ownerTestRef(t, "op-a")
	w, err := d.CreateVolume(ctx, a, 1<<20)
	require.NoError(t, err)
	_, err = w.WriteAt([]byte("tenant A's data"), 0)
	require.NoError(t, err)
	require.NoError(t, w.Close())
	_, err = d.CreateSnapshot(ctx, a, "s1")
	require.NoError(t, err)
	require.NoError(t, os.Remove(a.Path)) // the crash: the image went, its metadata stayed

	b := a
	b.CreatedBy = "op-b"
	w, err = d.CreateVolume(ctx, b, 1<<20)
	require.NoError(t, err)
	require.NoError(t, w.Close())
	list, err := d.ListSnapshots(ctx, b)
	require.NoError(t, err)
	require.Empty(t, list, "A's snapshot is not B's")
	require.ErrorIs(t, d.DeleteVolume(ctx, a), volume.ErrNotOwned, "A's late compensation")
	_, err = d.Size(ctx, b)
	require.NoError(t, err)
}

// A record naming the operation does not vouch for another file put at the path.
func TestRecordVouchesOnlyForItsFile(t *testing.T) {
	ctx := context.Background()
	d := New(NoLibvirt)
	vol := ownerTestRef(t, "op-a")
	w, err := d.CreateVolume(ctx, vol, 1<<20)
	require.NoError(t, err)
	require.NoError(t, w.Close())
	// Replaced behind Holdfast's back, metadata kept: a new inode (the old one is still held, so it differs).
	keep := vol.Path + ".old"
	require.NoError(t, os.Rename(vol.Path, keep))
	require.NoError(t, os.WriteFile(vol.Path, make([]byte, 1<<20), 0o600))
	_, err = d.CreateVolume(ctx, vol, 1<<20)
	require.ErrorIs(t, err, volume.ErrExists)
	require.ErrorIs(t, d.DeleteVolume(ctx, vol), volume.ErrNotOwned)
	_, err = os.Stat(vol.Path)
	require.NoError(t, err)
}

// A raw rollback replaces the image file; its creator still owns it.
func TestRollbackKeepsOwner(t *testing.T) {
	ctx := context.Background()
	d := New(NoLibvirt)
	vol := ownerTestRef(t, "op-a")
	w, err := d.CreateVolume(ctx, vol, 1<<20)
	require.NoError(t, err)
	require.NoError(t, w.Close())
	_, err = d.CreateSnapshot(ctx, vol, "s1")
	require.NoError(t, err)
	before, err := os.Lstat(vol.Path)
	require.NoError(t, err)
	require.NoError(t, d.RollbackSnapshot(ctx, vol, "s1"))
	after, err := os.Lstat(vol.Path)
	require.NoError(t, err)
	require.False(t, os.SameFile(before, after), "a raw rollback renames a copy over the image")
	other := vol
	other.CreatedBy = "op-b"
	require.ErrorIs(t, d.DeleteVolume(ctx, other), volume.ErrNotOwned)
	require.NoError(t, d.DeleteVolume(ctx, vol))
	requireGone(t, vol.Path)
}

// Operations racing to create one path: exactly one gets it, the others ErrExists, whatever the format.
func TestConcurrentCreatesOneWins(t *testing.T) {
	for _, format := range []volume.Format{volume.FormatRaw, volume.FormatQCOW2} {
		t.Run(string(format), func(t *testing.T) {
			ctx := context.Background()
			d := New(NoLibvirt)
			path := filepath.Join(t.TempDir(), "new."+string(format))
			const n = 6
			errs := make([]error, n)
			var wg sync.WaitGroup
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					vol := volume.Ref{Type: volume.TypeFile, Path: path, Format: format, CreatedBy: fmt.Sprintf("op-%d", i)}
					w, err := d.CreateVolume(ctx, vol, 1<<20)
					if err == nil {
						err = w.Close()
					}
					errs[i] = err
				}()
			}
			wg.Wait()
			winners := 0
			for i, err := range errs {
				if err == nil {
					winners++
					r, ok := readOwner(path)
					require.True(t, ok)
					require.Equal(t, fmt.Sprintf("op-%d", i), r.CreatedBy)
					continue
				}
				require.True(t, errors.Is(err, volume.ErrExists), "op-%d: %v", i, err)
			}
			require.Equal(t, 1, winners)
			left, err := filepath.Glob(filepath.Join(filepath.Dir(path), ".*.creating-*"))
			require.NoError(t, err)
			require.Empty(t, left, "no claim file left behind")
		})
	}
}
