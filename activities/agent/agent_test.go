package agent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/interceptor"
	tlog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/worker"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/activities/agent"
	"github.com/holdfast/holdfast/activities/backup"
	"github.com/holdfast/holdfast/activities/backup/fs"
	"github.com/holdfast/holdfast/activities/backup/stores"
	"github.com/holdfast/holdfast/activities/volume"
	"github.com/holdfast/holdfast/activities/volume/file"
	"github.com/holdfast/holdfast/activities/volume/volumetest"
)

const (
	MiB     = int64(1) << 20
	storage = "local"
)

// fixture is one agent on the real file driver (images in a temp dir) and a real fs backup store.
type fixture struct {
	t      *testing.T
	dir    string
	driver *countingDriver
	store  backup.Store
	engine *backup.Engine
	acts   *agent.Activities
	hb     *heartbeatRecorder
	logs   *syncBuffer
}

func newFixture(t *testing.T, opts backup.Options) *fixture {
	uri := os.Getenv("HOLDFAST_LIBVIRT_URI")
	// The file driver asks libvirt, live, who uses an image before snapshotting or overwriting it.
	volumetest.RequireLibvirt(t, uri)
	dir := t.TempDir()
	st, err := stores.Open(context.Background(), stores.Config{Type: "fs", FS: fs.Config{Path: filepath.Join(dir, "store")}})
	require.NoError(t, err)
	logs := &syncBuffer{}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	opts.Logger = logger
	eng, err := backup.New(st, opts)
	require.NoError(t, err)
	drv := &countingDriver{Driver: file.New(uri)}
	f := &fixture{t: t, dir: dir, driver: drv, store: st, engine: eng, hb: &heartbeatRecorder{}, logs: logs,
		acts: agent.New(agent.Config{HypervisorID: "hv1", Logger: logger, VolumeRoots: []string{dir},
			Drivers: map[string]volume.Driver{"file": drv}, Engines: map[string]*backup.Engine{storage: eng}})}
	t.Cleanup(f.checkLogs)
	return f
}

// checkLogs holds the style guide's rule: every log line of an operation names its volume.
func (f *fixture) checkLogs() {
	for _, line := range strings.Split(strings.TrimSpace(f.logs.String()), "\n") {
		if line == "" {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			f.t.Errorf("log line is not JSON: %q", line)
			continue
		}
		if v, _ := rec["volume_id"].(string); v == "" {
			f.t.Errorf("log line without volume_id: %s", line)
		}
	}
}

// run executes one activity in a fresh test environment; details (non-nil) are the heartbeat details of a
// previous attempt, so the activity runs as a retry would.
func (f *fixture) run(ctx context.Context, name string, in, out any, details any) error {
	return runActivity(ctx, f.acts, f.hb, name, in, out, details)
}

// runActivity executes activity name of impl in a fresh test environment, recording heartbeats in hb.
func runActivity(ctx context.Context, impl any, hb *heartbeatRecorder, name string, in, out any, details any) error {
	var s testsuite.WorkflowTestSuite
	s.SetLogger(tlog.NewStructuredLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	env := s.NewTestActivityEnvironment()
	if ctx == nil {
		ctx = context.Background()
	}
	env.SetWorkerOptions(worker.Options{BackgroundActivityContext: ctx,
		Interceptors: []interceptor.WorkerInterceptor{hb}})
	env.RegisterActivity(impl)
	if details != nil {
		env.SetHeartbeatDetails(details)
	}
	v, err := env.ExecuteActivity(name, in)
	if err != nil || out == nil {
		return err
	}
	return v.Get(out)
}

func (f *fixture) ref(name string) activities.VolumeRef {
	return activities.VolumeRef{Type: "file", Path: filepath.Join(f.dir, name)}
}

// createVolume makes a volume of size bytes and writes random data over the given extents; the rest stays
// a hole. It returns the volume's expected contents.
func (f *fixture) createVolume(ref activities.VolumeRef, size int64, seed uint64, data ...volume.Extent) []byte {
	f.t.Helper()
	ctx := context.Background()
	w, err := f.driver.CreateVolume(ctx, volume.Ref{Type: volume.TypeFile, Path: ref.Path}, size)
	require.NoError(f.t, err)
	want := make([]byte, size)
	f.writeInto(w, want, seed, data...)
	return want
}

// overwrite changes the volume in place (as a guest would) and updates model.
func (f *fixture) overwrite(ref activities.VolumeRef, model []byte, seed uint64, data ...volume.Extent) {
	f.t.Helper()
	w, err := f.driver.OpenWriter(context.Background(), volume.Ref{Type: volume.TypeFile, Path: ref.Path})
	require.NoError(f.t, err)
	f.writeInto(w, model, seed, data...)
}

func (f *fixture) writeInto(w volume.Writer, model []byte, seed uint64, data ...volume.Extent) {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for _, e := range data {
		b := model[e.Offset:e.End()]
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		_, err := w.WriteAt(b, e.Offset)
		require.NoError(f.t, err)
	}
	require.NoError(f.t, w.Close())
}

// contents reads a volume's current bytes independently of the driver (qemu-img for qcow2).
func (f *fixture) contents(ref activities.VolumeRef) []byte {
	f.t.Helper()
	path := ref.Path
	if strings.HasSuffix(path, ".qcow2") {
		raw := filepath.Join(f.t.TempDir(), "contents.raw")
		out, err := exec.Command("qemu-img", "convert", "-O", "raw", path, raw).CombinedOutput()
		require.NoError(f.t, err, "%s", out)
		path = raw
	}
	b, err := os.ReadFile(path)
	require.NoError(f.t, err)
	return b
}

func requireSame(t *testing.T, want, got []byte, what string) {
	t.Helper()
	require.Equal(t, len(want), len(got), "%s: size", what)
	if !bytes.Equal(want, got) {
		for i := range want {
			if want[i] != got[i] {
				t.Fatalf("%s: first difference at byte %d", what, i)
			}
		}
	}
}

// requireType checks that err is a non-retryable application error of type typ.
func requireType(t *testing.T, err error, typ string) *temporal.ApplicationError {
	t.Helper()
	require.Error(t, err)
	var appErr *temporal.ApplicationError
	require.True(t, errors.As(err, &appErr), "not an application error: %v", err)
	require.Equal(t, typ, appErr.Type(), "error: %v", err)
	require.True(t, appErr.NonRetryable(), "%s must be non-retryable: %v", typ, err)
	return appErr
}

func TestBackupRestoreRoundTrip(t *testing.T) {
	for _, format := range []string{"raw", "qcow2"} {
		t.Run(format, func(t *testing.T) {
			// The restore to a new volume goes to the other format: any backup restores onto any storage.
			other := map[string]string{"raw": "qcow2", "qcow2": "raw"}[format]
			testRoundTrip(t, format, other)
		})
	}
}

func testRoundTrip(t *testing.T, format, otherFormat string) {
	const size = 32 * MiB
	f := newFixture(t, backup.Options{Concurrency: 2})
	ctx := context.Background()
	vol := f.ref("vol." + format)
	// Data in the first chunk, a chunk straddling two, a small write in the middle, and holes between.
	atSnapshot := f.createVolume(vol, size, 1,
		volume.Extent{Offset: 0, Length: 3 * MiB},
		volume.Extent{Offset: 10*MiB + 4096, Length: 5 * MiB},
		volume.Extent{Offset: 24 * MiB, Length: 64 << 10})

	snapIn := activities.SnapshotInput{VolumeID: "vol1", Volume: vol, SnapshotID: "s1", Freeze: true}
	var snap activities.SnapshotResult
	require.NoError(t, f.run(ctx, activities.CreateSnapshotName, snapIn, &snap, nil))
	require.Equal(t, activities.SnapshotResult{SnapshotID: "s1", SizeBytes: size, Consistency: "offline"}, snap,
		"a detached volume: nothing was writing, and that is what is reported")
	var again activities.SnapshotResult
	require.NoError(t, f.run(ctx, activities.CreateSnapshotName, snapIn, &again, nil))
	require.Equal(t, snap, again, "creating an existing snapshot is success")

	// The volume moves on after the snapshot; the backup must not see it.
	current := bytes.Clone(atSnapshot)
	f.overwrite(vol, current, 2, volume.Extent{Offset: 1 * MiB, Length: 6 * MiB}, volume.Extent{Offset: 30 * MiB, Length: MiB})

	var up activities.UploadBackupResult
	require.NoError(t, f.run(ctx, activities.UploadBackupName, activities.UploadBackupInput{
		VolumeID: "vol1", Volume: vol, SnapshotID: "s1", BackupID: "b1", Storage: storage,
		Labels: map[string]string{"name": "nightly"}}, &up, nil))
	require.Equal(t, size, up.SizeBytes)
	require.Greater(t, up.StoredBytes, int64(0))
	m, err := f.engine.Manifest(ctx, "vol1", "b1")
	require.NoError(t, err)
	require.Equal(t, format, m.SourceType)
	require.Equal(t, "nightly", m.Labels["name"])

	// Heartbeats carry the progress the workflow shows and resumes from.
	hbs := f.hb.take()
	require.NotEmpty(t, hbs)
	last := hbs[len(hbs)-1]
	require.Equal(t, activities.Progress{Phase: backup.PhaseDone, BytesDone: size, BytesTotal: size, NextOffset: size},
		activities.Progress{Phase: last.Phase, BytesDone: last.BytesDone, BytesTotal: last.BytesTotal, NextOffset: last.NextOffset})
	for _, p := range hbs {
		require.Equal(t, size, p.BytesTotal)
	}

	// Restore to a new volume: byte-identical to the volume at snapshot time. The control plane names the
	// operation that creates it.
	target := f.ref("copy." + otherFormat)
	target.CreatedBy = "op-restore-vol2"
	var res activities.RestoreResult
	require.NoError(t, f.run(ctx, activities.RestoreBackupName, activities.RestoreBackupInput{
		SourceVolumeID: "vol1", BackupID: "b1", Storage: storage, TargetVolumeID: "vol2", Target: target, Create: true}, &res, nil))
	require.Equal(t, size, res.SizeBytes)
	requireSame(t, atSnapshot, f.contents(target), "restore to new volume")
	restoreHBs := f.hb.take()
	require.NotEmpty(t, restoreHBs)
	require.Equal(t, backup.PhaseDone, restoreHBs[len(restoreHBs)-1].Phase)

	// A retry of that operation reuses its volume (which its first attempt wrote) and is still identical.
	require.NoError(t, f.run(ctx, activities.RestoreBackupName, activities.RestoreBackupInput{
		SourceVolumeID: "vol1", BackupID: "b1", Storage: storage, TargetVolumeID: "vol2", Target: target, Create: true}, &res, nil))
	requireSame(t, atSnapshot, f.contents(target), "retried restore to new volume")
	// Whatever else sits at a new volume's path, even with the right size (a neighbour's disk, a stale
	// image), is refused and left untouched, and no other operation's compensation deletes it.
	stale := f.ref("stale." + otherFormat)
	staleBytes := f.createVolume(stale, size, 4, volume.Extent{Offset: 0, Length: size})
	for _, by := range []string{"op-restore-vol4", ""} {
		stale.CreatedBy = by
		err := f.run(ctx, activities.RestoreBackupName, activities.RestoreBackupInput{
			SourceVolumeID: "vol1", BackupID: "b1", Storage: storage, TargetVolumeID: "vol4", Target: stale, Create: true}, &res, nil)
		requireType(t, err, activities.ErrInvalidArgument)
	}
	stale.CreatedBy = "op-restore-vol4"
	// Its compensation finds nothing of its own there: it succeeds and leaves the file as it is.
	require.NoError(t, f.run(ctx, activities.DeleteVolumeName, activities.DeleteVolumeInput{VolumeID: "vol4", Volume: stale}, nil, nil))
	requireSame(t, staleBytes, f.contents(stale), "a volume in the way of a restore")

	// In place, over data that changed since: zero ranges are written too, so stale bytes do not survive.
	requireSame(t, current, f.contents(vol), "volume before in-place restore")
	require.NoError(t, f.run(ctx, activities.RestoreBackupName, activities.RestoreBackupInput{
		SourceVolumeID: "vol1", BackupID: "b1", Storage: storage, TargetVolumeID: "vol1", Target: vol}, &res, nil))
	require.Equal(t, size, res.BytesWritten, "in place, every byte is written")
	requireSame(t, atSnapshot, f.contents(vol), "in-place restore")

	// Rollback and clone go through the driver's snapshot directly.
	f.overwrite(vol, bytes.Clone(atSnapshot), 3, volume.Extent{Offset: 0, Length: MiB})
	require.NoError(t, f.run(ctx, activities.RollbackSnapshotName,
		activities.SnapshotRef{VolumeID: "vol1", Volume: vol, SnapshotID: "s1"}, nil, nil))
	requireSame(t, atSnapshot, f.contents(vol), "rollback")
	clone := f.ref("clone." + format)
	clone.CreatedBy = "op-clone-vol3"
	for range 2 { // a retried clone reuses its target
		require.NoError(t, f.run(ctx, activities.CloneSnapshotName, activities.CloneSnapshotInput{
			SourceVolumeID: "vol1", Source: vol, SnapshotID: "s1", TargetVolumeID: "vol3", Target: clone}, &res, nil))
		require.Equal(t, size, res.SizeBytes)
		requireSame(t, atSnapshot, f.contents(clone), "clone")
	}
	// A clone onto an existing volume is refused, and that volume is untouched.
	err = f.run(ctx, activities.CloneSnapshotName, activities.CloneSnapshotInput{
		SourceVolumeID: "vol1", Source: vol, SnapshotID: "s1", TargetVolumeID: "vol5",
		Target: activities.VolumeRef{Type: "file", Path: stale.Path, CreatedBy: "op-clone-vol5"}}, &res, nil)
	requireType(t, err, activities.ErrInvalidArgument)
	requireSame(t, staleBytes, f.contents(stale), "a volume in the way of a clone")

	// A parent that retention already deleted does not fail the next backup.
	require.NoError(t, f.run(ctx, activities.UploadBackupName, activities.UploadBackupInput{
		VolumeID: "vol1", Volume: vol, SnapshotID: "s1", BackupID: "b2", ParentBackupID: "gone", Storage: storage}, &up, nil))

	// Deletes are idempotent.
	for range 2 {
		require.NoError(t, f.run(ctx, activities.DeleteBackupName, activities.BackupRef{VolumeID: "vol1", BackupID: "b1", Storage: storage}, nil, nil))
		require.NoError(t, f.run(ctx, activities.DeleteSnapshotName, activities.SnapshotRef{VolumeID: "vol1", Volume: vol, SnapshotID: "s1"}, nil, nil))
		require.NoError(t, f.run(ctx, activities.DeleteVolumeName, activities.DeleteVolumeInput{VolumeID: "vol2", Volume: target}, nil, nil))
	}
	_, err = f.engine.Manifest(ctx, "vol1", "b1")
	require.ErrorIs(t, err, backup.ErrNotExist)
	_, err = os.Stat(target.Path)
	require.ErrorIs(t, err, os.ErrNotExist)
	err = f.run(ctx, activities.RollbackSnapshotName, activities.SnapshotRef{VolumeID: "vol1", Volume: vol, SnapshotID: "s1"}, nil, nil)
	requireType(t, err, activities.ErrNotFound)
}

// TestGuestWrittenQCOW2HeaderOnRawVolume: the guest of a raw volume wrote a qcow2 header naming a host file as
// its backing file. The backup holds the guest's bytes, is catalogued raw and restores them; the host file
// is never read.
func TestGuestWrittenQCOW2HeaderOnRawVolume(t *testing.T) {
	const size = 4 * MiB
	f := newFixture(t, backup.Options{Concurrency: 2})
	ctx := context.Background()
	const secretText = "HOLDFAST-HOST-SECRET "
	secret := filepath.Join(f.dir, "host-secret")
	require.NoError(t, os.WriteFile(secret, bytes.Repeat([]byte(secretText), 1<<16), 0o600))
	hostile := filepath.Join(f.dir, "hostile.qcow2")
	out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", secret, "-F", "raw", hostile, "8M").CombinedOutput()
	require.NoError(t, err, "%s", out)
	header, err := os.ReadFile(hostile)
	require.NoError(t, err)
	disk := make([]byte, size)
	copy(disk, header)

	for i, vol := range []activities.VolumeRef{
		{Type: "file", Path: filepath.Join(f.dir, "guest.raw"), Format: "raw"},
		{Type: "file", Path: filepath.Join(f.dir, "guest.img")}, // registered before formats were recorded
	} {
		require.NoError(t, os.WriteFile(vol.Path, disk, 0o600))
		volumeID, backupID := fmt.Sprintf("guest%d", i), fmt.Sprintf("b%d", i)
		var snap activities.SnapshotResult
		require.NoError(t, f.run(ctx, activities.CreateSnapshotName,
			activities.SnapshotInput{VolumeID: volumeID, Volume: vol, SnapshotID: "s1"}, &snap, nil))
		require.Equal(t, int64(size), snap.SizeBytes)
		var up activities.UploadBackupResult
		require.NoError(t, f.run(ctx, activities.UploadBackupName, activities.UploadBackupInput{
			VolumeID: volumeID, Volume: vol, SnapshotID: "s1", BackupID: backupID, Storage: storage}, &up, nil))
		m, err := f.engine.Manifest(ctx, volumeID, backupID)
		require.NoError(t, err)
		require.Equal(t, "raw", m.SourceType)
		require.Equal(t, int64(size), m.Size)

		target := activities.VolumeRef{Type: "file", Path: filepath.Join(f.dir, fmt.Sprintf("restored%d.raw", i)),
			Format: "raw", CreatedBy: "op-restore-" + volumeID}
		require.NoError(t, f.run(ctx, activities.RestoreBackupName, activities.RestoreBackupInput{
			SourceVolumeID: volumeID, BackupID: backupID, Storage: storage, TargetVolumeID: "new-" + volumeID,
			Target: target, Create: true}, nil, nil))
		got := f.contents(target)
		requireSame(t, disk, got, "restore of a raw volume holding a qcow2 header")
		require.NotContains(t, string(got), secretText)
	}
}

// TestUploadResumes interrupts an upload half way, then runs the retry with the last heartbeat's details, as
// Temporal would: the retry reads only what the first attempt had not checkpointed, and the backup it
// commits restores byte-identically.
func TestUploadResumes(t *testing.T) {
	const size = 32 * MiB
	// Small chunks and frequent checkpoints so that a 32 MiB volume has many resume points.
	f := newFixture(t, backup.Options{Concurrency: 2, ChunkSize: MiB, CheckpointEvery: 2})
	ctx := context.Background()
	vol := f.ref("vol.raw")
	want := f.createVolume(vol, size, 7, volume.Extent{Offset: 0, Length: size})
	require.NoError(t, f.run(ctx, activities.CreateSnapshotName,
		activities.SnapshotInput{VolumeID: "vol1", Volume: vol, SnapshotID: "s1"}, nil, nil))
	in := activities.UploadBackupInput{VolumeID: "vol1", Volume: vol, SnapshotID: "s1", BackupID: "b1", Storage: storage}

	f.driver.failAfter.Store(20 * MiB) // the disk "fails" after 20 MiB have been read
	err := f.run(ctx, activities.UploadBackupName, in, nil, nil)
	require.Error(t, err)
	var appErr *temporal.ApplicationError
	require.True(t, errors.As(err, &appErr))
	require.False(t, appErr.NonRetryable(), "an I/O error is retryable: %v", err)
	last := f.lastCheckpoint(t, size, "the first attempt checkpointed progress")

	f.driver.failAfter.Store(0)
	f.driver.read.Store(0)
	var up activities.UploadBackupResult
	require.NoError(t, f.run(ctx, activities.UploadBackupName, in, &up, last))
	read := f.driver.read.Load()
	t.Logf("retry resumed at %d MiB and read %d MiB of %d", last.NextOffset/MiB, read/MiB, size/MiB)
	require.LessOrEqual(t, read, size-last.NextOffset, "the retry must resume, not restart")
	require.Equal(t, size, up.SizeBytes)
	retryHBs := f.hb.take()
	for _, p := range retryHBs {
		require.GreaterOrEqual(t, p.NextOffset, last.NextOffset, "a retry never heartbeats a checkpoint below the one it resumed from")
	}

	target := f.ref("copy.raw")
	require.NoError(t, f.run(ctx, activities.RestoreBackupName, activities.RestoreBackupInput{
		SourceVolumeID: "vol1", BackupID: "b1", Storage: storage, TargetVolumeID: "vol2", Target: target, Create: true}, nil, nil))
	requireSame(t, want, f.contents(target), "restore of a resumed backup")
}

// A restore whose target fails half way (a disk error; for the agent, the same as being killed) resumes on
// retry from the last point it flushed: the retry writes only the rest, and the volume is byte-identical.
// Both to a new volume (which the retry reuses: the same operation created it) and in place, on raw and on
// qcow2 (written through qemu-nbd).
func TestRestoreResumes(t *testing.T) {
	for _, format := range []string{"raw", "qcow2"} {
		t.Run(format, func(t *testing.T) {
			const size = 32 * MiB
			// One writer: chunks land in order, so resume points come every 2 MiB as the test expects.
			f := newFixture(t, backup.Options{Concurrency: 1, ChunkSize: MiB, CheckpointEvery: 2})
			ctx := context.Background()
			vol := f.ref("vol." + format)
			want := f.createVolume(vol, size, 7, volume.Extent{Offset: 0, Length: size})
			require.NoError(t, f.run(ctx, activities.CreateSnapshotName,
				activities.SnapshotInput{VolumeID: "vol1", Volume: vol, SnapshotID: "s1"}, nil, nil))
			require.NoError(t, f.run(ctx, activities.UploadBackupName, activities.UploadBackupInput{VolumeID: "vol1",
				Volume: vol, SnapshotID: "s1", BackupID: "b1", Storage: storage}, nil, nil))
			target := f.ref("copy." + format)
			target.CreatedBy = "op-restore-vol2"
			newVolume := activities.RestoreBackupInput{SourceVolumeID: "vol1", BackupID: "b1", Storage: storage,
				TargetVolumeID: "vol2", Target: target, Create: true}
			inPlace := activities.RestoreBackupInput{SourceVolumeID: "vol1", BackupID: "b1", Storage: storage,
				TargetVolumeID: "vol1", Target: vol}
			f.overwrite(vol, make([]byte, size), 8, volume.Extent{Offset: 0, Length: size}) // in place: over other data
			for _, in := range []activities.RestoreBackupInput{newVolume, inPlace} {
				f.hb.take()
				f.driver.written.Store(0)
				f.driver.writeFailAfter.Store(20 * MiB)
				err := f.run(ctx, activities.RestoreBackupName, in, nil, nil)
				require.Error(t, err)
				last := f.lastCheckpoint(t, size, in.TargetVolumeID+": the first attempt flushed a resume point")

				f.driver.writeFailAfter.Store(0)
				f.driver.written.Store(0)
				var res activities.RestoreResult
				require.NoError(t, f.run(ctx, activities.RestoreBackupName, in, &res, last))
				wrote := f.driver.written.Load()
				t.Logf("%s: retry resumed at %d MiB and wrote %d MiB of %d", in.TargetVolumeID, last.NextOffset/MiB, wrote/MiB, size/MiB)
				require.LessOrEqual(t, wrote, size-last.NextOffset, "the retry must resume, not restart")
				requireSame(t, want, f.contents(in.Target), in.TargetVolumeID)
			}
		})
	}
}

// lastCheckpoint is the last progress a failed attempt heartbeated, which must name a resume point past
// 8 MiB and short of size (what says why, on failure).
func (f *fixture) lastCheckpoint(t *testing.T, size int64, what string) activities.Progress {
	t.Helper()
	hbs := f.hb.take()
	require.NotEmpty(t, hbs)
	last := hbs[len(hbs)-1]
	require.Greater(t, last.NextOffset, 8*MiB, "%s: %+v", what, last)
	require.Less(t, last.NextOffset, size)
	return last
}

// TestUploadCancel aborts an upload (the workflow's cancellation reaches the activity as ctx cancellation)
// and checks that it stops promptly and commits nothing.
func TestUploadCancel(t *testing.T) {
	const size = 64 * MiB
	f := newFixture(t, backup.Options{Concurrency: 2, ChunkSize: MiB, CheckpointEvery: 2})
	vol := f.ref("vol.raw")
	f.createVolume(vol, size, 9, volume.Extent{Offset: 0, Length: size})
	require.NoError(t, f.run(context.Background(), activities.CreateSnapshotName,
		activities.SnapshotInput{VolumeID: "vol1", Volume: vol, SnapshotID: "s1"}, nil, nil))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f.driver.onRead = func(total int64) {
		if total >= 8*MiB {
			cancel()
		}
	}
	start := time.Now()
	err := f.run(ctx, activities.UploadBackupName, activities.UploadBackupInput{
		VolumeID: "vol1", Volume: vol, SnapshotID: "s1", BackupID: "b1", Storage: storage}, nil, nil)
	require.Error(t, err)
	require.Less(t, time.Since(start), 10*time.Second)
	var appErr *temporal.ApplicationError
	if errors.As(err, &appErr) {
		require.False(t, appErr.NonRetryable(), "a cancellation is not classified as a typed failure: %v", err)
	}
	read := f.driver.read.Load()
	t.Logf("cancelled after reading %d MiB of %d: %v", read/MiB, size/MiB, err)
	require.Less(t, read, 16*MiB, "the upload stops within a few chunks of the cancellation")
	_, err = f.engine.Manifest(context.Background(), "vol1", "b1")
	require.ErrorIs(t, err, backup.ErrNotExist, "a cancelled upload commits no backup")
}

func TestErrors(t *testing.T) {
	const size = 16 * MiB
	f := newFixture(t, backup.Options{Concurrency: 2, ChunkSize: MiB})
	ctx := context.Background()
	vol := f.ref("vol.raw")
	f.createVolume(vol, size, 11, volume.Extent{Offset: 0, Length: 4 * MiB})
	require.NoError(t, f.run(ctx, activities.CreateSnapshotName,
		activities.SnapshotInput{VolumeID: "vol1", Volume: vol, SnapshotID: "s1"}, nil, nil))

	t.Run("MissingSnapshot", func(t *testing.T) {
		err := f.run(ctx, activities.UploadBackupName, activities.UploadBackupInput{
			VolumeID: "vol1", Volume: vol, SnapshotID: "nope", BackupID: "b1", Storage: storage}, nil, nil)
		requireType(t, err, activities.ErrNotFound)
	})
	t.Run("MissingVolume", func(t *testing.T) {
		err := f.run(ctx, activities.CreateSnapshotName, activities.SnapshotInput{
			VolumeID: "vol9", Volume: f.ref("missing.raw"), SnapshotID: "s1"}, nil, nil)
		requireType(t, err, activities.ErrNotFound)
		// ... and deleting from it is success.
		require.NoError(t, f.run(ctx, activities.DeleteSnapshotName,
			activities.SnapshotRef{VolumeID: "vol9", Volume: f.ref("missing.raw"), SnapshotID: "s1"}, nil, nil))
	})
	t.Run("MissingBackup", func(t *testing.T) {
		target := f.ref("never.raw")
		err := f.run(ctx, activities.RestoreBackupName, activities.RestoreBackupInput{
			SourceVolumeID: "vol1", BackupID: "nope", Storage: storage, TargetVolumeID: "vol2", Target: target, Create: true}, nil, nil)
		requireType(t, err, activities.ErrNotFound)
		_, err = os.Stat(target.Path)
		require.ErrorIs(t, err, os.ErrNotExist, "no volume is created for a backup that does not exist")
		require.NoError(t, f.run(ctx, activities.DeleteBackupName,
			activities.BackupRef{VolumeID: "vol1", BackupID: "nope", Storage: storage}, nil, nil))
	})
	t.Run("UnknownStorage", func(t *testing.T) {
		err := f.run(ctx, activities.UploadBackupName, activities.UploadBackupInput{
			VolumeID: "vol1", Volume: vol, SnapshotID: "s1", BackupID: "b1", Storage: "elsewhere"}, nil, nil)
		requireType(t, err, activities.ErrNoBackupStorage)
	})
	t.Run("InvalidArgument", func(t *testing.T) {
		err := f.run(ctx, activities.CreateSnapshotName, activities.SnapshotInput{
			VolumeID: "vol1", Volume: vol, SnapshotID: "../escape"}, nil, nil)
		requireType(t, err, activities.ErrInvalidArgument)
		err = f.run(ctx, activities.DeleteVolumeName, activities.DeleteVolumeInput{
			VolumeID: "vol1", Volume: activities.VolumeRef{Type: "rbd", Pool: "p", Image: "i"}}, nil, nil)
		requireType(t, err, activities.ErrInvalidArgument)
	})
	t.Run("Corrupt", func(t *testing.T) {
		require.NoError(t, f.run(ctx, activities.UploadBackupName, activities.UploadBackupInput{
			VolumeID: "vol1", Volume: vol, SnapshotID: "s1", BackupID: "b1", Storage: storage}, nil, nil))
		var chunks []backup.ObjectInfo
		require.NoError(t, f.store.List(ctx, "volumes/vol1/chunks/", func(oi backup.ObjectInfo) error {
			chunks = append(chunks, oi)
			return nil
		}))
		require.NotEmpty(t, chunks)
		garbage := bytes.Repeat([]byte{0xa5}, int(chunks[0].Size))
		require.NoError(t, f.store.Put(ctx, chunks[0].Name, bytes.NewReader(garbage), int64(len(garbage))))
		err := f.run(ctx, activities.RestoreBackupName, activities.RestoreBackupInput{
			SourceVolumeID: "vol1", BackupID: "b1", Storage: storage, TargetVolumeID: "vol2",
			Target: f.ref("corrupt.raw"), Create: true}, nil, nil)
		requireType(t, err, activities.ErrCorrupt)
	})
	t.Run("AttachedRunning", func(t *testing.T) {
		// A running domain is the driver conformance suite's business (volumetest.RunningDomain); here the
		// driver's refusal is injected to check what the workflow receives.
		f.driver.refuseWriter.Store(true)
		defer f.driver.refuseWriter.Store(false)
		require.NoError(t, f.run(ctx, activities.UploadBackupName, activities.UploadBackupInput{
			VolumeID: "vol1", Volume: vol, SnapshotID: "s1", BackupID: "b3", Storage: storage}, nil, nil))
		err := f.run(ctx, activities.RestoreBackupName, activities.RestoreBackupInput{
			SourceVolumeID: "vol1", BackupID: "b3", Storage: storage, TargetVolumeID: "vol1", Target: vol}, nil, nil)
		appErr := requireType(t, err, activities.ErrAttachedRunning)
		require.Equal(t, activities.MsgAttachedRunning, appErr.Message())
	})
}

func TestNewEngines(t *testing.T) {
	dir := t.TempDir()
	engines, err := agent.NewEngines(context.Background(), map[string]stores.Config{
		"a": {Type: "fs", FS: fs.Config{Path: filepath.Join(dir, "a")}},
		"b": {Type: "fs", FS: fs.Config{Path: filepath.Join(dir, "b")}},
	}, 100*float64(MiB), backup.Options{})
	require.NoError(t, err)
	require.Len(t, engines, 2)
	_, err = agent.NewEngines(context.Background(), map[string]stores.Config{"broken": {Type: "fs"}}, 0, backup.Options{})
	require.ErrorContains(t, err, `backup storage "broken"`)
	require.Nil(t, agent.SharedLimiter(0), "no bandwidth bound configured: no limiter")
	l := agent.SharedLimiter(float64(MiB))
	require.Equal(t, float64(MiB), float64(l.Limit()))
}

// countingDriver wraps the real driver to count (and optionally fail or observe) snapshot reads, and to
// inject the live refusal of an in-place restore.
type countingDriver struct {
	volume.Driver
	read         atomic.Int64
	failAfter    atomic.Int64 // > 0: reads fail once this many bytes were read
	onRead       func(total int64)
	refuseWriter atomic.Bool
	onCopy       func(done, total int64) // sees the driver's copy progress (raw snapshot, rollback, clone)
	// written counts the bytes written through the driver's writers; writes fail once writeFailAfter (> 0)
	// bytes were written.
	written        atomic.Int64
	writeFailAfter atomic.Int64
}

// progressDriver is what a driver that reports its copies' progress implements (the file driver does).
type progressDriver interface {
	WithProgress(ctx context.Context, report func(done, total int64)) context.Context
}

// WithProgress passes the wrapped driver's copy progress through, and shows it to onCopy: a test watches, or
// stalls, a copy half way.
func (d *countingDriver) WithProgress(ctx context.Context, report func(done, total int64)) context.Context {
	p, ok := d.Driver.(progressDriver)
	if !ok {
		return ctx
	}
	return p.WithProgress(ctx, func(done, total int64) {
		report(done, total)
		if d.onCopy != nil {
			d.onCopy(done, total)
		}
	})
}

func (d *countingDriver) OpenSnapshot(ctx context.Context, vol volume.Ref, name string) (volume.Reader, error) {
	r, err := d.Driver.OpenSnapshot(ctx, vol, name)
	if err != nil {
		return nil, err
	}
	return &countingReader{Reader: r, d: d}, nil
}

func (d *countingDriver) OpenWriter(ctx context.Context, vol volume.Ref) (volume.Writer, error) {
	if d.refuseWriter.Load() {
		return nil, &volume.AttachedRunningError{Volume: vol, Domain: "holdfast-test-vm"}
	}
	w, err := d.Driver.OpenWriter(ctx, vol)
	if err != nil {
		return nil, err
	}
	return &countingWriter{Writer: w, d: d}, nil
}

func (d *countingDriver) CreateVolume(ctx context.Context, vol volume.Ref, size int64) (volume.Writer, error) {
	w, err := d.Driver.CreateVolume(ctx, vol, size)
	if err != nil {
		return nil, err
	}
	return &countingWriter{Writer: w, d: d}, nil
}

// countingWriter counts (and may fail) writes, and passes Flush through.
type countingWriter struct {
	volume.Writer
	d *countingDriver
}

func (w *countingWriter) WriteAt(p []byte, off int64) (int, error) {
	total := w.d.written.Add(int64(len(p)))
	if limit := w.d.writeFailAfter.Load(); limit > 0 && total > limit {
		return 0, errInjected
	}
	return w.Writer.WriteAt(p, off)
}

func (w *countingWriter) Flush() error {
	f, ok := w.Writer.(volume.Flusher)
	if !ok {
		return errors.New("writer cannot flush")
	}
	return f.Flush()
}

type countingReader struct {
	volume.Reader
	d *countingDriver
}

var errInjected = errors.New("injected read error")

func (r *countingReader) ReadAt(p []byte, off int64) (int, error) {
	total := r.d.read.Add(int64(len(p)))
	if limit := r.d.failAfter.Load(); limit > 0 && total > limit {
		return 0, errInjected
	}
	if r.d.onRead != nil {
		r.d.onRead(total)
	}
	return r.Reader.ReadAt(p, off)
}

// heartbeatRecorder sees every activity.RecordHeartbeat call (the test environment's heartbeat listener only
// sees what the SDK's batching lets through).
type heartbeatRecorder struct {
	interceptor.WorkerInterceptorBase
	mu  sync.Mutex
	got []activities.Progress
}

func (r *heartbeatRecorder) take() []activities.Progress {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.got
	r.got = nil
	return out
}

func (r *heartbeatRecorder) InterceptActivity(ctx context.Context, next interceptor.ActivityInboundInterceptor) interceptor.ActivityInboundInterceptor {
	return &heartbeatInbound{ActivityInboundInterceptorBase: interceptor.ActivityInboundInterceptorBase{Next: next}, r: r}
}

type heartbeatInbound struct {
	interceptor.ActivityInboundInterceptorBase
	r *heartbeatRecorder
}

func (i *heartbeatInbound) Init(out interceptor.ActivityOutboundInterceptor) error {
	return i.Next.Init(&heartbeatOutbound{ActivityOutboundInterceptorBase: interceptor.ActivityOutboundInterceptorBase{Next: out}, r: i.r})
}

type heartbeatOutbound struct {
	interceptor.ActivityOutboundInterceptorBase
	r *heartbeatRecorder
}

func (o *heartbeatOutbound) RecordHeartbeat(ctx context.Context, details ...any) {
	if len(details) == 1 {
		if p, ok := details[0].(activities.Progress); ok {
			o.r.mu.Lock()
			o.r.got = append(o.r.got, p)
			o.r.mu.Unlock()
		}
	}
	o.Next.RecordHeartbeat(ctx, details...)
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The agent runs as root: it checks again that what it is asked to touch lives in one of its roots, with
// no link on the way, whatever the control plane sent.
func TestSecurityAgentTouchesOnlyItsRoots(t *testing.T) {
	f := newFixture(t, backup.Options{})
	ctx := context.Background()
	outside := filepath.Join(t.TempDir(), "secret.raw")
	require.NoError(t, os.WriteFile(outside, bytes.Repeat([]byte{7}, 1<<20), 0o600))
	require.NoError(t, os.Symlink(filepath.Dir(outside), filepath.Join(f.dir, "link")))
	for name, ref := range map[string]activities.VolumeRef{
		"outside the roots": {Type: "file", Path: outside, Format: "raw"},
		"through a link":    {Type: "file", Path: filepath.Join(f.dir, "link", "secret.raw"), Format: "raw"},
		"traversal":         {Type: "file", Path: f.dir + "/../" + filepath.Base(outside), Format: "raw"},
		"rbd pool":          {Type: "rbd", Pool: "rbd", Image: "x"},
	} {
		err := f.run(ctx, activities.CreateSnapshotName,
			activities.SnapshotInput{VolumeID: "vol1", Volume: ref, SnapshotID: "s1"}, nil, nil)
		requireType(t, err, activities.ErrInvalidArgument)
		err = f.run(ctx, activities.DeleteVolumeName, activities.DeleteVolumeInput{VolumeID: "vol1", Volume: ref}, nil, nil)
		requireType(t, err, activities.ErrInvalidArgument)
		assert.NotContains(t, err.Error(), outside, name)
	}
	require.FileExists(t, outside)
	_, err := os.Stat(filepath.Join(filepath.Dir(outside), ".secret.raw.holdfast"))
	assert.ErrorIs(t, err, os.ErrNotExist, "nothing was created next to the file")
}

// A compensation meets a volume its operation did not create (the target was in the way): it leaves it
// as it is and succeeds, instead of retrying until the deadline.
func TestDeleteVolumeLeavesWhatItDidNotCreate(t *testing.T) {
	f := newFixture(t, backup.Options{})
	ctx := context.Background()
	ref := f.ref("theirs.raw")
	ref.Format = "raw"
	require.NoError(t, os.WriteFile(ref.Path, bytes.Repeat([]byte{9}, 1<<20), 0o600))
	ref.CreatedBy = "op-mine"
	require.NoError(t, f.run(ctx, activities.DeleteVolumeName,
		activities.DeleteVolumeInput{VolumeID: "vol1", Volume: ref}, nil, nil))
	assert.Equal(t, bytes.Repeat([]byte{9}, 1<<20), readAll(t, ref.Path))
}

func readAll(t *testing.T, path string) []byte {
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return b
}
