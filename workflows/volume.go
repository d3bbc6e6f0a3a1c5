package workflows

import (
	"errors"
	"fmt"
	"path"
	"strings"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/activities/metrics"
)

// Bounds on what a volume's state keeps, so history and query payloads stay small.
const (
	keepRecentOperations = 20
	keepFailedItems      = 5
	attachmentTimeout    = 30 * time.Second
	maxNameLength        = 128
)

var (
	saVolume     = temporal.NewSearchAttributeKeyKeyword(SearchVolume)
	saOwner      = temporal.NewSearchAttributeKeyKeyword(SearchOwner)
	saHypervisor = temporal.NewSearchAttributeKeyKeyword(SearchHypervisor)
	saActive     = temporal.NewSearchAttributeKeyKeyword(SearchActiveOperation)
	saOperations = temporal.NewSearchAttributeKeyKeywordList(SearchOperations)
)

// Versioned changes of the volume workflow: runs recorded before them replay as they ran.
const (
	// operationIndexChange upserts SearchOperations on every accepted request.
	operationIndexChange = "operation-index"
	// releaseAfterClaimChange sends a permit's release only once its claim has been delivered: two signals
	// in flight at once may reach the owner in either order, and a claim arriving after its release would
	// re-add the lease for hours.
	releaseAfterClaimChange = "release-after-claim"
	// volumePermitChange has the volume take the owner's permit itself, after its own checks, for requests
	// that come without a lease (clients of this version).
	volumePermitChange = "volume-permit"
)

// permitTimeout bounds the wait for an owner's permit: asking (AcquirePermitActivity) and then the answer.
const permitTimeout = 20 * time.Second

// AcquirePermitActivity is the control-plane activity that delivers a volume's PermitRequest to its owner's
// workflow, starting that workflow if it does not run (input AcquirePermitInput).
const AcquirePermitActivity = "AcquirePermit"

// AcquirePermitInput names the owner a PermitRequest goes to.
type AcquirePermitInput struct {
	OwnerID string        `json:"owner_id"`
	Request PermitRequest `json:"request"`
}

type volume struct {
	volumeID string
	st       VolumeState
	// cancelRunning stops the running operation's child workflow (abort).
	cancelRunning workflow.CancelFunc
	// abortRequested marks an abort that arrived while a request was still being checked, for abortReason.
	abortRequested bool
	abortReason    string
	// asking is true while a request waits for the owner's permit.
	asking bool
	// running is true while an operation's child workflow runs.
	running bool
	// claiming counts permit claims not yet delivered to the owner's workflow.
	claiming int
}

// VolumeWorkflow is one volume's entity and mutex (ID volume/<volume_id>). Requests arrive as Updates whose
// validators reject synchronously with the spec's messages; an accepted request runs as a child workflow, one
// at a time. It continues-as-new when the server suggests it (history size or length), between
// operations and after handlers drain, carrying its state and any accepted-but-unstarted request.
func VolumeWorkflow(ctx workflow.Context, in VolumeInput) error {
	v := &volume{volumeID: in.VolumeID}
	if in.State != nil {
		v.st = *in.State
	}
	if err := v.registerHandlers(ctx); err != nil {
		return err
	}
	if v.st.Registered {
		v.upsertIdentity(ctx)
		v.indexOperations(ctx)
	}
	for {
		ready := func() bool { return v.st.Queued != nil || v.shouldContinueAsNew(ctx) || v.purgeDue(ctx) }
		wait := v.cooldownRemaining(ctx)
		if kept := v.keptRemaining(ctx); kept > 0 && (wait <= 0 || kept < wait) {
			wait = kept // a deregistered volume's kept backups are deleted when their period ends
		}
		if wait > 0 {
			// The cooldown is a durable timer: it survives worker and server restarts.
			if _, err := workflow.AwaitWithTimeout(ctx, wait, ready); err != nil {
				return err
			}
			if !ready() {
				continue
			}
		} else if err := workflow.Await(ctx, ready); err != nil {
			return err
		}
		if v.shouldContinueAsNew(ctx) {
			if err := workflow.Await(ctx, func() bool { return workflow.AllHandlersFinished(ctx) }); err != nil {
				return err
			}
			// A request accepted meanwhile is carried in st.Queued and started by the next run.
			return workflow.NewContinueAsNewError(ctx, VolumeWorkflow,
				VolumeInput{VolumeID: v.volumeID, State: &v.st})
		}
		if v.purgeDue(ctx) {
			v.purgeKept(ctx)
			continue
		}
		v.run(ctx)
	}
}

func (v *volume) registerHandlers(ctx workflow.Context) error {
	if err := workflow.SetQueryHandler(ctx, QueryState, func() (VolumeState, error) {
		return v.st, nil
	}); err != nil {
		return err
	}
	if err := workflow.SetUpdateHandlerWithOptions(ctx, UpdateRegister, v.register,
		workflow.UpdateHandlerOptions{Validator: v.validateRegister}); err != nil {
		return err
	}
	if err := workflow.SetUpdateHandlerWithOptions(ctx, UpdateRequest, v.accept,
		workflow.UpdateHandlerOptions{Validator: v.check}); err != nil {
		return err
	}
	if err := workflow.SetUpdateHandlerWithOptions(ctx, UpdateReserve, v.reserve,
		workflow.UpdateHandlerOptions{Validator: v.validateReserve}); err != nil {
		return err
	}
	if err := workflow.SetUpdateHandler(ctx, UpdateUnreserve, v.unreserve); err != nil {
		return err
	}
	if err := workflow.SetUpdateHandlerWithOptions(ctx, UpdateImportBackups, v.importBackups,
		workflow.UpdateHandlerOptions{Validator: v.validateImport}); err != nil {
		return err
	}
	if err := workflow.SetUpdateHandlerWithOptions(ctx, UpdateSetPolicy, v.setPolicy,
		workflow.UpdateHandlerOptions{Validator: v.validateSetPolicy}); err != nil {
		return err
	}
	return workflow.SetUpdateHandlerWithOptions(ctx, UpdateAbort, v.abort,
		workflow.UpdateHandlerOptions{Validator: v.validateAbort})
}

func (v *volume) shouldContinueAsNew(ctx workflow.Context) bool {
	if v.st.Active != nil && v.st.Queued == nil {
		return false // an operation's child is running: it cannot be carried across runs
	}
	return workflow.GetInfo(ctx).GetContinueAsNewSuggested()
}

func (v *volume) cooldownRemaining(ctx workflow.Context) time.Duration {
	return v.st.CooldownUntil.Sub(workflow.Now(ctx))
}

// ---- registration ----

func (v *volume) validateRegister(ctx workflow.Context, spec VolumeSpec) error {
	if spec.VolumeID != v.volumeID {
		return errInvalid("volume_id: %q does not match workflow volume %q", spec.VolumeID, v.volumeID)
	}
	if err := ValidateSpec(spec); err != nil {
		return err
	}
	if err := v.checkReservation(ctx, spec); err != nil {
		return err
	}
	if err := v.checkKept(spec); err != nil {
		return err
	}
	if v.st.Active != nil {
		return errVolumeBusy(v.st.Active.Kind)
	}
	return nil
}

// ValidateSpec checks a volume spec's fields; the error names the field.
func ValidateSpec(spec VolumeSpec) error {
	switch {
	case !activities.ValidID(spec.VolumeID):
		return errInvalid("volume_id: must match %s", activities.IDPattern)
	case strings.TrimSpace(spec.Name) == "" || len(spec.Name) > maxNameLength:
		return errInvalid("name: must be 1 to %d characters", maxNameLength)
	case !activities.ValidID(spec.OwnerID):
		return errInvalid("owner_id: must match %s", activities.IDPattern)
	case !activities.ValidID(spec.HypervisorID):
		return errInvalid("hypervisor_id: must match %s", activities.IDPattern)
	case spec.Plan.PlanID == "":
		return errInvalid("plan: is required")
	case spec.Plan.MaxSnapshots < 0 || spec.Plan.MaxBackups < 0:
		return errInvalid("plan: caps must not be negative")
	case spec.OwnerLimit < 1:
		return errInvalid("owner_limit: must be at least 1")
	case spec.Cooldown < 0:
		return errInvalid("cooldown: must not be negative")
	case spec.Deadline < time.Minute:
		return errInvalid("deadline: must be at least 1m")
	}
	if spec.SizeBytes < 0 {
		return errInvalid("size_bytes: must not be negative")
	}
	if spec.Storage.CreatedBy != "" && !activities.ValidID(spec.Storage.CreatedBy) {
		return errInvalid("storage.created_by: must match %s", activities.IDPattern)
	}
	switch s := spec.Storage; s.Type {
	case "file":
		// The placement rules (inside a volume root) are the client's, against the config; these hold for
		// any spec, wherever it came from.
		if !path.IsAbs(s.Path) || path.Clean(s.Path) != s.Path || strings.ContainsRune(s.Path, 0) {
			return errInvalid("storage.path: must be a clean absolute path")
		}
		if s.Format != "" && s.Format != "raw" && s.Format != "qcow2" {
			return errInvalid("storage.format: must be raw or qcow2")
		}
	case "rbd":
		if !activities.ValidID(s.Pool) || !activities.ValidID(s.Image) {
			return errInvalid("storage: rbd pool and image must match %s", activities.IDPattern)
		}
	default:
		return errInvalid("storage.type: must be file or rbd")
	}
	return nil
}

func (v *volume) register(ctx workflow.Context, spec VolumeSpec) (VolumeState, error) {
	if err := v.validateRegister(ctx, spec); err != nil {
		return VolumeState{}, err
	}
	if spec.SizeBytes == 0 {
		spec.SizeBytes = v.st.Spec.SizeBytes
	}
	v.st.Spec = spec
	v.st.Registered = true
	v.st.Reservation, v.st.ReservedUntil = "", nil
	v.st.BackupsKeptUntil = nil // registered again by its owner: its kept backups are its own again
	v.upsertIdentity(ctx)
	return v.st, nil
}

func (v *volume) upsertIdentity(ctx workflow.Context) {
	err := workflow.UpsertTypedSearchAttributes(ctx, saVolume.ValueSet(v.volumeID),
		saOwner.ValueSet(v.st.Spec.OwnerID), saHypervisor.ValueSet(v.st.Spec.HypervisorID))
	if err != nil {
		workflow.GetLogger(ctx).Warn("search attributes not updated", "volume_id", v.volumeID, "error", err)
	}
}

// ---- requests ----

// check is the request validator: every guard rail, synchronously, with the spec's exact messages. The
// handler runs it again, because validators and handlers of concurrent updates interleave.
func (v *volume) check(ctx workflow.Context, req OperationRequest) error {
	if !v.st.Registered {
		return errNotFound("Volume %s not found.", v.volumeID)
	}
	if err := validateRequest(req, v.volumeID); err != nil {
		return err
	}
	// What the caller typed is checked first (a wrong confirmation should not first make them wait out a
	// cooldown), then the volume's lock and cooldown, then plan caps and storage.
	spec := v.st.Spec
	if err := v.checkItem(req); err != nil {
		return err
	}
	if v.st.Active != nil {
		return errVolumeBusy(v.st.Active.Kind)
	}
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
	if req.Scheduled && req.Kind != KindSnapshot && req.Kind != KindBackup {
		return errInvalid("kind: only snapshots and backups are scheduled")
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

// items is the volume's list of snapshots or of backups.
func (v *volume) items(kind Kind) *[]Item {
	if kind == KindBackup {
		return &v.st.Backups
	}
	return &v.st.Snapshots
}

func (v *volume) item(kind Kind, itemID string) (*Item, error) {
	list := *v.items(kind)
	for i := range list {
		if list[i].ItemID == itemID {
			return &list[i], nil
		}
	}
	return nil, errNotFound("%s %s not found on volume %s.", strings.ToUpper(string(kind[:1]))+string(kind[1:]),
		itemID, v.volumeID)
}

// countLive counts the items a plan cap applies to: everything not failed.
func countLive(items []Item) int {
	n := 0
	for _, it := range items {
		if it.Status != StatusFailed {
			n++
		}
	}
	return n
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

// permitTTL bounds how long an operation's permit is held should its release never arrive.
func (v *volume) permitTTL() time.Duration { return v.st.Spec.Deadline + time.Hour }

// takePermit asks the owner's workflow for the request's permit (lease = operation ID) and waits for the
// answer: OwnerLimit when refused, Unavailable when no answer comes within permitTimeout (a permit granted
// after that is given back at once). On success req.OwnerLease names the permit, released by finish.
func (v *volume) takePermit(ctx workflow.Context, req *OperationRequest) error {
	v.asking = true
	defer func() { v.asking = false }()
	started := workflow.Now(ctx)
	ask := PermitRequest{LeaseID: req.OperationID, VolumeID: v.volumeID, Limit: v.st.Spec.OwnerLimit,
		TTL: v.permitTTL()}
	actx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		TaskQueue:              TaskQueue,
		ScheduleToCloseTimeout: permitTimeout,
		StartToCloseTimeout:    permitTimeout / 2,
		RetryPolicy:            &temporal.RetryPolicy{InitialInterval: 200 * time.Millisecond, MaximumInterval: 2 * time.Second},
	})
	err := workflow.ExecuteActivity(actx, AcquirePermitActivity,
		AcquirePermitInput{OwnerID: v.st.Spec.OwnerID, Request: ask}).Get(ctx, nil)
	if err != nil {
		workflow.GetLogger(ctx).Warn("owner permit not asked for in time", "volume_id", v.volumeID,
			"operation_id", req.OperationID, "error", err)
		return errUnavailable()
	}
	replies := workflow.GetSignalChannel(ctx, SignalPermit)
	for {
		wait := permitTimeout - workflow.Now(ctx).Sub(started)
		var reply PermitReply
		if wait <= 0 || !receiveWithin(ctx, replies, wait, &reply) {
			workflow.GetLogger(ctx).Warn("owner permit not answered in time", "volume_id", v.volumeID,
				"operation_id", req.OperationID)
			// The request may still be answered: a permit granted later must not be held for hours.
			v.signalOwner(ctx, SignalRelease, ReleaseSignal{LeaseID: ask.LeaseID}, ask.LeaseID)
			return errUnavailable()
		}
		if reply.LeaseID != ask.LeaseID {
			continue // a late answer to an earlier request, already given back
		}
		if !reply.Granted {
			return errOwnerLimit(reply.Limit)
		}
		req.OwnerLease = ask.LeaseID
		return nil
	}
}

// receiveWithin receives one value from c, or reports false once wait has passed.
func receiveWithin(ctx workflow.Context, c workflow.ReceiveChannel, wait time.Duration, valuePtr any) bool {
	ok, _ := c.ReceiveWithTimeout(ctx, wait, valuePtr)
	return ok
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

func itemID(kind Kind, operationID string) string {
	if kind == KindSnapshot {
		return "snap-" + operationID
	}
	return "bk-" + operationID
}

// ---- abort ----

func (v *volume) validateAbort(ctx workflow.Context, reason string) error {
	if v.st.Active == nil {
		return userError(ErrNoActiveOperation, "No operation is running on volume %s.", v.volumeID)
	}
	return nil
}

// abort stops the active operation: its saga compensates and the lock is released when it has.
func (v *volume) abort(ctx workflow.Context, reason string) (Operation, error) {
	if err := v.validateAbort(ctx, reason); err != nil {
		return Operation{}, err
	}
	if v.asking {
		// The request is waiting for its permit: whether there is an operation to abort is known when the
		// answer comes (within permitTimeout). A refused request leaves nothing to abort.
		if err := workflow.Await(ctx, func() bool { return !v.asking }); err != nil {
			return Operation{}, err
		}
		if err := v.validateAbort(ctx, reason); err != nil {
			return Operation{}, err
		}
	}
	op := *v.st.Active
	switch {
	case v.cancelRunning != nil:
		v.cancelRunning()
	case v.st.Queued != nil:
		// Accepted but not started: nothing to compensate.
		req := *v.st.Queued
		v.st.Queued = nil
		v.finish(ctx, req, OperationResult{}, temporal.NewCanceledError(reason))
	default:
		v.abortRequested, v.abortReason = true, reason
	}
	workflow.GetLogger(ctx).Info("abort requested", "volume_id", v.volumeID, "operation_id", op.OperationID,
		"reason", reason)
	return op, nil
}

// ---- running operations ----

func (v *volume) run(ctx workflow.Context) {
	req := *v.st.Queued
	v.st.Queued = nil
	op := v.st.Active
	spec := v.st.Spec
	in := OperationInput{Volume: spec, Request: req, StartedAt: workflow.Now(ctx)}
	switch req.Kind {
	case KindSnapshot, KindBackup:
		op.Status = StatusCreating
		it, _ := v.item(req.Kind, op.ItemID)
		it.Status = StatusCreating
		in.Item = *it
		if req.Kind == KindBackup {
			in.ParentID = v.lastAvailableBackup()
			in.Unreplicated = v.unreplicated()
		}
	case KindRestore:
		op.Status = StatusRestoring
		it, _ := v.item(req.ItemKind(), req.ItemID())
		in.Item = *it
	case KindDelete:
		op.Status = StatusDeleting
		it, _ := v.item(req.ItemKind(), req.ItemID())
		it.Status = StatusDeleting
		in.Item = *it
	case KindDeregister:
		op.Status = StatusDeleting
		in.Snapshots, in.Backups = v.st.Snapshots, v.st.Backups
	}
	mh := workflow.GetMetricsHandler(ctx) // replay-safe: nothing is recorded while replaying
	metrics.OperationStarted(mh, string(req.Kind))
	metrics.InFlight(mh, spec.HypervisorID, spec.OwnerID, 1)
	if err := workflow.UpsertTypedSearchAttributes(ctx, saActive.ValueSet(string(req.Kind))); err != nil {
		workflow.GetLogger(ctx).Warn("search attribute not updated", "volume_id", v.volumeID, "error", err)
	}

	// Scheduled snapshots and backups make room at the plan cap first and apply their policy's retention
	// after success; versioned so that runs recorded before this change replay as they ran.
	scheduledCreate := req.Scheduled && (req.Kind == KindSnapshot || req.Kind == KindBackup) &&
		workflow.GetVersion(ctx, retentionChange, workflow.DefaultVersion, 1) == 1

	opCtx, cancel := workflow.WithCancel(ctx)
	v.cancelRunning, v.running = cancel, true
	childCtx := v.operationChild(opCtx, req.OperationID, req.Kind)
	var res OperationResult
	var err error
	if scheduledCreate {
		err = v.makeRoom(opCtx, req, op.ItemID)
	}
	if err == nil {
		err = workflow.ExecuteChildWorkflow(childCtx, operationWorkflow(req.Kind), in).Get(ctx, &res)
	}
	if err == nil && scheduledCreate {
		v.applyRetention(opCtx, req, op.ItemID)
	}
	v.cancelRunning = nil
	cancel()
	v.finish(ctx, req, res, err)
}

// operationChild sets the options of an operation's child workflow: findable by its operation id, and
// tagged with the volume's search attributes so the Web UI and the API can find the volume from it.
func (v *volume) operationChild(ctx workflow.Context, operationID string, kind Kind) workflow.Context {
	spec := v.st.Spec
	return workflow.WithChildOptions(ctx, workflow.ChildWorkflowOptions{
		WorkflowID: OperationWorkflowID(operationID),
		TaskQueue:  TaskQueue,
		// The saga enforces the deadline itself (and compensates); this is only the backstop should its
		// compensation hang.
		WorkflowExecutionTimeout: spec.Deadline + 30*time.Minute,
		WaitForCancellation:      true,
		TypedSearchAttributes: temporal.NewSearchAttributes(saVolume.ValueSet(v.volumeID),
			saOwner.ValueSet(spec.OwnerID), saHypervisor.ValueSet(spec.HypervisorID),
			saActive.ValueSet(string(kind))),
	})
}

func operationWorkflow(kind Kind) any {
	switch kind {
	case KindSnapshot:
		return SnapshotWorkflow
	case KindBackup:
		return BackupWorkflow
	case KindRestore:
		return RestoreWorkflow
	case KindDeregister:
		return DeregisterWorkflow
	default:
		return DeleteWorkflow
	}
}

// maxCatchUp bounds the earlier backups one backup retries replicating, newest first.
const maxCatchUp = 3

// unreplicated lists the newest available backups whose replication failed.
func (v *volume) unreplicated() []string {
	var ids []string
	for i := len(v.st.Backups) - 1; i >= 0 && len(ids) < maxCatchUp; i-- {
		if it := v.st.Backups[i]; it.Status == StatusAvailable && it.Replica != nil && it.Replica.Status == ReplicaFailed {
			ids = append(ids, it.ItemID)
		}
	}
	return ids
}

func (v *volume) lastAvailableBackup() string {
	for i := len(v.st.Backups) - 1; i >= 0; i-- {
		if v.st.Backups[i].Status == StatusAvailable {
			return v.st.Backups[i].ItemID
		}
	}
	return ""
}

// finish records an operation's outcome, starts the cooldown and releases the lock and the owner's permit.
func (v *volume) finish(ctx workflow.Context, req OperationRequest, res OperationResult, err error) {
	now := workflow.Now(ctx)
	op := v.st.Active
	op.FinishedAt = &now
	status, info := outcome(err)
	op.Error = info
	switch {
	case err == nil && (req.Kind == KindSnapshot || req.Kind == KindBackup):
		op.Status = StatusAvailable
	case err == nil:
		op.Status = StatusCompleted
	default:
		op.Status = status
	}
	v.recordItem(req, op, res, err)
	if err == nil && req.Kind == KindDeregister {
		v.deregistered(ctx, req)
	}
	if err == nil && res.SizeBytes > 0 && !(req.Kind == KindRestore && req.Mode == ModeNewVolume) {
		v.st.Spec.SizeBytes = res.SizeBytes
	}
	v.addRecent(*op)
	v.recordMetrics(ctx, req, op, status, err)
	v.running = false
	v.st.Active = nil
	v.st.CooldownUntil = now.Add(v.st.Spec.Cooldown)
	if e := workflow.UpsertTypedSearchAttributes(ctx, saActive.ValueUnset()); e != nil {
		workflow.GetLogger(ctx).Warn("search attribute not updated", "volume_id", v.volumeID, "error", e)
	}
	if workflow.GetVersion(ctx, releaseAfterClaimChange, workflow.DefaultVersion, 1) == 1 {
		// An abort of a request still claiming its permit: the release must not overtake the claim.
		_ = workflow.Await(ctx, func() bool { return v.claiming == 0 })
	}
	v.signalOwner(ctx, SignalRelease, ReleaseSignal{LeaseID: req.OwnerLease}, req.OwnerLease)
	workflow.GetLogger(ctx).Info("operation finished", "volume_id", v.volumeID, "operation_id", op.OperationID,
		"kind", op.Kind, "status", op.Status)
}

func (v *volume) addRecent(op Operation) {
	v.st.Recent = append(v.st.Recent, op)
	if n := len(v.st.Recent); n > keepRecentOperations {
		v.st.Recent = append([]Operation(nil), v.st.Recent[n-keepRecentOperations:]...)
	}
}

// recordMetrics emits an ended operation's metrics and the volume's retained bytes per kind.
func (v *volume) recordMetrics(ctx workflow.Context, req OperationRequest, op *Operation, status Status, err error) {
	mh := workflow.GetMetricsHandler(ctx)
	result := metrics.ResultCompleted
	switch {
	case err == nil:
	case status == StatusAborted:
		result = metrics.ResultAborted
	default:
		result = metrics.ResultFailed
	}
	if v.running { // an accepted request aborted before it started never counted as in flight
		metrics.OperationFinished(mh, string(req.Kind), result, op.FinishedAt.Sub(op.StartedAt))
		metrics.InFlight(mh, v.st.Spec.HypervisorID, v.st.Spec.OwnerID, -1)
	}
	metricsRetained(ctx, v)
	if err == nil && req.Kind == KindBackup {
		metrics.LastSuccessfulBackup(mh, v.volumeID, *op.FinishedAt)
	}
}

// metricsRetained emits the volume's retained bytes per kind.
func metricsRetained(ctx workflow.Context, v *volume) {
	mh := workflow.GetMetricsHandler(ctx)
	metrics.Retained(mh, v.volumeID, string(KindSnapshot), retained(v.st.Snapshots, KindSnapshot))
	metrics.Retained(mh, v.volumeID, string(KindBackup), retained(v.st.Backups, KindBackup))
}

// retained is what a volume keeps per kind, counting available items only: a backup's stored bytes, a
// snapshot's volume size (an upper bound: the storage does not report diverged blocks).
func retained(items []Item, kind Kind) int64 {
	var n int64
	for _, it := range items {
		switch {
		case it.Status != StatusAvailable:
		case kind == KindBackup:
			n += it.StoredBytes
		default:
			n += it.SizeBytes
		}
	}
	return n
}

func (v *volume) recordItem(req OperationRequest, op *Operation, res OperationResult, err error) {
	switch req.Kind {
	case KindSnapshot, KindBackup:
		it, e := v.item(req.Kind, op.ItemID)
		if e != nil {
			return
		}
		if err != nil {
			it.Status, it.Error = StatusFailed, op.Error.Message
			v.pruneFailed(req.Kind)
			return
		}
		it.Status, it.SizeBytes, it.StoredBytes, it.Consistency = StatusAvailable, res.SizeBytes, res.StoredBytes,
			res.Consistency
		it.AvailableAt = op.FinishedAt
		it.Replica = res.Replica
		for id, r := range res.CaughtUp {
			if earlier, e := v.item(KindBackup, id); e == nil && earlier.Status == StatusAvailable {
				earlier.Replica = r
			}
		}
		if res.FreezeError != "" {
			it.Error = "crash-consistent: " + res.FreezeError
		}
	case KindDelete:
		it, e := v.item(req.ItemKind(), req.ItemID())
		if e != nil {
			return
		}
		if err != nil {
			it.Status, it.Error = StatusAvailable, "delete failed: "+op.Error.Message
			return
		}
		v.removeItem(req.ItemKind(), req.ItemID(), *op.FinishedAt)
	}
}

// removeItem drops an item that is gone from its storage at now; one that was available is remembered in
// Gone for billing.
func (v *volume) removeItem(kind Kind, itemID string, now time.Time) {
	list := v.items(kind)
	kept := (*list)[:0]
	for _, it := range *list {
		if it.ItemID != itemID {
			kept = append(kept, it)
			continue
		}
		v.gone(kind, it, now)
	}
	*list = kept
}

// keepGone is how long deleted items stay in Gone: longer than any billing run can be late (a month's
// invoice closes within days of its end).
const keepGone = 40 * 24 * time.Hour

// gone remembers a deleted item for billing (when it had been available), and forgets the ones past keepGone.
func (v *volume) gone(kind Kind, it Item, now time.Time) {
	list := &v.st.GoneBackups
	if kind == KindSnapshot {
		list = &v.st.GoneSnapshots
	}
	if it.AvailableAt != nil || it.Status == StatusAvailable || it.Status == StatusDeleting {
		if it.AvailableAt == nil {
			it.AvailableAt = &it.CreatedAt // recorded before AvailableAt existed
		}
		gone := Item{ItemID: it.ItemID, Name: it.Name, Status: StatusAvailable, CreatedAt: it.CreatedAt,
			SizeBytes: it.SizeBytes, StoredBytes: it.StoredBytes, Storage: it.Storage,
			AvailableAt: it.AvailableAt, DeletedAt: &now}
		*list = append(*list, gone)
	}
	kept := (*list)[:0]
	for _, g := range *list {
		if now.Sub(*g.DeletedAt) < keepGone {
			kept = append(kept, g)
		}
	}
	*list = kept
}

// pruneFailed keeps only the newest failed items of a kind: they hold nothing on storage (the saga cleaned
// up) and are kept only so users can see what went wrong.
func (v *volume) pruneFailed(kind Kind) {
	list := v.items(kind)
	failed := 0
	for i := len(*list) - 1; i >= 0; i-- {
		if (*list)[i].Status == StatusFailed {
			failed++
			if failed > keepFailedItems {
				*list = append((*list)[:i], (*list)[i+1:]...)
			}
		}
	}
}

// signalOwner tells the owner's permit workflow about a lease; it is best effort, since a permit that is
// never claimed or released comes back by itself when its lease expires.
func (v *volume) signalOwner(ctx workflow.Context, signal string, arg any, leaseID string) {
	if leaseID == "" {
		return
	}
	err := workflow.SignalExternalWorkflow(ctx, OwnerWorkflowID(v.st.Spec.OwnerID), "", signal, arg).Get(ctx, nil)
	if err != nil {
		workflow.GetLogger(ctx).Warn("owner permit signal failed; the lease will expire instead",
			"volume_id", v.volumeID, "signal", signal, "lease_id", leaseID, "error", err)
	}
}

// outcome maps an operation child's error onto the operation's status and the error users see.
func outcome(err error) (Status, *ErrorInfo) {
	if err == nil {
		return StatusCompleted, nil
	}
	if temporal.IsCanceledError(err) {
		return StatusAborted, &ErrorInfo{Type: ErrAborted, Message: "Aborted by request; partial artifacts removed."}
	}
	var timeout *temporal.TimeoutError
	if errors.As(err, &timeout) {
		return StatusFailed, &ErrorInfo{Type: ErrDeadlineExceeded,
			Message: "Operation exceeded its deadline and was stopped."}
	}
	var app *temporal.ApplicationError
	if errors.As(err, &app) {
		return StatusFailed, &ErrorInfo{Type: app.Type(), Message: app.Message()}
	}
	return StatusFailed, &ErrorInfo{Type: "Internal", Message: rootMessage(err)}
}

// rootMessage is the innermost error's message (Temporal wraps activity errors several times).
func rootMessage(err error) string {
	for {
		next := errors.Unwrap(err)
		if next == nil {
			var app *temporal.ApplicationError
			if errors.As(err, &app) {
				return app.Message()
			}
			return err.Error()
		}
		err = next
	}
}
