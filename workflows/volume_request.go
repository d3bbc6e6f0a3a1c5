package workflows

import (
	"fmt"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/holdfast/holdfast/activities"
)

// check is the request validator: every guard rail, synchronously, with the spec's exact messages. The
// handler runs it again, because validators and handlers of concurrent updates interleave.
func (v *volume) check(ctx workflow.Context, req OperationRequest) error {
	// What the caller typed is checked first (a wrong confirmation should not first make them wait out a
	// cooldown), then the volume's lock and cooldown, then plan caps and storage.
	if err := v.precheck(req); err != nil {
		return err
	}
	spec := v.st.Spec
	if wait := v.cooldownRemaining(ctx); wait > 0 && req.Kind != KindDeregister {
		return errCooldown(int64((wait + time.Second - 1) / time.Second))
	}
	if req.PolicyID != "" && req.PolicyID != v.st.PolicyID {
		return userError(ErrNotAttached, "Volume %s is not attached to policy %s.", v.volumeID, req.PolicyID)
	}
	switch req.Kind {
	case KindSnapshot:
		if n := countLive(v.st.Snapshots); n >= spec.Plan.MaxSnapshots && !canEvict(req, v.st.Snapshots, n-spec.Plan.MaxSnapshots+1) {
			return errSnapshotLimit()
		}
	case KindBackup:
		if spec.BackupStorage == "" {
			return errNoBackupStorage()
		}
		if n := countLive(v.st.Backups); n >= spec.Plan.MaxBackups && !canEvict(req, v.st.Backups, n-spec.Plan.MaxBackups+1) {
			return errBackupLimit()
		}
	}
	return nil
}

// precheck is the first part of check, the part that needs no clock: the volume exists, the request's fields,
// the item it names and the confirmation typed for it, then the volume's lock.
func (v *volume) precheck(req OperationRequest) error {
	if !v.st.Registered {
		return errNotFound("Volume %s not found.", v.volumeID)
	}
	if err := validateRequest(req, v.volumeID); err != nil {
		return err
	}
	if err := v.checkItem(req); err != nil {
		return err
	}
	if v.st.Active != nil {
		return errVolumeBusy(v.st.Active.Kind)
	}
	if v.st.Spec.Hydrating != "" {
		return errVolumeBusy(KindRestore) // its own instant restore still copies into it
	}
	return nil
}

// Precheck runs a request's first checks (precheck) on a volume's state as its query returned it, and
// returns the error the volume's validator would give, or nil. A client answers such a request without
// sending it: under a burst of requests on one volume, only those that may be taken reach the workflow
// (each Update costs the workflow a task; a storm of them is what makes the server abort updates). The
// state may be a moment old, so a nil answer proves nothing: the validator decides.
func Precheck(st VolumeState, volumeID string, req OperationRequest) error {
	v := &volume{volumeID: volumeID, st: st}
	return v.precheck(req)
}

// canEvict says whether a scheduled request at the plan cap may go ahead because need scheduled items can be
// deleted to make room (manual requests never delete anything).
func canEvict(req OperationRequest, items []Item, need int) bool {
	if !req.Scheduled {
		return false
	}
	_, ok := req.retention().Evictions(items, "", need)
	return ok
}

func (r OperationRequest) retention() Retention {
	if r.Retention == nil {
		return Retention{}
	}
	return *r.Retention
}

// checkItem checks the snapshot or backup a restore or delete names, and the confirmation typed for it.
func (v *volume) checkItem(req OperationRequest) error {
	spec := v.st.Spec
	if req.Kind == KindDeregister && req.Confirm != spec.Name {
		return errConfirmation("volume", spec.Name)
	}
	if req.Kind != KindRestore && req.Kind != KindDelete {
		return nil
	}
	it, err := v.item(req.ItemKind(), req.ItemID())
	if err != nil {
		return err
	}
	if req.Kind == KindDelete {
		if it.Status != StatusAvailable && it.Status != StatusFailed {
			return errInvalid("%s_id: %s %s is %s", req.ItemKind(), req.ItemKind(), it.ItemID, it.Status)
		}
		if req.Confirm != it.Name {
			return errConfirmation(string(req.ItemKind()), it.Name)
		}
		return nil
	}
	if it.Status != StatusAvailable {
		return errInvalid("%s_id: %s %s is %s, not available", req.ItemKind(), req.ItemKind(), it.ItemID, it.Status)
	}
	if req.Mode == ModeInPlace && req.Confirm != spec.Name {
		return errConfirmation("volume", spec.Name)
	}
	if req.Mode == ModeNewVolume && req.ItemKind() == KindSnapshot && req.NewVolume.HypervisorID != spec.HypervisorID {
		return errInvalid("hypervisor_id: a snapshot lives on its volume's hypervisor; restore a backup to move elsewhere")
	}
	return nil
}

func validateRequest(req OperationRequest, volumeID string) error {
	if !activities.ValidID(req.OperationID) {
		return errInvalid("operation_id: must match %s", activities.IDPattern)
	}
	if len(req.Name) > maxNameLength {
		return errInvalid("name: at most %d characters", maxNameLength)
	}
	if !req.Scheduled && (req.PolicyID != "" || req.Retention != nil) {
		return errInvalid("policy_id: only scheduled requests name a policy")
	}
	if req.Waiter != "" && (!req.Scheduled || len(req.Waiter) > maxWaiterLength) {
		return errInvalid("waiter: only a scheduled request names its run, in at most %d characters", maxWaiterLength)
	}
	if req.Scheduled && req.Kind != KindSnapshot && req.Kind != KindBackup {
		return errInvalid("kind: only snapshots and backups are scheduled")
	}
	if req.Instant && (req.Kind != KindRestore || req.Mode != ModeNewVolume || req.BackupID == "") {
		return errInvalid("instant: only a restore of a backup to a new volume is instant")
	}
	if req.KeepBackupsFor != 0 && req.Kind != KindDeregister {
		return errInvalid("keep_backups_for: only a deregistration keeps backups")
	}
	switch req.Kind {
	case KindSnapshot, KindBackup:
		return nil
	case KindDeregister:
		if req.KeepBackupsFor < 0 || req.KeepBackupsFor > maxKeepBackups {
			return errInvalid("keep_backups_for: must be between 0 and %s", maxKeepBackups)
		}
		return nil
	case KindRestore, KindDelete:
		if (req.SnapshotID == "") == (req.BackupID == "") {
			return errInvalid("snapshot_id: give exactly one of snapshot_id and backup_id")
		}
		if !activities.ValidID(req.ItemID()) {
			return errInvalid("%s_id: must match %s", req.ItemKind(), activities.IDPattern)
		}
	default:
		return errInvalid("kind: unknown operation %q", req.Kind)
	}
	if req.Kind == KindDelete {
		return nil
	}
	switch req.Mode {
	case ModeInPlace:
	case ModeNewVolume:
		if req.NewVolume == nil {
			return errInvalid("new_volume_id: is required for mode new_volume")
		}
		if req.NewVolume.VolumeID == volumeID {
			return errInvalid("new_volume_id: must differ from the source volume")
		}
		return ValidateSpec(*req.NewVolume)
	default:
		return errInvalid("mode: must be in_place or new_volume")
	}
	return nil
}

// accept is the request handler: it takes the volume's lock, then the owner's permit, records the item as
// pending and queues the request for the main loop. An in-place restore first checks live, on the
// hypervisor, that no running instance uses the volume. Every check comes before the permit, so a rejection
// names its true cause and only a request the volume would run can be refused OwnerLimit.
func (v *volume) accept(ctx workflow.Context, req OperationRequest) (Operation, error) {
	if err := v.check(ctx, req); err != nil {
		return Operation{}, err
	}
	now := workflow.Now(ctx)
	op := &Operation{OperationID: req.OperationID, VolumeID: v.volumeID, Kind: req.Kind, Status: StatusPending,
		StartedAt: now, Scheduled: req.Scheduled}
	if req.NewVolume != nil {
		op.NewVolumeID = req.NewVolume.VolumeID
	}
	v.st.Active = op // the lock is held from here on
	v.abortRequested = false
	inPlace := req.Kind == KindRestore && req.Mode == ModeInPlace
	if inPlace {
		if err := v.checkDetached(ctx); err != nil {
			v.st.Active = nil
			return Operation{}, err
		}
	}
	takesPermit := req.OwnerLease == "" && workflow.GetVersion(ctx, volumePermitChange, workflow.DefaultVersion, 1) == 1
	if takesPermit && !v.abortRequested {
		if err := v.takePermit(ctx, &req); err != nil {
			v.st.Active = nil
			return Operation{}, err
		}
	}
	if inPlace && !takesPermit && v.abortRequested {
		v.st.Active = nil
		return Operation{}, userError(ErrAborted, "Operation %s was aborted before it started.", req.OperationID)
	}
	switch req.Kind {
	case KindSnapshot, KindBackup:
		it := Item{ItemID: itemID(req.Kind, req.OperationID), Name: req.Name, Status: StatusPending,
			CreatedAt: now, Scheduled: req.Scheduled, OperationID: req.OperationID}
		if it.Name == "" {
			it.Name = fmt.Sprintf("%s-%s", req.Kind, now.UTC().Format("20060102-150405"))
		}
		if req.Kind == KindSnapshot {
			v.st.Snapshots = append(v.st.Snapshots, it)
		} else {
			it.Storage = v.st.Spec.BackupStorage
			v.st.Backups = append(v.st.Backups, it)
		}
		op.ItemKind, op.ItemID = req.Kind, it.ItemID
	case KindRestore, KindDelete:
		op.ItemKind, op.ItemID = req.ItemKind(), req.ItemID()
	}
	accepted := *op // the main loop may start the operation while the claim below is in flight
	v.st.Queued = &req
	v.indexOperations(ctx)
	if takesPermit && v.abortRequested {
		// Aborted during the live attachment check (so no permit was asked for): accepted and ended at once,
		// as an abort of a queued request is, since the abort was answered with this operation.
		v.st.Queued = nil
		v.finish(ctx, req, OperationResult{}, temporal.NewCanceledError(v.abortReason))
		return accepted, nil
	}
	if !takesPermit {
		// A lease acquired by a client of an earlier version is claimed now.
		v.claiming++
		v.signalOwner(ctx, SignalClaim, ClaimSignal{LeaseID: req.OwnerLease, VolumeID: v.volumeID,
			TTL: v.permitTTL()}, req.OwnerLease)
		v.claiming--
	}
	return accepted, nil
}

// indexOperations sets SearchOperations to the operations the volume's state can answer for (recent and
// active), so GET /v1/operations/{id} finds the volume of an operation that never had a child workflow.
func (v *volume) indexOperations(ctx workflow.Context) {
	if workflow.GetVersion(ctx, operationIndexChange, workflow.DefaultVersion, 1) < 1 {
		return
	}
	ids := make([]string, 0, len(v.st.Recent)+1)
	for _, op := range v.st.Recent {
		ids = append(ids, op.OperationID)
	}
	if v.st.Active != nil {
		ids = append(ids, v.st.Active.OperationID)
	}
	if len(ids) == 0 {
		return
	}
	if err := workflow.UpsertTypedSearchAttributes(ctx, saOperations.ValueSet(ids)); err != nil {
		workflow.GetLogger(ctx).Warn("search attribute not updated", "volume_id", v.volumeID, "error", err)
	}
}

// checkDetached asks the hypervisor, live, whether a running instance uses the volume.
func (v *volume) checkDetached(ctx workflow.Context) error {
	actx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		TaskQueue:              activities.TaskQueue(v.st.Spec.HypervisorID),
		ScheduleToCloseTimeout: attachmentTimeout,
		StartToCloseTimeout:    attachmentTimeout / 2,
		RetryPolicy:            &temporal.RetryPolicy{MaximumAttempts: 2, NonRetryableErrorTypes: activities.NonRetryable},
	})
	var res activities.AttachmentResult
	err := workflow.ExecuteActivity(actx, activities.AttachmentName,
		activities.AttachmentInput{VolumeID: v.volumeID, Volume: v.st.Spec.Storage}).Get(ctx, &res)
	if err != nil {
		return userError(ErrHypervisorDown, "Hypervisor %s did not answer the attachment check: %s",
			v.st.Spec.HypervisorID, rootMessage(err))
	}
	if res.Attached && res.Running {
		return errAttachedRunning()
	}
	return nil
}
