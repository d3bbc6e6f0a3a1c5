package file_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/holdfast/holdfast/activities/volume"
	"github.com/holdfast/holdfast/activities/volume/file"
)

// The driver's copies (a raw snapshot, a raw rollback, a clone) stop on cancellation and leave nothing; what a
// killed or hung copy leaves goes with the matching delete. Without libvirt: the copies are the same.

const copySize = 64 << 20 // several copy blocks

// filled writes a volume of copySize bytes, all allocated, every byte b.
func filled(t *testing.T, path string, b byte) volume.Ref {
	t.Helper()
	require.NoError(t, os.WriteFile(path, bytes.Repeat([]byte{b}, copySize), 0o600))
	return volume.Ref{Type: volume.TypeFile, Format: volume.FormatRaw, Path: path}
}

func names(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil
	}
	require.NoError(t, err)
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	slices.Sort(out)
	return out
}

// cancelMidCopy returns a context that the driver's copy cancels itself on its first progress report, with
// part of the data copied; copied tells how far it got.
func cancelMidCopy(t *testing.T, d *file.Driver) (ctx context.Context, copied func() (done, total int64)) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	var done, total atomic.Int64
	ctx = d.WithProgress(ctx, func(dn, tot int64) {
		done.Store(dn)
		total.Store(tot)
		if dn < tot {
			cancel()
		}
	})
	return ctx, func() (int64, int64) { return done.Load(), total.Load() }
}

func requireCancelledMidway(t *testing.T, err error, copied func() (int64, int64)) {
	t.Helper()
	require.ErrorIs(t, err, context.Canceled)
	done, total := copied()
	require.Positive(t, done, "the copy had started")
	require.Less(t, done, total, "the copy stopped before its end")
}

func TestCancelledSnapshotCopyLeavesNothing(t *testing.T) {
	d := file.New(file.NoLibvirt)
	vol := filled(t, filepath.Join(t.TempDir(), "vol.raw"), 0xAA)
	ctx, copied := cancelMidCopy(t, d)
	_, err := d.CreateSnapshot(ctx, vol, "s1")
	requireCancelledMidway(t, err, copied)
	require.Empty(t, names(t, metaDirOf(vol.Path)), "no partial copy, no record")
	snaps, err := d.ListSnapshots(context.Background(), vol)
	require.NoError(t, err)
	require.Empty(t, snaps)
}

func TestCancelledRollbackLeavesVolumeAsItWas(t *testing.T) {
	d := file.New(file.NoLibvirt)
	vol := filled(t, filepath.Join(t.TempDir(), "vol.raw"), 0xAA)
	_, err := d.CreateSnapshot(context.Background(), vol, "s1")
	require.NoError(t, err)
	meta := names(t, metaDirOf(vol.Path))
	now := bytes.Repeat([]byte{0xBB}, copySize)
	require.NoError(t, os.WriteFile(vol.Path, now, 0o600))

	ctx, copied := cancelMidCopy(t, d)
	requireCancelledMidway(t, d.RollbackSnapshot(ctx, vol, "s1"), copied)
	require.Equal(t, now, readFile(t, vol.Path), "never half rolled back")
	require.Equal(t, meta, names(t, metaDirOf(vol.Path)), "no partial copy left")
}

func TestCancelledCloneLeavesNothing(t *testing.T) {
	for _, format := range []volume.Format{volume.FormatRaw, volume.FormatQCOW2} {
		t.Run(string(format), func(t *testing.T) {
			d := file.New(file.NoLibvirt)
			dir := t.TempDir()
			src := volume.Ref{Type: volume.TypeFile, Format: format, Path: filepath.Join(dir, "src."+string(format))}
			w, err := d.CreateVolume(context.Background(), src, copySize)
			require.NoError(t, err)
			_, err = w.WriteAt(bytes.Repeat([]byte{0xCC}, copySize), 0)
			require.NoError(t, err)
			require.NoError(t, w.Close())
			_, err = d.CreateSnapshot(context.Background(), src, "s1")
			require.NoError(t, err)
			before := names(t, dir)

			dst := volume.Ref{Type: volume.TypeFile, Format: format, Path: filepath.Join(dir, "new."+string(format)),
				CreatedBy: "op-clone"}
			ctx, copied := cancelMidCopy(t, d)
			requireCancelledMidway(t, d.CreateVolumeFromSnapshot(ctx, src, "s1", dst), copied)
			require.Equal(t, before, names(t, dir), "the half-written volume, its claim and metadata are gone")

			// Completed, the clone reports its progress up to the allocated total.
			var last, total atomic.Int64
			ctx = d.WithProgress(context.Background(), func(done, tot int64) { last.Store(done); total.Store(tot) })
			require.NoError(t, d.CreateVolumeFromSnapshot(ctx, src, "s1", dst))
			require.Positive(t, total.Load())
			require.Equal(t, total.Load(), last.Load())
		})
	}
}

// A copy that hangs half way (a stuck disk, or a process about to be killed): the snapshot's delete, which is
// its compensation, removes the partial copy, and the copy, if it ever resumes, cannot bring the snapshot back.
func TestDeleteSnapshotRemovesHungCopy(t *testing.T) {
	d := file.New(file.NoLibvirt)
	vol := filled(t, filepath.Join(t.TempDir(), "vol.raw"), 0xAA)
	stalled, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	ctx := d.WithProgress(context.Background(), func(done, total int64) {
		once.Do(func() { close(stalled); <-release })
	})
	created := make(chan error, 1)
	go func() {
		_, err := d.CreateSnapshot(ctx, vol, "s1")
		created <- err
	}()
	select {
	case <-stalled:
	case err := <-created:
		t.Fatalf("the copy ended without reporting progress: %v", err)
	}
	meta := metaDirOf(vol.Path)
	require.Len(t, names(t, meta), 1, "the hung copy's partial file")

	require.NoError(t, d.DeleteSnapshot(context.Background(), vol, "s1"))
	require.Empty(t, names(t, meta))
	close(release)
	select {
	case err := <-created:
		require.Error(t, err, "the copy's file was removed under it")
	case <-time.After(10 * time.Second):
		t.Fatal("the resumed copy did not end")
	}
	require.Empty(t, names(t, meta), "nothing came back")
}

// What an agent killed mid-copy left (under the names of this and of earlier versions) goes with the matching
// delete: the snapshot's for its copy, the next rollback for a rollback's copy. Nothing else is touched.
func TestKilledCopiesAreRemovedByTheMatchingDelete(t *testing.T) {
	d := file.New(file.NoLibvirt)
	vol := filled(t, filepath.Join(t.TempDir(), "vol.raw"), 0xAA)
	ctx := context.Background()
	for _, s := range []string{"s1", "s1.raw.1.partial", "s10"} {
		_, err := d.CreateSnapshot(ctx, vol, s)
		require.NoError(t, err)
	}
	meta := metaDirOf(vol.Path)
	kept := names(t, meta)
	left := []string{"s1.raw.partial", "s1.raw.4031.partial", "s1.json.tmp", "s2.raw.77.partial",
		".rollback.partial", ".rollback.12.partial"}
	for _, n := range left {
		require.NoError(t, os.WriteFile(filepath.Join(meta, n), []byte("partial"), 0o600))
	}

	require.NoError(t, d.DeleteSnapshot(ctx, vol, "s1"))
	require.NoError(t, d.DeleteSnapshot(ctx, vol, "s2")) // a snapshot whose copy never completed
	require.NoError(t, d.RollbackSnapshot(ctx, vol, "s10"))
	want := slices.DeleteFunc(slices.Clone(kept), func(n string) bool { return n == "s1.raw" || n == "s1.json" })
	require.Equal(t, want, names(t, meta), "the partial files went, the other snapshots stayed")
	snaps, err := d.ListSnapshots(ctx, vol)
	require.NoError(t, err)
	require.Len(t, snaps, 2)
}
