package workflows

import (
	"errors"
	"fmt"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/holdfast/holdfast/activities"
)

// Deregistration (DELETE /v1/volumes/{volume_id}): the panel deleted the VPS, or stops protecting a disk.
// Holdfast deletes what it made of the volume — its snapshots and, unless they are kept for a while, its
// backups — and gives the volume's location back. The disk itself belongs to the panel and stays as it is.
// While backups are kept the volume's ID stays with its owner: registering it again (same owner) brings the
// volume back with its backups; when the period ends they are deleted.

// maxKeepBackups bounds how long a deregistered volume's backups may be kept.
const maxKeepBackups = 10 * 366 * 24 * time.Hour

// keptPurgeRetry is how long a failed deletion of kept backups waits before it is tried again.
const keptPurgeRetry = time.Hour

// DeregisterWorkflow deletes a volume's snapshots, the base snapshot its backups kept (in.Base), its backups
// (unless Request.KeepBackupsFor keeps them), and releases its location. A snapshot or backup already gone is
// not an error: the panel may have deleted the disk first. It also serves the deletion of kept backups once
// their period ends (in.Volume then has no storage, and nothing but the backups is touched).
func DeregisterWorkflow(ctx workflow.Context, in OperationInput) (OperationResult, error) {
	return runSaga(ctx, in, func(ctx workflow.Context, s *saga) (OperationResult, error) {
		vol := in.Volume
		for _, it := range in.Snapshots {
			s.doing("delete snapshot " + it.ItemID + " on hypervisor " + vol.HypervisorID)
			if err := deleteSnapshotOn(ctx, vol.HypervisorID, activities.SnapshotRef{VolumeID: vol.VolumeID,
				Volume: vol.Storage, SnapshotID: it.ItemID}); err != nil {
				return OperationResult{}, fmt.Errorf("snapshot %s: %w", it.ItemID, err)
			}
		}
		if b := in.Base; b != nil {
			s.doing("delete the backup base snapshot on hypervisor " + b.HypervisorID)
			if err := deleteSnapshotOn(ctx, b.HypervisorID, activities.SnapshotRef{VolumeID: vol.VolumeID,
				Volume: b.Volume, SnapshotID: b.SnapshotID}); err != nil {
				return OperationResult{}, fmt.Errorf("base snapshot %s: %w", b.SnapshotID, err)
			}
		}
		if in.Request.KeepBackupsFor == 0 {
			for _, it := range in.Backups {
				if it.Storage == "" {
					continue // failed before it reached a storage
				}
				s.doing("delete backup " + it.ItemID + " on storage " + it.Storage)
				if err := deleteBackupEverywhere(ctx, vol.VolumeID, it); err != nil {
					return OperationResult{}, fmt.Errorf("backup %s: %w", it.ItemID, err)
				}
			}
		}
		if vol.Storage.Type == "" {
			return OperationResult{}, nil
		}
		s.doing("release the volume's location")
		rctx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{TaskQueue: TaskQueue,
			StartToCloseTimeout: placementReleaseTimeout, RetryPolicy: retryPolicy()})
		return OperationResult{}, workflow.ExecuteActivity(rctx, ReleasePlacementActivity, ReleasePlacementInput{
			OperationID: in.Request.OperationID, VolumeID: vol.VolumeID, HypervisorID: vol.HypervisorID,
			Storage: vol.Storage}).Get(ctx, nil)
	})
}

// deleteSnapshotOn deletes a snapshot on its hypervisor; one already gone is not an error.
func deleteSnapshotOn(ctx workflow.Context, hypervisorID string, ref activities.SnapshotRef) error {
	err := workflow.ExecuteActivity(onHypervisor(ctx, hypervisorID), activities.DeleteSnapshotName, ref).Get(ctx, nil)
	if isNotFound(err) {
		return nil
	}
	return err
}

func isNotFound(err error) bool {
	var app *temporal.ApplicationError
	return errors.As(err, &app) && app.Type() == activities.ErrNotFound
}

// deregistered turns the volume into what is left of it after a deregistration: nothing, or its backups
// kept until a time.
func (v *volume) deregistered(ctx workflow.Context, req OperationRequest) {
	now := workflow.Now(ctx)
	v.st.Registered = false
	v.dropAll(KindSnapshot, now)
	v.st.PolicyID = ""
	v.st.Base = nil // deleted by the deregistration
	if req.KeepBackupsFor > 0 && len(v.st.Backups) > 0 {
		until := now.Add(req.KeepBackupsFor)
		v.st.BackupsKeptUntil = &until
		return
	}
	v.dropAll(KindBackup, now)
}

// dropAll removes every item of a kind, gone at now (remembered for billing).
func (v *volume) dropAll(kind Kind, now time.Time) {
	for _, it := range *v.items(kind) {
		v.gone(kind, it, now)
	}
	*v.items(kind) = nil
}

// keptRemaining is how long until a deregistered volume's kept backups are due for deletion (0: none kept).
func (v *volume) keptRemaining(ctx workflow.Context) time.Duration {
	if v.st.BackupsKeptUntil == nil || v.st.Registered {
		return 0
	}
	return max(v.st.BackupsKeptUntil.Sub(workflow.Now(ctx)), time.Nanosecond)
}

func (v *volume) purgeDue(ctx workflow.Context) bool {
	return v.st.BackupsKeptUntil != nil && !v.st.Registered && v.st.Active == nil && v.st.Queued == nil &&
		!workflow.Now(ctx).Before(*v.st.BackupsKeptUntil)
}

// purgeKept deletes a deregistered volume's kept backups at the end of their period (retried hourly when a
// storage is down). It runs in the volume's own loop: the volume is not registered, so nothing else runs.
func (v *volume) purgeKept(ctx workflow.Context) {
	now := workflow.Now(ctx)
	operationID := fmt.Sprintf("op-purge-%s-%d", v.volumeID, now.Unix())
	in := OperationInput{Volume: VolumeSpec{VolumeID: v.volumeID, Deadline: v.st.Spec.Deadline},
		Request: OperationRequest{OperationID: operationID, Kind: KindDeregister}, Backups: v.st.Backups,
		StartedAt: now}
	err := workflow.ExecuteChildWorkflow(v.operationChild(ctx, operationID, KindDeregister), DeregisterWorkflow,
		in).Get(ctx, nil)
	if err != nil {
		retry := workflow.Now(ctx).Add(keptPurgeRetry)
		v.st.BackupsKeptUntil = &retry
		workflow.GetLogger(ctx).Error("kept backups not deleted; trying again later", "volume_id", v.volumeID,
			"error", err)
		return
	}
	v.dropAll(KindBackup, workflow.Now(ctx))
	v.st.BackupsKeptUntil = nil
	metricsRetained(ctx, v)
}

// checkKept is registration's rule for a deregistered volume whose backups are kept: only its owner may
// register it again (and gets them back).
func (v *volume) checkKept(spec VolumeSpec) error {
	if v.st.BackupsKeptUntil == nil || v.st.Registered || spec.OwnerID == v.st.Spec.OwnerID {
		return nil
	}
	return errInvalid("volume_id: volume %s was deregistered; its backups are kept for its owner until %s",
		v.volumeID, v.st.BackupsKeptUntil.UTC().Format(time.RFC3339))
}
