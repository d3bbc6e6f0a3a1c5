package agent

import (
	"context"
	"errors"
	"log/slog"
	"strings"

	"go.temporal.io/sdk/temporal"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/activities/volume"
)

// Every activity here runs its driver work through hypervisorCall: it heartbeats while the hypervisor works
// and returns within seconds of an abort or deadline, even when a hypervisor call hangs.

// Attachment reports, live from libvirt, whether a running instance uses the volume. Read-only, so
// trivially idempotent.
func (a *Activities) Attachment(ctx context.Context, in activities.AttachmentInput) (activities.AttachmentResult, error) {
	if err := checkID("volume_id", in.VolumeID); err != nil {
		return activities.AttachmentResult{}, err
	}
	d, ref, err := a.driver("volume", in.Volume)
	if err != nil {
		return activities.AttachmentResult{}, err
	}
	log := a.logger(ctx, in.VolumeID)
	att, err := hypervisorCall(ctx, log, "attachment", d, func(ctx context.Context) (volume.Attachment, error) {
		return d.Attachment(ctx, ref)
	})
	if err != nil {
		return activities.AttachmentResult{}, classify(ctx, activities.AttachmentName, err)
	}
	log.Debug("attachment", "attached", att.Attached, "domain", att.Domain, "running", att.Running)
	return activities.AttachmentResult{Attached: att.Attached, Domain: att.Domain, Running: att.Running}, nil
}

// CreateSnapshot takes snapshot SnapshotID, freezing a running guest first when the driver can. Idempotent:
// the driver returns an existing snapshot of that name (with the consistency recorded when it was taken).
// A raw file volume's snapshot is a full copy: it heartbeats the bytes copied, and an abort stops the copy
// and removes the partial file (DeleteSnapshot, its compensation, removes one a killed agent left).
//
// in.Freeze is not passed down: the volume.Driver contract always attempts the freeze on a running domain
// and records honestly whether it worked, which is the only behaviour a backup wants.
func (a *Activities) CreateSnapshot(ctx context.Context, in activities.SnapshotInput) (activities.SnapshotResult, error) {
	d, ref, log, err := a.snapshotCall(ctx, in.VolumeID, in.Volume, in.SnapshotID)
	if err != nil {
		return activities.SnapshotResult{}, err
	}
	snap, err := hypervisorCall(ctx, log, "snapshot", d, func(ctx context.Context) (volume.Snapshot, error) {
		return d.CreateSnapshot(ctx, ref, in.SnapshotID)
	})
	if err != nil {
		log.Error("create snapshot failed", "error", err)
		return activities.SnapshotResult{}, classify(ctx, activities.CreateSnapshotName, err)
	}
	res := activities.SnapshotResult{SnapshotID: snap.Name, SizeBytes: snap.Size,
		Consistency: consistency(snap.Consistency), FreezeError: snap.FreezeError}
	log.Info("snapshot created", "size_bytes", res.SizeBytes, "consistency", res.Consistency,
		"freeze_error", res.FreezeError)
	return res, nil
}

// snapshotCall validates the ids of a call on one snapshot and resolves its driver and logger.
func (a *Activities) snapshotCall(ctx context.Context, volumeID string, vol activities.VolumeRef, snapshotID string) (
	volume.Driver, volume.Ref, *slog.Logger, error) {
	if err := checkIDs("volume_id", volumeID, "snapshot_id", snapshotID); err != nil {
		return nil, volume.Ref{}, nil, err
	}
	d, ref, err := a.driver("volume", vol)
	if err != nil {
		return nil, volume.Ref{}, nil, err
	}
	return d, ref, a.logger(ctx, volumeID, "snapshot_id", snapshotID), nil
}

// consistency reports the driver's record as is ("offline" included: nothing was writing, which is a
// stronger statement than "crash" and a truthful one). Only a missing record (a snapshot the driver did not
// create, or whose record was lost) is downgraded to "crash": a snapshot is never claimed consistent
// without evidence.
func consistency(c volume.Consistency) string {
	if c == "" {
		return activities.ConsistencyCrash
	}
	return string(c)
}

// DeleteSnapshot removes a snapshot, and what an interrupted attempt to create it left (the compensation of
// CreateSnapshot). Idempotent: a missing snapshot, or a missing volume, is success.
func (a *Activities) DeleteSnapshot(ctx context.Context, in activities.SnapshotRef) error {
	d, ref, log, err := a.snapshotCall(ctx, in.VolumeID, in.Volume, in.SnapshotID)
	if err != nil {
		return err
	}
	err = hypervisorDo(ctx, log, "delete", d, func(ctx context.Context) error {
		return d.DeleteSnapshot(ctx, ref, in.SnapshotID)
	})
	if err != nil && !errors.Is(err, volume.ErrNotFound) {
		log.Error("delete snapshot failed", "error", err)
		return classify(ctx, activities.DeleteSnapshotName, err)
	}
	log.Info("snapshot deleted")
	return nil
}

// RollbackSnapshot makes the volume equal to the snapshot, in place. The driver checks live that no running
// instance uses the volume (ErrAttachedRunning otherwise). Idempotent: rolling back twice gives the same
// contents. An interrupted rollback leaves the volume as it was (a raw one is copied beside it and renamed
// over it).
func (a *Activities) RollbackSnapshot(ctx context.Context, in activities.SnapshotRef) error {
	d, ref, log, err := a.snapshotCall(ctx, in.VolumeID, in.Volume, in.SnapshotID)
	if err != nil {
		return err
	}
	err = hypervisorDo(ctx, log, "rollback", d, func(ctx context.Context) error {
		return d.RollbackSnapshot(ctx, ref, in.SnapshotID)
	})
	if err != nil {
		log.Error("rollback failed", "error", err)
		return classify(ctx, activities.RollbackSnapshotName, err)
	}
	log.Info("rolled back to snapshot")
	return nil
}

// CloneSnapshot creates Target holding snapshot SnapshotID of Source. Idempotent: the driver reuses a
// target left by an earlier attempt of the same operation (Target.CreatedBy) and rewrites it from the
// snapshot; any other existing target is refused (ErrExists), never overwritten.
//
// BytesWritten is reported as 0: the driver copies (file) or clones and flattens (rbd) internally and does
// not say how much it wrote.
func (a *Activities) CloneSnapshot(ctx context.Context, in activities.CloneSnapshotInput) (activities.RestoreResult, error) {
	if err := checkIDs("source_volume_id", in.SourceVolumeID, "snapshot_id", in.SnapshotID,
		"target_volume_id", in.TargetVolumeID); err != nil {
		return activities.RestoreResult{}, err
	}
	d, src, err := a.driver("source", in.Source)
	if err != nil {
		return activities.RestoreResult{}, err
	}
	if in.Target.Type != in.Source.Type {
		return activities.RestoreResult{}, invalid("clone: target type " + in.Target.Type +
			" differs from source type " + in.Source.Type + " (restore a backup to change storage type)")
	}
	_, dst, err := a.driver("target", in.Target)
	if err != nil {
		return activities.RestoreResult{}, err
	}
	log := a.logger(ctx, in.TargetVolumeID, "source_volume_id", in.SourceVolumeID, "snapshot_id", in.SnapshotID)
	size, err := hypervisorCall(ctx, log, "clone", d, func(ctx context.Context) (int64, error) {
		if err := d.CreateVolumeFromSnapshot(ctx, src, in.SnapshotID, dst); err != nil {
			return 0, err
		}
		return d.Size(ctx, dst)
	})
	if err != nil {
		log.Error("clone failed", "error", err)
		return activities.RestoreResult{}, classify(ctx, activities.CloneSnapshotName, err)
	}
	log.Info("volume cloned from snapshot", "size_bytes", size)
	return activities.RestoreResult{SizeBytes: size}, nil
}

// InspectVolume checks a volume being registered, on this host, before anything is done to it: placement
// (the agent's roots and pools, no link below a root) and what the driver finds there (a regular file of the
// recorded format, a qcow2 without backing or data file, an RBD image). Read-only, so idempotent.
func (a *Activities) InspectVolume(ctx context.Context, in activities.AttachmentInput) (activities.InspectResult, error) {
	if err := checkID("volume_id", in.VolumeID); err != nil {
		return activities.InspectResult{}, err
	}
	d, ref, err := a.driver("storage", in.Volume)
	if err != nil {
		return activities.InspectResult{}, err
	}
	log := a.logger(ctx, in.VolumeID)
	size, err := hypervisorCall(ctx, log, "inspect", d, func(ctx context.Context) (int64, error) {
		return d.Size(ctx, ref)
	})
	if err == nil {
		return activities.InspectResult{SizeBytes: size}, nil
	}
	if ctx.Err() == nil {
		log.Warn("volume refused at registration", "error", err)
	}
	err = classify(ctx, activities.InspectVolumeName, err)
	var app *temporal.ApplicationError
	if !errors.As(err, &app) {
		return activities.InspectResult{}, err
	}
	// The panel reads this answer: it says what is wrong, not where on the host.
	msg := strings.TrimPrefix(app.Message(), activities.InspectVolumeName+": ")
	msg = strings.ReplaceAll(msg, ref.String()+": ", "")
	msg = strings.ReplaceAll(msg, ref.Path, "the volume's path")
	return activities.InspectResult{}, temporal.NewNonRetryableApplicationError(msg, app.Type(), nil)
}

// DeleteVolume removes a volume, its snapshots and whatever interrupted calls left in its metadata
// (compensation of a failed restore to a new volume, including a clone stopped half way). With
// Volume.CreatedBy the driver deletes only a volume that operation created; one it did not create is left
// untouched and the compensation succeeds (nothing of its own was there). Idempotent: a missing volume is
// success. Refused (ErrAttachedRunning) while a running instance uses it.
func (a *Activities) DeleteVolume(ctx context.Context, in activities.DeleteVolumeInput) error {
	if err := checkID("volume_id", in.VolumeID); err != nil {
		return err
	}
	d, ref, err := a.driver("volume", in.Volume)
	if err != nil {
		return err
	}
	log := a.logger(ctx, in.VolumeID)
	err = hypervisorDo(ctx, log, "delete", d, func(ctx context.Context) error { return d.DeleteVolume(ctx, ref) })
	if errors.Is(err, volume.ErrNotOwned) {
		// A compensation removes what its operation created, and this operation created nothing here (its
		// target was in the way): there is nothing of its own to delete, and the file is not touched.
		log.Warn("volume not created by this operation; left as it is", "created_by", in.Volume.CreatedBy)
		return nil
	}
	if err != nil && !errors.Is(err, volume.ErrNotFound) {
		log.Error("delete volume failed", "error", err)
		return classify(ctx, activities.DeleteVolumeName, err)
	}
	a.exports.end(in.VolumeID) // an instant restore's export, if this volume was one being hydrated
	a.http.end(in.VolumeID)
	a.metrics.InstantExports(a.hypervisorID, a.exportCount())
	log.Info("volume deleted")
	return nil
}
