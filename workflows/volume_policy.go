package workflows

import (
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/activities/metrics"
)

// ErrNotAttached rejects a scheduled request from a schedule whose policy the volume no longer uses (a
// schedule left behind by an interrupted re-attachment): it is recorded, never run.
const ErrNotAttached = "PolicyNotAttached"

// retentionChange versions the scheduled-create path of VolumeWorkflow.run (make room, then retention).
const retentionChange = "scheduled-retention"

func (v *volume) validateSetPolicy(ctx workflow.Context, a PolicyAttachment) error {
	if !v.st.Registered {
		return errNotFound("Volume %s not found.", v.volumeID)
	}
	if a.PolicyID != "" && !activities.ValidID(a.PolicyID) {
		return errInvalid("policy_id: must match %s", activities.IDPattern)
	}
	return nil
}

// setPolicy records the policy the volume is attached to and returns the previous one, so the caller can
// delete that policy's schedule. Scheduled requests from any other policy's schedule are rejected from now on.
func (v *volume) setPolicy(ctx workflow.Context, a PolicyAttachment) (string, error) {
	if err := v.validateSetPolicy(ctx, a); err != nil {
		return "", err
	}
	previous := v.st.PolicyID
	v.st.PolicyID = a.PolicyID
	return previous, nil
}

// makeRoom deletes scheduled items until the item being created (current, already counted as pending) fits
// under the plan cap: the request and its deletions run as one queued sequence under the volume's lock.
func (v *volume) makeRoom(ctx workflow.Context, req OperationRequest, current string) error {
	limit, limitErr := v.st.Spec.Plan.MaxBackups, errBackupLimit()
	if req.Kind == KindSnapshot {
		limit, limitErr = v.st.Spec.Plan.MaxSnapshots, errSnapshotLimit()
	}
	victims, ok := req.retention().Evictions(*v.items(req.Kind), current, countLive(*v.items(req.Kind))-limit)
	if !ok {
		return limitErr // the validator saw room; only a concurrent change could take it away
	}
	for _, it := range victims {
		if err := v.retentionDelete(ctx, req, it); err != nil {
			if temporal.IsCanceledError(err) {
				return err
			}
			return userError("RetentionFailed", "Could not delete %s %s to make room: %s", req.Kind, it.ItemID,
				rootMessage(err))
		}
	}
	return nil
}

// applyRetention deletes, oldest first, the scheduled items the policy no longer keeps once the new one
// (current) exists. A failed deletion is logged and left for the next run: the new item is already safe.
func (v *volume) applyRetention(ctx workflow.Context, req OperationRequest, current string) {
	for _, it := range req.retention().Expired(*v.items(req.Kind), current) {
		if err := v.retentionDelete(ctx, req, it); err != nil {
			workflow.GetLogger(ctx).Warn("retention could not delete an item; the next run retries",
				"volume_id", v.volumeID, "operation_id", req.OperationID, "item_id", it.ItemID, "error", err)
			if temporal.IsCanceledError(err) || ctx.Err() != nil {
				return
			}
		}
	}
}

// retentionDelete deletes one scheduled item through the DeleteWorkflow child, exactly like a user's delete
// (its own deadline and saga), and records it among the volume's recent operations.
func (v *volume) retentionDelete(ctx workflow.Context, req OperationRequest, it Item) error {
	spec := v.st.Spec
	del := OperationRequest{OperationID: req.OperationID + ".retention." + it.ItemID, Kind: KindDelete,
		Scheduled: true, PolicyID: req.PolicyID}
	if req.Kind == KindSnapshot {
		del.SnapshotID = it.ItemID
	} else {
		del.BackupID = it.ItemID
	}
	if p, err := v.item(req.Kind, it.ItemID); err == nil {
		p.Status = StatusDeleting
	}
	started := workflow.Now(ctx)
	err := workflow.ExecuteChildWorkflow(v.operationChild(ctx, del.OperationID, KindDelete), DeleteWorkflow, OperationInput{Volume: spec, Request: del, Item: it,
		StartedAt: started}).Get(ctx, nil)
	now := workflow.Now(ctx)
	rec := Operation{OperationID: del.OperationID, VolumeID: v.volumeID, Kind: KindDelete, ItemKind: req.Kind,
		ItemID: it.ItemID, Status: StatusCompleted, StartedAt: started, FinishedAt: &now, Scheduled: true}
	result := metrics.ResultCompleted
	if err != nil {
		rec.Status, rec.Error = outcome(err)
		result = metrics.ResultFailed
		if p, e := v.item(req.Kind, it.ItemID); e == nil {
			p.Status, p.Error = StatusAvailable, "retention delete failed: "+rec.Error.Message
		}
	} else {
		v.removeItem(req.Kind, it.ItemID, now)
	}
	v.addRecent(rec)
	mh := workflow.GetMetricsHandler(ctx)
	metrics.OperationStarted(mh, string(KindDelete))
	metrics.OperationFinished(mh, string(KindDelete), result, now.Sub(started))
	workflow.GetLogger(ctx).Info("retention deleted a scheduled item", "volume_id", v.volumeID,
		"operation_id", req.OperationID, "item_id", it.ItemID, "status", rec.Status)
	return err
}
