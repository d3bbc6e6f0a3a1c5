package agent_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/activities/agent"
	"github.com/holdfast/holdfast/activities/backup"
	"github.com/holdfast/holdfast/activities/volume"
)

// metaDirOf is the file driver's metadata directory of an image, where a raw volume's snapshot copies (and
// their partial files) live.
func metaDirOf(path string) string {
	return filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".holdfast")
}

// partialFiles lists what copies in progress (or interrupted) keep in a metadata directory.
func partialFiles(t *testing.T, dir string, prefix string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil
	}
	require.NoError(t, err)
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) && (strings.Contains(e.Name(), "partial") || strings.HasSuffix(e.Name(), ".tmp")) {
			out = append(out, e.Name())
		}
	}
	return out
}

// cancelMidCopy returns a context cancelled once the driver has copied part, not all, of a volume: on its
// first progress report, or, for a driver that reports none, as soon as a partial file named prefix* shows
// in dir. It also returns when the cancellation was sent.
func cancelMidCopy(t *testing.T, f *fixture, dir, prefix string) (context.Context, func() time.Time) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	var at atomic.Int64
	stop := func() {
		if at.CompareAndSwap(0, time.Now().UnixNano()) {
			cancel()
		}
	}
	f.driver.onCopy = func(done, total int64) {
		if done < total {
			stop()
		}
	}
	go func() {
		for ctx.Err() == nil {
			if len(partialFiles(t, dir, prefix)) > 0 {
				stop()
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	return ctx, func() time.Time {
		require.NotZero(t, at.Load(), "the copy was never seen half way: the test did not cancel it")
		return time.Unix(0, at.Load())
	}
}

func requireNoSnapshot(t *testing.T, f *fixture, vol activities.VolumeRef, name string) {
	t.Helper()
	snaps, err := f.driver.ListSnapshots(context.Background(), volume.Ref{Type: volume.TypeFile, Path: vol.Path})
	require.NoError(t, err)
	for _, s := range snaps {
		require.NotEqual(t, name, s.Name, "snapshot %s exists", name)
	}
	for _, suffix := range []string{".raw", ".json"} {
		_, err := os.Stat(filepath.Join(metaDirOf(vol.Path), name+suffix))
		require.ErrorIs(t, err, os.ErrNotExist, name+suffix)
	}
}

// TestSnapshotCopyCancelled: an abort during a raw volume's snapshot (a full copy) stops the copy, ends the
// activity at once and removes the partial copy; no snapshot appears.
func TestSnapshotCopyCancelled(t *testing.T) {
	const size = 128 * MiB
	f := newFixture(t, backup.Options{})
	vol := f.ref("big.raw")
	f.createVolume(vol, size, 21, volume.Extent{Offset: 0, Length: size})
	ctx, cancelledAt := cancelMidCopy(t, f, metaDirOf(vol.Path), "s1")

	err := f.run(ctx, activities.CreateSnapshotName,
		activities.SnapshotInput{VolumeID: "vol1", Volume: vol, SnapshotID: "s1"}, nil, nil)
	took := time.Since(cancelledAt())
	require.Error(t, err, "a snapshot whose copy was cancelled half way must not succeed")
	t.Logf("returned %v after the cancellation: %v", took.Round(time.Millisecond), err)
	requireCancellation(t, err)
	require.Less(t, took, 2*time.Second)
	require.Empty(t, partialFiles(t, metaDirOf(vol.Path), ""), "the partial copy is removed")
	requireNoSnapshot(t, f, vol, "s1")
}

// TestSnapshotCopyHeartbeatsBytes: a long copy heartbeats how far it got.
func TestSnapshotCopyHeartbeatsBytes(t *testing.T) {
	defer agent.SetCallHeartbeatEvery(10 * time.Millisecond)()
	const size = 64 * MiB
	f := newFixture(t, backup.Options{})
	vol := f.ref("vol.raw")
	f.createVolume(vol, size, 22, volume.Extent{Offset: 0, Length: size})
	f.driver.onCopy = func(done, total int64) { time.Sleep(30 * time.Millisecond) } // a slow disk
	require.NoError(t, f.run(context.Background(), activities.CreateSnapshotName,
		activities.SnapshotInput{VolumeID: "vol1", Volume: vol, SnapshotID: "s1"}, nil, nil))
	var moving []activities.Progress
	for _, p := range f.hb.take() {
		require.NotEmpty(t, p.Phase)
		if p.BytesDone > 0 {
			require.Equal(t, size, p.BytesTotal, "%+v", p)
			moving = append(moving, p)
		}
	}
	require.NotEmpty(t, moving, "heartbeats report the bytes copied")
}

// TestDeleteSnapshotRemovesInterruptedCopy: the compensation of a snapshot whose copy was interrupted (agent
// killed, or a copy hung and abandoned) removes the partial file that attempt left, whoever left it.
func TestDeleteSnapshotRemovesInterruptedCopy(t *testing.T) {
	const size = 64 * MiB
	f := newFixture(t, backup.Options{})
	vol := f.ref("vol.raw")
	f.createVolume(vol, size, 23, volume.Extent{Offset: 0, Length: size})
	meta := metaDirOf(vol.Path)
	// What an agent killed mid-copy left before this change: a partial copy under a fixed name.
	require.NoError(t, os.MkdirAll(meta, 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(meta, "s1.raw.partial"), make([]byte, MiB), 0o600))
	require.NoError(t, f.run(context.Background(), activities.DeleteSnapshotName,
		activities.SnapshotRef{VolumeID: "vol1", Volume: vol, SnapshotID: "s1"}, nil, nil))
	require.Empty(t, partialFiles(t, meta, ""), "the snapshot's delete removed the killed copy's partial file")

	// A copy that hangs half way: like a killed process, it removes nothing while the activity gives up.
	stalled, release := make(chan struct{}), make(chan struct{})
	var stall, unstall sync.Once
	defer unstall.Do(func() { close(release) })
	f.driver.onCopy = func(done, total int64) {
		if done < total {
			stall.Do(func() { close(stalled); <-release })
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-stalled:
			cancel() // the hung copy cannot see it
		case <-ctx.Done():
		}
	}()
	err := f.run(ctx, activities.CreateSnapshotName,
		activities.SnapshotInput{VolumeID: "vol1", Volume: vol, SnapshotID: "s2"}, nil, nil)
	requireCancellation(t, err)
	require.Len(t, partialFiles(t, meta, "s2"), 1, "the hung copy's partial file is there, as after a crash")

	require.NoError(t, f.run(context.Background(), activities.DeleteSnapshotName,
		activities.SnapshotRef{VolumeID: "vol1", Volume: vol, SnapshotID: "s2"}, nil, nil))
	require.Empty(t, partialFiles(t, meta, ""), "the snapshot's delete removed the hung copy's partial file")

	// The hung copy resumes after its snapshot was deleted: it must not bring the snapshot back.
	unstall.Do(func() { close(release) })
	require.Eventually(t, func() bool { return strings.Contains(f.logs.String(), "abandoned call returned") },
		5*time.Second, 10*time.Millisecond, "the abandoned call ends and says so")
	require.Empty(t, partialFiles(t, meta, ""))
	requireNoSnapshot(t, f, vol, "s1")
	requireNoSnapshot(t, f, vol, "s2")
}
