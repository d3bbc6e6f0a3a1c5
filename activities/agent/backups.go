package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"go.temporal.io/sdk/activity"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/activities/backup"
	"github.com/holdfast/holdfast/activities/volume"
)

// HeartbeatEvery is how often a long activity re-sends its latest progress even when the engine has nothing
// new to say (throttled, waiting on a slow store): well inside the workflows' ~30 s heartbeat timeout, so that
// a missed heartbeat means a dead host, and so that cancellation, which Temporal delivers in heartbeat
// responses, arrives within seconds. The SDK batches faster calls itself.
const HeartbeatEvery = 5 * time.Second

// heartbeater sends activities.Progress heartbeats: every engine report at once, and the latest one again
// every HeartbeatEvery until stopped.
type heartbeater struct {
	ctx context.Context
	// floor is the resume checkpoint this attempt started from. A resumed engine first reports its prepare
	// phase with NextOffset 0; heartbeating that would make a crash right then lose the checkpoint, so a
	// report never goes below floor (the engine still only resumes what its journal vouches for).
	floor int64

	mu   sync.Mutex
	last activities.Progress
	stop chan struct{}
	done chan struct{}
}

func startHeartbeats(ctx context.Context, floor int64) *heartbeater {
	h := &heartbeater{ctx: ctx, floor: floor, stop: make(chan struct{}), done: make(chan struct{}),
		// Until the engine's first report, the ticker re-sends the checkpoint this attempt resumed from.
		last: activities.Progress{Phase: backup.PhasePrepare, NextOffset: floor}}
	go func() {
		defer close(h.done)
		t := time.NewTicker(HeartbeatEvery)
		defer t.Stop()
		for {
			select {
			case <-h.stop:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				h.mu.Lock()
				p := h.last
				h.mu.Unlock()
				activity.RecordHeartbeat(ctx, p)
			}
		}
	}()
	return h
}

// report is the engine's Progress callback.
func (h *heartbeater) report(p backup.Progress) {
	hp := activities.Progress{Phase: p.Phase, BytesDone: p.BytesDone, BytesTotal: p.BytesTotal,
		NextOffset: max(p.NextOffset, h.floor), BytesPerSecond: p.BytesPerSecond}
	h.mu.Lock()
	h.last = hp
	h.mu.Unlock()
	activity.RecordHeartbeat(h.ctx, hp)
}

func (h *heartbeater) close() {
	close(h.stop)
	<-h.done
}

// previousProgress returns the last progress a failed earlier attempt of this activity heartbeated, if any.
func previousProgress(ctx context.Context) (activities.Progress, bool) {
	var p activities.Progress
	if !activity.HasHeartbeatDetails(ctx) || activity.GetHeartbeatDetails(ctx, &p) != nil {
		return activities.Progress{}, false
	}
	return p, true
}

// UploadBackup streams snapshot SnapshotID into backup storage Storage as backup BackupID, heartbeating
// activities.Progress. A retry resumes from the checkpoint (NextOffset) of the last heartbeat instead of
// starting over; a retry after the backup was committed returns it (idempotent). Cancelling ctx stops the
// upload within about one chunk and leaves no manifest; the workflow's compensation (AbandonBackup, on the
// storage's queue) removes what it uploaded. The backup is committed only once every chunk its manifest
// lists is confirmed in the storage, under the volume's lock there (backup.Engine.Backup): a GC of the
// storage cannot take a chunk from it. While a GC or abandon of the volume runs it waits (heartbeating),
// then fails retryably; a newer attempt of the same backup takes its lock over and this one stops.
//
// ParentBackupID is used for deduplication against the parent's manifest (its chunks are neither looked up
// nor uploaded again). With BaseSnapshotID, the snapshot the parent was read from, only what changed since
// it is read (changedSince): the other chunks are the parent's. Without it, or when it cannot be trusted,
// every block is read and hashed (unchanged chunks cost a read, not an upload), and the result says why.
func (a *Activities) UploadBackup(ctx context.Context, in activities.UploadBackupInput) (activities.UploadBackupResult, error) {
	if err := checkIDs("volume_id", in.VolumeID, "snapshot_id", in.SnapshotID, "backup_id", in.BackupID); err != nil {
		return activities.UploadBackupResult{}, err
	}
	if in.ParentBackupID != "" {
		if err := checkID("parent_backup_id", in.ParentBackupID); err != nil {
			return activities.UploadBackupResult{}, err
		}
	}
	e, err := a.engine(in.Storage)
	if err != nil {
		return activities.UploadBackupResult{}, err
	}
	d, ref, err := a.driver("volume", in.Volume)
	if err != nil {
		return activities.UploadBackupResult{}, err
	}
	log := a.logger(ctx, in.VolumeID, "snapshot_id", in.SnapshotID, "backup_id", in.BackupID, "storage", in.Storage)

	parent := in.ParentBackupID
	var parentManifest *backup.Manifest // read once: its size tells whether changes since the base are usable
	if parent != "" {
		// A parent only saves uploads; losing it (retention deleted it, its manifest is damaged) must not
		// fail a backup that is complete on its own.
		if parentManifest, err = e.Manifest(ctx, in.VolumeID, parent); err != nil {
			if ctx.Err() != nil {
				return activities.UploadBackupResult{}, classify(ctx, activities.UploadBackupName, err)
			}
			log.Warn("parent backup unusable; uploading without it", "parent_backup_id", parent, "error", err)
			parent, parentManifest = "", nil
		}
	}

	r, err := d.OpenSnapshot(ctx, ref, in.SnapshotID)
	if err != nil {
		log.Error("open snapshot failed", "error", err)
		return activities.UploadBackupResult{}, classify(ctx, activities.UploadBackupName, err)
	}
	defer r.Close()
	changed, whyFull := a.changedSince(ctx, in, ref, parentManifest, r)
	if err := ctx.Err(); err != nil {
		return activities.UploadBackupResult{}, classify(ctx, activities.UploadBackupName, err)
	}
	src := &readCounter{ReaderAt: r}

	var resume *backup.Checkpoint
	if p, ok := previousProgress(ctx); ok && p.NextOffset > 0 {
		resume = &backup.Checkpoint{NextOffset: p.NextOffset}
		log.Info("resuming upload", "next_offset", p.NextOffset)
	}
	hb := startHeartbeats(ctx, resume.Offset())
	defer hb.close()

	start := time.Now()
	log.Info("upload started", "size_bytes", r.Size(), "parent_backup_id", parent,
		"base_snapshot_id", in.BaseSnapshotID, "incremental", changed != nil, "full_read_reason", whyFull)
	m, err := e.Backup(ctx, backup.BackupRequest{
		VolumeID:   in.VolumeID,
		BackupID:   in.BackupID,
		Source:     src,
		Size:       r.Size(),
		Parent:     parent,
		Changed:    changed,
		Labels:     in.Labels,
		SourceType: sourceType(ref),
		Resume:     resume,
		Progress:   hb.report,
	})
	if err != nil {
		log.Error("upload failed", "error", err)
		return activities.UploadBackupResult{}, classify(ctx, activities.UploadBackupName, err)
	}
	took := time.Since(start)
	read := src.n.Load()
	log.Info("upload done", "size_bytes", m.Size, "stored_bytes", m.StoredBytes, "read_bytes", read,
		"chunks", len(m.Chunks), "duration", took.Round(time.Millisecond))
	a.metrics.BackupRead(a.hypervisorID, read)
	a.metrics.BackupStored(a.hypervisorID, m.StoredBytes)
	if took > 0 {
		a.metrics.Throughput(a.hypervisorID, "backup", float64(m.Size)/took.Seconds())
	}
	return activities.UploadBackupResult{SizeBytes: m.Size, StoredBytes: m.StoredBytes, ReadBytes: read,
		Incremental: changed != nil, FullReadReason: whyFull, KeepSnapshot: tracksChanges(ref)}, nil
}

// changedSince returns the extents of snapshot r that changed since in.BaseSnapshotID, or nil and why the
// whole snapshot must be read instead: no base, a driver without cheap change tracking, a parent that
// cannot be used, a resized volume, or a base the driver cannot diff against (deleted behind our back). A
// wrong incremental is data loss, so anything short of the driver's own answer is a full read. The reasons
// are short fixed phrases (users read them on the backup); the driver's error goes to the log.
func (a *Activities) changedSince(ctx context.Context, in activities.UploadBackupInput, ref volume.Ref,
	parent *backup.Manifest, r volume.Reader) ([]backup.Extent, string) {
	switch {
	case !tracksChanges(ref):
		return nil, "no change tracking on raw files"
	case in.BaseSnapshotID == "":
		return nil, cmp.Or(in.FullReadReason, "no base snapshot")
	case checkID("base_snapshot_id", in.BaseSnapshotID) != nil:
		return nil, "base snapshot unusable"
	case parent == nil:
		return nil, "parent backup unusable"
	case parent.Size != r.Size():
		return nil, "volume resized"
	}
	exts, err := r.Changed(ctx, in.BaseSnapshotID)
	if err != nil {
		a.logger(ctx, in.VolumeID, "base_snapshot_id", in.BaseSnapshotID).
			Warn("changes since the base snapshot unavailable; reading everything", "error", err)
		return nil, "base snapshot unusable"
	}
	out := make([]backup.Extent, len(exts)) // non-nil even when empty: nothing changed
	for i, x := range exts {
		out[i] = backup.Extent{Offset: x.Offset, Length: x.Length}
	}
	return out, ""
}

// tracksChanges says whether the volume's driver diffs a snapshot against an earlier one cheaply: RBD
// (diff-iterate) and qcow2 (cluster tables). A raw file's "diff" reads both copies in full.
func tracksChanges(ref volume.Ref) bool {
	t := sourceType(ref)
	return t == string(volume.TypeRBD) || t == string(volume.FormatQCOW2)
}

// readCounter counts the bytes read through it: what a backup actually read from the volume.
type readCounter struct {
	io.ReaderAt
	n atomic.Int64
}

func (c *readCounter) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.ReaderAt.ReadAt(p, off)
	c.n.Add(int64(n))
	return n, err
}

// sourceType is what the catalog records as the backup's origin: "rbd", or the file volume's recorded format
// (the driver's rule: Ref.Format, else the path's extension), never the image's first bytes, which a raw
// volume's guest writes.
func sourceType(ref volume.Ref) string {
	if ref.Type != volume.TypeFile {
		return string(ref.Type)
	}
	if ref.Format != "" {
		return string(ref.Format)
	}
	if filepath.Ext(ref.Path) == ".qcow2" {
		return string(volume.FormatQCOW2)
	}
	return string(volume.FormatRaw)
}

// RestoreBackup writes backup BackupID onto Target, heartbeating progress. With Create, Target is created at
// the backup's size first; otherwise it is overwritten in place, which the driver refuses (ErrAttachedRunning)
// while a running instance uses it. Idempotent: a retry writes the same bytes again from the start (the
// engine cannot resume restores), and a target created by an earlier attempt is reused.
func (a *Activities) RestoreBackup(ctx context.Context, in activities.RestoreBackupInput) (activities.RestoreResult, error) {
	if err := checkIDs("source_volume_id", in.SourceVolumeID, "backup_id", in.BackupID,
		"target_volume_id", in.TargetVolumeID); err != nil {
		return activities.RestoreResult{}, err
	}
	e, err := a.engine(in.Storage)
	if err != nil {
		return activities.RestoreResult{}, err
	}
	d, ref, err := a.driver("target", in.Target)
	if err != nil {
		return activities.RestoreResult{}, err
	}
	log := a.logger(ctx, in.TargetVolumeID, "source_volume_id", in.SourceVolumeID, "backup_id", in.BackupID,
		"storage", in.Storage, "create", in.Create)

	// The manifest first: a missing or damaged backup must not create (or open) the target at all.
	m, err := e.Manifest(ctx, in.SourceVolumeID, in.BackupID)
	if err != nil {
		log.Error("read manifest failed", "error", err)
		return activities.RestoreResult{}, classify(ctx, activities.RestoreBackupName, err)
	}

	w, zeroed, err := openTarget(ctx, d, ref, m.Size, in.Create, log)
	if err != nil {
		log.Error("open target failed", "error", err)
		return activities.RestoreResult{}, classify(ctx, activities.RestoreBackupName, err)
	}
	if w.Size() < m.Size {
		w.Close()
		return activities.RestoreResult{}, invalid(fmt.Sprintf("target volume %s is %d bytes, smaller than backup %s (%d bytes)",
			in.TargetVolumeID, w.Size(), in.BackupID, m.Size))
	}

	// A retry resumes from the point its earlier attempt flushed (the target is the same volume: the one
	// this operation created, or the one it restores in place, locked by the operation meanwhile).
	var resume *backup.Checkpoint
	if p, ok := previousProgress(ctx); ok && p.NextOffset > 0 && p.NextOffset <= m.Size {
		resume = &backup.Checkpoint{NextOffset: p.NextOffset}
		log.Info("resuming restore", "next_offset", p.NextOffset)
	}
	var flush func() error
	if f, ok := w.(volume.Flusher); ok {
		flush = f.Flush
	}
	hb := startHeartbeats(ctx, resume.Offset())
	start := time.Now()
	log.Info("restore started", "size_bytes", m.Size, "target_zeroed", zeroed)
	res, err := e.Restore(ctx, backup.RestoreRequest{VolumeID: in.SourceVolumeID, BackupID: in.BackupID,
		Target: w, TargetZeroed: zeroed, Progress: hb.report, Flush: flush, Resume: resume})
	hb.close()
	if err != nil {
		w.Close() // the target is garbage now; the workflow rolls back or deletes it
		log.Error("restore failed", "error", err)
		return activities.RestoreResult{}, classify(ctx, activities.RestoreBackupName, err)
	}
	// A restore is complete only once Close (flush, qemu-nbd shutdown) succeeded.
	if err := w.Close(); err != nil {
		log.Error("flush target failed", "error", err)
		return activities.RestoreResult{}, classify(ctx, activities.RestoreBackupName, err)
	}
	took := time.Since(start)
	log.Info("restore done", "size_bytes", m.Size, "bytes_written", res.BytesWritten,
		"bytes_skipped", res.BytesSkipped, "duration", took.Round(time.Millisecond))
	a.metrics.RestoreWritten(a.hypervisorID, res.BytesWritten)
	if took > 0 {
		a.metrics.Throughput(a.hypervisorID, "restore", float64(m.Size)/took.Seconds())
	}
	return activities.RestoreResult{SizeBytes: m.Size, BytesWritten: res.BytesWritten}, nil
}

// openTarget opens the restore's target and says whether it is known to read as zeros, which lets the
// engine skip the backup's zero ranges and keep the volume thin.
func openTarget(ctx context.Context, d volume.Driver, ref volume.Ref, size int64, create bool,
	log *slog.Logger) (volume.Writer, bool, error) {
	if !create {
		w, err := d.OpenWriter(ctx, ref)
		return w, false, err
	}
	// CreateVolume reuses an existing volume only for a retry of the operation that created it
	// (ref.CreatedBy; anything else there is refused with ErrExists), and that one does not read as zeros:
	// the earlier attempt wrote into it. Zero ranges are then written too, so the result is byte-identical.
	_, err := d.Size(ctx, ref)
	existed := err == nil
	if err != nil && !errors.Is(err, volume.ErrNotFound) {
		return nil, false, err
	}
	if existed {
		log.Info("target volume exists; writing zero ranges too")
	}
	w, err := d.CreateVolume(ctx, ref, size)
	return w, !existed, err
}

// DeleteBackup removes a backup's manifest and resume journal; its chunks go at garbage collection, because
// other backups of the volume may share them. Idempotent: a missing backup is success. (A backup that failed
// is removed with AbandonBackup instead, which takes its chunks at once.)
func (a *Activities) DeleteBackup(ctx context.Context, in activities.BackupRef) error {
	if err := checkIDs("volume_id", in.VolumeID, "backup_id", in.BackupID); err != nil {
		return err
	}
	e, err := a.engine(in.Storage)
	if err != nil {
		return err
	}
	log := a.logger(ctx, in.VolumeID, "backup_id", in.BackupID, "storage", in.Storage)
	if err := e.Delete(ctx, in.VolumeID, in.BackupID); err != nil && !errors.Is(err, backup.ErrNotExist) {
		log.Error("delete backup failed", "error", err)
		return classify(ctx, activities.DeleteBackupName, err)
	}
	log.Info("backup deleted")
	return nil
}
