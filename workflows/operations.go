package workflows

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/holdfast/holdfast/activities"
)

// RegisterVolumeActivity is the control-plane activity (task queue TaskQueue) that registers the volume a
// restore created, input VolumeSpec.
const RegisterVolumeActivity = "RegisterVolume"

// Activity timeouts. Long activities (streaming) heartbeat; a host that stops heartbeating for
// heartbeatTimeout is considered gone and the activity is retried (resuming from its checkpoint).
const (
	shortActivityTimeout = 15 * time.Minute
	heartbeatTimeout     = 30 * time.Second
	compensationTimeout  = 10 * time.Minute
	// inlineCleanup bounds how long an ended operation spends on one compensation step before it hands the
	// step to a CleanupWorkflow and releases the volume: a host that does not take it (down) or does not
	// finish it (wedged) must not hold the lock long past the deadline.
	inlineCleanup = 2 * time.Minute
	// cleanupPickup is how long a compensation waits for an agent to pick it up. Cleanups have their own
	// queue (activities.CleanupTaskQueue), never stuck behind long transfers, so an agent that has not taken
	// one by then is gone: the cleanup is reported incomplete instead of holding the volume's lock.
	cleanupPickup = 2 * time.Minute
)

func retryPolicy() *temporal.RetryPolicy {
	return &temporal.RetryPolicy{
		InitialInterval:        time.Second,
		BackoffCoefficient:     2,
		MaximumInterval:        time.Minute,
		NonRetryableErrorTypes: activities.NonRetryable,
	}
}

// onHypervisor routes short activities to a hypervisor's queue. Every hypervisor activity heartbeats (while
// its driver call runs, even a hung one), so a dead agent is noticed within heartbeatTimeout and the call is
// retried elsewhere or given up, and an abort reaches a live one at its next heartbeat. WaitForCancellation
// makes an abort wait for the activity to stop before compensation touches what it was writing (for at most
// cancelGrace: see runBody).
func onHypervisor(ctx workflow.Context, hypervisorID string) workflow.Context {
	return workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		TaskQueue:           activities.TaskQueue(hypervisorID),
		StartToCloseTimeout: shortActivityTimeout,
		HeartbeatTimeout:    heartbeatTimeout,
		RetryPolicy:         retryPolicy(),
		WaitForCancellation: true,
	})
}

// streaming routes a long, heartbeating activity (backup upload, restore) to a hypervisor's queue.
func streaming(ctx workflow.Context, hypervisorID string, deadline time.Duration) workflow.Context {
	return workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		TaskQueue:           activities.TaskQueue(hypervisorID),
		StartToCloseTimeout: deadline,
		HeartbeatTimeout:    heartbeatTimeout,
		RetryPolicy:         retryPolicy(),
		WaitForCancellation: true,
	})
}

// saga collects compensations of the steps that created something, run newest first on failure.
type saga struct {
	steps []compensation
	// waitingOn is the step the operation is in, named in the deadline error (a host that never answers
	// shows up as the step it never took).
	waitingOn string
}

// doing records the step the operation is about to wait on.
func (s *saga) doing(what string) { s.waitingOn = what }

type compensation struct {
	what string
	step cleanup
}

func (s *saga) add(what string, step cleanup) {
	s.steps = append(s.steps, compensation{what: what, step: step})
}

// compensate runs in a context disconnected from the operation's (which may be cancelled or past its
// deadline), with bounded retries: cleanup must happen even when the operation was aborted. What could not
// be cleaned up is returned so it is reported, never silently left behind.
func (s *saga) compensate(ctx workflow.Context) error {
	dctx, cancel := workflow.NewDisconnectedContext(ctx)
	defer cancel()
	deferLater := workflow.GetVersion(ctx, deferredCleanupChange, workflow.DefaultVersion, 1) == 1
	var errs []error
	for i := len(s.steps) - 1; i >= 0; i-- {
		c := s.steps[i]
		err := c.step.run(dctx)
		if err == nil {
			continue
		}
		workflow.GetLogger(ctx).Error("compensation failed", "step", c.what, "error", err)
		if deferLater && retryLater(err) {
			// The host or store is gone or wedged for now: the operation ends (its lock goes) and the step
			// waits for them.
			if id, derr := deferCleanup(dctx, c, i); derr == nil {
				errs = append(errs, fmt.Errorf("%s: not done in time; it runs when its host or store is back (%s)",
					c.what, id))
				continue
			}
		}
		errs = append(errs, fmt.Errorf("%s: %s", c.what, cleanupFailure(err)))
	}
	return errors.Join(errs...)
}

// deferredCleanupChange hands compensations no agent took to a CleanupWorkflow that waits for the host.
const deferredCleanupChange = "deferred-cleanup"

// retryLater reports a step that may still succeed later: its host did not take it (down) or finish it
// (wedged) in time, or it kept failing in a way a retry can fix (a store that is down). A step that failed
// for good (a non-retryable error) is reported instead.
func retryLater(err error) bool {
	var timeout *temporal.TimeoutError
	if errors.As(err, &timeout) {
		return true
	}
	var app *temporal.ApplicationError
	return errors.As(err, &app) && !app.NonRetryable() && !slices.Contains(activities.NonRetryable, app.Type())
}

// laterCleanupWait bounds how long a deferred compensation waits for its host to come back.
const laterCleanupWait = 30 * 24 * time.Hour

// CleanupInput is a compensation handed over to a CleanupWorkflow: one activity and its input.
type CleanupInput struct {
	What      string          `json:"what"`
	TaskQueue string          `json:"task_queue"`
	Activity  string          `json:"activity"`
	Input     json.RawMessage `json:"input"`
	// Heartbeats marks an activity that heartbeats (cleanup.heartbeats), so a dead agent is noticed.
	Heartbeats bool `json:"heartbeats,omitempty"`
}

// CleanupWorkflowID names the deferred compensation i of an operation.
func CleanupWorkflowID(operationID string, i int) string {
	return fmt.Sprintf("cleanup/%s/%d", operationID, i)
}

// deferCleanup starts (abandoned to outlive the operation) the CleanupWorkflow that runs c once its host is
// back, and returns its workflow ID.
func deferCleanup(ctx workflow.Context, c compensation, i int) (string, error) {
	in, err := json.Marshal(c.step.arg)
	if err != nil {
		return "", err
	}
	id := CleanupWorkflowID(workflow.GetInfo(ctx).WorkflowExecution.ID, i)
	// A context of its own, never cancelled: cancelling the context a child was started in cancels the child,
	// and this one must outlive the compensation and the operation.
	own, _ := workflow.NewDisconnectedContext(ctx)
	cctx := workflow.WithChildOptions(own, workflow.ChildWorkflowOptions{WorkflowID: id, TaskQueue: TaskQueue,
		ParentClosePolicy: enumspb.PARENT_CLOSE_POLICY_ABANDON})
	f := workflow.ExecuteChildWorkflow(cctx, CleanupWorkflow, CleanupInput{What: c.what, TaskQueue: c.step.taskQueue,
		Activity: c.step.activity, Input: in, Heartbeats: c.step.heartbeats})
	return id, f.GetChildWorkflowExecution().Get(ctx, nil)
}

// CleanupWorkflow runs one compensation whose host was down when its operation ended: it waits for an agent
// to take it (up to laterCleanupWait), retrying failures, so what an aborted or failed operation left behind
// is removed when the host comes back.
func CleanupWorkflow(ctx workflow.Context, in CleanupInput) error {
	o := workflow.ActivityOptions{
		TaskQueue:              in.TaskQueue,
		ScheduleToCloseTimeout: laterCleanupWait,
		StartToCloseTimeout:    compensationTimeout,
		RetryPolicy:            retryPolicy(),
	}
	if in.Heartbeats {
		o.HeartbeatTimeout = heartbeatTimeout
	}
	actx := workflow.WithActivityOptions(ctx, o)
	err := workflow.ExecuteActivity(actx, in.Activity, in.Input).Get(ctx, nil)
	if err != nil {
		workflow.GetLogger(ctx).Error("deferred cleanup failed", "what", in.What, "error", err)
		return err
	}
	workflow.GetLogger(ctx).Info("deferred cleanup done", "what", in.What)
	return nil
}

// cleanupFailure says why a compensation did not run, in words an operator can act on.
func cleanupFailure(err error) string {
	var timeout *temporal.TimeoutError
	if errors.As(err, &timeout) && timeout.TimeoutType() == enumspb.TIMEOUT_TYPE_SCHEDULE_TO_START {
		return fmt.Sprintf("no agent picked it up within %s (host down?); do it once the host is back", cleanupPickup)
	}
	return rootMessage(err)
}

// cleanupOptions bound a compensation step: retried, but never for longer than total, and given up when no
// agent takes it within cleanupPickup.
func cleanupOptions(ctx workflow.Context, taskQueue string, total time.Duration) workflow.Context {
	return workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		TaskQueue:              taskQueue,
		StartToCloseTimeout:    min(compensationTimeout/2, total),
		ScheduleToStartTimeout: min(cleanupPickup, total),
		ScheduleToCloseTimeout: total,
		RetryPolicy:            retryPolicy(),
	})
}

// storageCleanupTimeout bounds a compensation on a backup storage. What it removes (a journal, a manifest
// written just before a later step failed) is also what garbage collection removes, so a storage that is
// down does not get to hold the volume's lock: the step is reported incomplete and GC finishes it.
const storageCleanupTimeout = 2 * time.Minute

// runSaga runs body under the volume's deadline. On failure, abort (cancellation by the volume workflow) or
// deadline it compensates, then reports: aborted → a CanceledError; deadline → DeadlineExceeded.
func runSaga(ctx workflow.Context, in OperationInput, body func(ctx workflow.Context, s *saga) (OperationResult, error)) (OperationResult, error) {
	logger := workflow.GetLogger(ctx)
	logger.Info("operation started", "volume_id", in.Volume.VolumeID, "operation_id", in.Request.OperationID,
		"kind", in.Request.Kind)
	deadline := in.Volume.Deadline
	opCtx, cancel := workflow.WithCancel(ctx)
	defer cancel()
	expired := false
	workflow.Go(opCtx, func(gctx workflow.Context) {
		if err := workflow.NewTimer(gctx, deadline).Get(gctx, nil); err == nil {
			expired = true
			cancel()
		}
	})
	s := &saga{}
	res, err := runBody(ctx, opCtx, s, body)
	if err == nil {
		return res, nil
	}
	cleanupErr := s.compensate(ctx)
	suffix := ""
	if cleanupErr != nil {
		suffix = fmt.Sprintf(" Cleanup incomplete (%v).", cleanupErr)
	}
	switch {
	case ctx.Err() != nil:
		logger.Info("operation aborted", "volume_id", in.Volume.VolumeID, "operation_id", in.Request.OperationID)
		return res, temporal.NewCanceledError("aborted" + suffix)
	case expired:
		waiting := ""
		if s.waitingOn != "" {
			waiting = " (it was waiting on: " + s.waitingOn + ")"
		}
		removed := "its partial artifacts removed"
		if cleanupErr != nil {
			removed = "its cleanup attempted"
		}
		return res, temporal.NewNonRetryableApplicationError(fmt.Sprintf(
			"Operation did not finish within %s%s; it was stopped and %s.%s", deadline, waiting, removed, suffix),
			ErrDeadlineExceeded, nil)
	default:
		var app *temporal.ApplicationError
		if errors.As(err, &app) && app.Type() != "" {
			return res, temporal.NewNonRetryableApplicationError(app.Message()+suffix, app.Type(), nil)
		}
		return res, temporal.NewNonRetryableApplicationError(rootMessage(err)+suffix, "OperationFailed", nil)
	}
}

// cancelGrace is how long an aborted or expired operation waits for its running step to stop before it
// compensates anyway. A live agent learns of the cancellation at its next heartbeat, stops and removes what
// it was writing; a dead one never answers, and its activity would otherwise hold the operation until the
// heartbeat (or start-to-close) timeout.
const cancelGrace = 5 * time.Second

// boundedCancelChange makes an aborted or expired operation stop waiting for its step after cancelGrace.
const boundedCancelChange = "bounded-cancel"

// runBody runs an operation's body. Once opCtx is cancelled (abort, deadline) it waits at most cancelGrace
// for the body to return, then reports the cancellation: the step's worker may be gone, and the compensation
// must start within seconds. The body goes on in its own coroutine and ends at its next step (its context is
// cancelled); the activity it waited on is cancelled too and, should it still be running, stops at its next
// heartbeat.
func runBody(ctx, opCtx workflow.Context, s *saga, body func(ctx workflow.Context, s *saga) (OperationResult, error)) (OperationResult, error) {
	if workflow.GetVersion(ctx, boundedCancelChange, workflow.DefaultVersion, 1) == workflow.DefaultVersion {
		return body(opCtx, s)
	}
	var res OperationResult
	var err error
	done := false
	workflow.Go(opCtx, func(gctx workflow.Context) {
		res, err = body(gctx, s)
		done = true
	})
	// Waited on in a disconnected context: an abort cancels ctx, and this wait must outlive it.
	wctx, cancel := workflow.NewDisconnectedContext(ctx)
	defer cancel()
	_ = workflow.Await(wctx, func() bool { return done || opCtx.Err() != nil })
	if done {
		return res, err
	}
	if ok, _ := workflow.AwaitWithTimeout(wctx, cancelGrace, func() bool { return done }); ok {
		return res, err
	}
	workflow.GetLogger(ctx).Warn("step did not stop within the grace; compensating anyway",
		"step", s.waitingOn, "grace", cancelGrace)
	return OperationResult{}, temporal.NewCanceledError("the step did not stop in time")
}

// cleanup is a compensation (or final cleanup): one activity on a task queue, bounded by total.
type cleanup struct {
	taskQueue, activity string
	arg                 any
	total               time.Duration
	// heartbeats marks an activity that heartbeats (every hypervisor and storage one), so a dead agent
	// running it is noticed within heartbeatTimeout.
	heartbeats bool
}

func (c cleanup) run(ctx workflow.Context) error {
	actx := cleanupOptions(ctx, c.taskQueue, c.total)
	if c.heartbeats {
		o := workflow.GetActivityOptions(actx)
		o.HeartbeatTimeout = heartbeatTimeout
		actx = workflow.WithActivityOptions(actx, o)
	}
	return workflow.ExecuteActivity(actx, c.activity, c.arg).Get(ctx, nil)
}

// cleanupStep is a compensation (or final cleanup) that runs one activity on a hypervisor's cleanup queue.
func cleanupStep(hypervisorID, activityName string, arg any) cleanup {
	c := cleanupOn(activities.CleanupTaskQueue(hypervisorID), activityName, arg, inlineCleanup)
	c.heartbeats = true
	return c
}

// deleteBackupStep removes a backup's manifest from one storage, on that storage's queue: any agent
// configured with the storage does it, so it never waits on the host that made the backup.
func deleteBackupStep(ref activities.BackupRef) cleanup {
	return cleanupOn(activities.StorageTaskQueue(ref.Storage), activities.DeleteBackupName, ref, storageCleanupTimeout)
}

// abandonBackupStep removes everything a failed backup (or its partial copy) left in one storage — manifest,
// journal, marker and the chunks no other backup uses — now, not at a GC a day later: a failed backup of a
// full store must not keep it full.
func abandonBackupStep(ref activities.BackupRef) cleanup {
	c := cleanupOn(activities.StorageTaskQueue(ref.Storage), activities.AbandonBackupName, ref, storageCleanupTimeout)
	c.heartbeats = true
	return c
}

func cleanupOn(taskQueue, activityName string, arg any, total time.Duration) cleanup {
	return cleanup{taskQueue: taskQueue, activity: activityName, arg: arg, total: total}
}

func deleteSnapshotStep(hypervisorID string, ref activities.SnapshotRef) cleanup {
	return cleanupStep(hypervisorID, activities.DeleteSnapshotName, ref)
}

// SnapshotWorkflow creates one snapshot on the volume's own storage (guest freeze attempted).
func SnapshotWorkflow(ctx workflow.Context, in OperationInput) (OperationResult, error) {
	return runSaga(ctx, in, func(ctx workflow.Context, s *saga) (OperationResult, error) {
		vol := in.Volume
		ref := activities.SnapshotRef{VolumeID: vol.VolumeID, Volume: vol.Storage, SnapshotID: in.Item.ItemID}
		// Registered before the step: a create that timed out may still have happened.
		s.add("delete snapshot "+ref.SnapshotID, deleteSnapshotStep(vol.HypervisorID, ref))
		s.doing("create snapshot on hypervisor " + vol.HypervisorID)
		var r activities.SnapshotResult
		err := workflow.ExecuteActivity(onHypervisor(ctx, vol.HypervisorID), activities.CreateSnapshotName,
			activities.SnapshotInput{VolumeID: vol.VolumeID, Volume: vol.Storage, SnapshotID: ref.SnapshotID,
				Freeze: true}).Get(ctx, &r)
		return OperationResult{SizeBytes: r.SizeBytes, Consistency: r.Consistency, FreezeError: r.FreezeError}, err
	})
}

// BackupWorkflow snapshots the volume, streams the snapshot into backup storage, then drops the snapshot.
func BackupWorkflow(ctx workflow.Context, in OperationInput) (OperationResult, error) {
	return runSaga(ctx, in, func(ctx workflow.Context, s *saga) (OperationResult, error) {
		vol := in.Volume
		tmp := activities.SnapshotRef{VolumeID: vol.VolumeID, Volume: vol.Storage,
			SnapshotID: "holdfast-backup-" + in.Item.ItemID}
		s.add("delete snapshot "+tmp.SnapshotID, deleteSnapshotStep(vol.HypervisorID, tmp))
		s.doing("create snapshot on hypervisor " + vol.HypervisorID)
		var snap activities.SnapshotResult
		if err := workflow.ExecuteActivity(onHypervisor(ctx, vol.HypervisorID), activities.CreateSnapshotName,
			activities.SnapshotInput{VolumeID: vol.VolumeID, Volume: vol.Storage, SnapshotID: tmp.SnapshotID,
				Freeze: true}).Get(ctx, &snap); err != nil {
			return OperationResult{}, err
		}
		backup := activities.BackupRef{VolumeID: vol.VolumeID, BackupID: in.Item.ItemID, Storage: in.Item.Storage}
		switch {
		case workflow.GetVersion(ctx, replicationChange, workflow.DefaultVersion, 1) == workflow.DefaultVersion:
			s.add("delete backup "+backup.BackupID, cleanupStep(vol.HypervisorID, activities.DeleteBackupName, backup))
		case workflow.GetVersion(ctx, abandonBackupChange, workflow.DefaultVersion, 1) == workflow.DefaultVersion:
			s.add("delete backup "+backup.BackupID, deleteBackupStep(backup))
		default:
			s.add("remove backup "+backup.BackupID+" and its chunks", abandonBackupStep(backup))
		}
		s.doing("upload on hypervisor " + vol.HypervisorID)
		incremental := workflow.GetVersion(ctx, incrementalChange, workflow.DefaultVersion, 1) == 1
		upIn := activities.UploadBackupInput{VolumeID: vol.VolumeID, Volume: vol.Storage, SnapshotID: tmp.SnapshotID,
			BackupID: backup.BackupID, ParentBackupID: in.ParentID, Storage: backup.Storage,
			Labels: backupLabels(in, snap.Consistency)}
		if incremental {
			upIn.BaseSnapshotID, upIn.FullReadReason = baseFor(in)
		}
		var up activities.UploadBackupResult
		if err := workflow.ExecuteActivity(streaming(ctx, vol.HypervisorID, vol.Deadline), activities.UploadBackupName,
			upIn).Get(ctx, &up); err != nil {
			return OperationResult{}, err
		}
		res := OperationResult{SizeBytes: up.SizeBytes, StoredBytes: up.StoredBytes, Consistency: snap.Consistency,
			FreezeError: snap.FreezeError, ReadBytes: up.ReadBytes, Incremental: up.Incremental,
			FullReadReason: up.FullReadReason}
		if incremental && up.KeepSnapshot {
			// The snapshot stays, as the next backup's base (its compensation still removes it should a
			// later step fail this backup).
			res.Base = &BackupBase{SnapshotID: tmp.SnapshotID, BackupID: backup.BackupID,
				HypervisorID: vol.HypervisorID, Volume: vol.Storage}
		} else {
			dropSnapshot(ctx, vol.HypervisorID, tmp, "temporary snapshot") // the backup is complete
		}
		if vol.BackupReplica != "" && workflow.GetVersion(ctx, replicationChange, workflow.DefaultVersion, 1) == 1 {
			r, err := replicate(ctx, s, vol, backup)
			if err != nil {
				return OperationResult{}, err
			}
			res.Replica = r
			if len(in.Unreplicated) > 0 && r.Status == ReplicaReplicated &&
				workflow.GetVersion(ctx, catchUpChange, workflow.DefaultVersion, 1) == 1 {
				res.CaughtUp = catchUp(ctx, vol, backup.Storage, in.Unreplicated)
			}
		}
		if incremental {
			dropBase(ctx, vol.VolumeID, in.Base, res.Base)
		}
		return res, nil
	})
}

// incrementalChange has a backup read only what changed since the snapshot the previous backup was read
// from (the volume's BackupBase), keep its own snapshot as the next one's base, and drop the old base.
const incrementalChange = "incremental-base"

// baseFor is the snapshot a backup may diff against, or why it reads everything: the volume's base must
// be the snapshot of the parent backup (the last available one), on the volume's current hypervisor and
// storage, and not made stale (by a restore in place). The agent checks the rest (the parent's manifest,
// the size, the snapshot itself).
func baseFor(in OperationInput) (snapshotID, whyNot string) {
	b := in.Base
	switch {
	case in.ParentID == "":
		return "", "first backup"
	case b == nil:
		return "", "no base snapshot"
	case b.Stale != "":
		return "", b.Stale
	case b.BackupID != in.ParentID:
		return "", "base is not of the previous backup"
	case b.HypervisorID != in.Volume.HypervisorID || b.Volume != in.Volume.Storage:
		return "", "volume moved"
	}
	return b.SnapshotID, ""
}

// dropBase deletes the volume's old base snapshot once a backup succeeded (it kept a new one, or none for a
// volume without change tracking), on the hypervisor that holds it.
func dropBase(ctx workflow.Context, volumeID string, old, kept *BackupBase) {
	if old == nil || (kept != nil && kept.SnapshotID == old.SnapshotID) {
		return
	}
	dropSnapshot(ctx, old.HypervisorID, activities.SnapshotRef{VolumeID: volumeID, Volume: old.Volume,
		SnapshotID: old.SnapshotID}, "old backup base snapshot")
}

// dropSnapshot deletes a snapshot a successful backup no longer needs (what names it in the log). Failing to
// does not fail the backup, but it is logged for operators (it holds diverged blocks on the volume's storage).
func dropSnapshot(ctx workflow.Context, hypervisorID string, ref activities.SnapshotRef, what string) {
	if err := deleteSnapshotStep(hypervisorID, ref).run(ctx); err != nil {
		workflow.GetLogger(ctx).Error(what+" left behind", "volume_id", ref.VolumeID, "snapshot_id", ref.SnapshotID,
			"hypervisor_id", hypervisorID, "error", err)
	}
}

// abandonBackupChange makes a failed backup's compensation remove its chunks too (AbandonBackup).
const abandonBackupChange = "abandon-backup"

// replicationChange versions the off-site copy step of BackupWorkflow and the storage-queue deletion of
// DeleteWorkflow, so that runs recorded before them replay as they ran.
const replicationChange = "replication"

// backupLabels are what a backup's manifest carries about its volume and itself: enough for a fresh control
// plane to register the volume and list the backup again from the storage alone (RecoverWorkflow).
func backupLabels(in OperationInput, consistency string) map[string]string {
	vol := in.Volume
	labels := map[string]string{
		activities.LabelItemName: in.Item.Name, activities.LabelOwnerID: vol.OwnerID,
		activities.LabelHypervisorID: vol.HypervisorID, activities.LabelConsistency: consistency,
		activities.LabelVolumeName: vol.Name, activities.LabelPlanID: vol.Plan.PlanID,
		activities.LabelVolumeType: vol.Storage.Type, activities.LabelOperationID: in.Request.OperationID,
	}
	for k, v := range map[string]string{activities.LabelVolumePath: vol.Storage.Path,
		activities.LabelVolumeFormat: vol.Storage.Format, activities.LabelVolumePool: vol.Storage.Pool, activities.LabelVolumeImage: vol.Storage.Image} {
		if v != "" {
			labels[k] = v
		}
	}
	if in.Item.Scheduled {
		labels[activities.LabelScheduled] = "true"
	}
	return labels
}

// replicate copies a completed backup to the volume's replica storage (ReplicateWorkflow). When replication
// is required its failure fails the backup (and the compensation removes the partial replica); otherwise the
// backup stands and the failure is recorded on it.
func replicate(ctx workflow.Context, s *saga, vol VolumeSpec, ref activities.BackupRef) (*Replica, error) {
	copyRef := activities.BackupRef{VolumeID: ref.VolumeID, BackupID: ref.BackupID, Storage: vol.BackupReplica}
	removeCopy := deleteBackupStep(copyRef)
	if workflow.GetVersion(ctx, abandonBackupChange, workflow.DefaultVersion, 1) == 1 {
		removeCopy = abandonBackupStep(copyRef)
	}
	s.add("delete replica of backup "+ref.BackupID, removeCopy)
	timeout := vol.Deadline
	if !vol.RequireReplication {
		timeout = min(vol.Deadline/4, bestEffortReplication)
	}
	s.doing("replication to " + vol.BackupReplica)
	cctx := workflow.WithChildOptions(ctx, workflow.ChildWorkflowOptions{
		WorkflowID:          ReplicateWorkflowID(ref.VolumeID, ref.BackupID),
		TaskQueue:           TaskQueue,
		WaitForCancellation: true,
	})
	var r Replica
	err := workflow.ExecuteChildWorkflow(cctx, ReplicateWorkflow, ReplicateRequest{VolumeID: ref.VolumeID,
		BackupID: ref.BackupID, From: ref.Storage, To: vol.BackupReplica, Timeout: timeout}).Get(ctx, &r)
	if err == nil {
		return &r, nil
	}
	if vol.RequireReplication || ctx.Err() != nil {
		return nil, fmt.Errorf("replication to %s: %w", vol.BackupReplica, err)
	}
	workflow.GetLogger(ctx).Error("backup not replicated", "volume_id", ref.VolumeID, "backup_id", ref.BackupID,
		"replica", vol.BackupReplica, "error", err)
	if derr := removeCopy.run(ctx); derr != nil {
		workflow.GetLogger(ctx).Error("partial replica left behind", "volume_id", ref.VolumeID,
			"backup_id", ref.BackupID, "replica", vol.BackupReplica, "error", derr)
	}
	return &Replica{Storage: vol.BackupReplica, Status: ReplicaFailed, Error: rootMessage(err)}, nil
}

// catchUpChange versions the catch-up of earlier failed replicas in BackupWorkflow.
const catchUpChange = "replication-catch-up"

// catchUp retries replicating earlier backups whose best-effort replication failed, once this backup's own
// replica shows the replica storage is back. Best effort: a failure is recorded again, never fails the backup.
func catchUp(ctx workflow.Context, vol VolumeSpec, storage string, backupIDs []string) map[string]*Replica {
	out := map[string]*Replica{}
	for _, id := range backupIDs {
		// Never required (the earlier backup already counts), and a failed catch-up removes nothing: its
		// compensations go to a saga of its own that never runs.
		bestEffort := vol
		bestEffort.RequireReplication = false
		ref := activities.BackupRef{VolumeID: vol.VolumeID, BackupID: id, Storage: storage}
		r, err := replicate(ctx, &saga{}, bestEffort, ref)
		if err != nil { // cancelled: the operation is being aborted
			break
		}
		out[id] = r
	}
	return out
}

// bestEffortReplication bounds how long a backup waits for a replica that is not required.
const bestEffortReplication = 30 * time.Minute

// RestoreWorkflow restores a snapshot or backup in place (after a safety snapshot it rolls back to on failure)
// or to a new volume (deleted again on failure, registered on success).
func RestoreWorkflow(ctx workflow.Context, in OperationInput) (OperationResult, error) {
	return runSaga(ctx, in, func(ctx workflow.Context, s *saga) (OperationResult, error) {
		if in.Request.Mode == ModeNewVolume {
			return restoreToNew(ctx, s, in)
		}
		return restoreInPlace(ctx, s, in)
	})
}

func restoreInPlace(ctx workflow.Context, s *saga, in OperationInput) (OperationResult, error) {
	vol := in.Volume
	hv := onHypervisor(ctx, vol.HypervisorID)
	s.doing("restore on hypervisor " + vol.HypervisorID)
	// Checked again here: the instance may have started since the request was accepted.
	var att activities.AttachmentResult
	if err := workflow.ExecuteActivity(hv, activities.AttachmentName,
		activities.AttachmentInput{VolumeID: vol.VolumeID, Volume: vol.Storage}).Get(ctx, &att); err != nil {
		return OperationResult{}, err
	}
	if att.Attached && att.Running {
		return OperationResult{}, errAttachedRunning()
	}
	safety := activities.SnapshotRef{VolumeID: vol.VolumeID, Volume: vol.Storage,
		SnapshotID: "holdfast-safety-" + in.Request.OperationID}
	s.add("delete safety snapshot "+safety.SnapshotID, deleteSnapshotStep(vol.HypervisorID, safety))
	if err := workflow.ExecuteActivity(hv, activities.CreateSnapshotName, activities.SnapshotInput{
		VolumeID: vol.VolumeID, Volume: vol.Storage, SnapshotID: safety.SnapshotID}).Get(ctx, nil); err != nil {
		return OperationResult{}, err
	}
	s.add("roll back to safety snapshot "+safety.SnapshotID,
		cleanupStep(vol.HypervisorID, activities.RollbackSnapshotName, safety))
	var res OperationResult
	if in.Request.ItemKind() == KindSnapshot {
		if err := workflow.ExecuteActivity(hv, activities.RollbackSnapshotName, activities.SnapshotRef{
			VolumeID: vol.VolumeID, Volume: vol.Storage, SnapshotID: in.Item.ItemID}).Get(ctx, nil); err != nil {
			return res, err
		}
		res.SizeBytes = in.Item.SizeBytes
	} else {
		var r activities.RestoreResult
		if err := workflow.ExecuteActivity(streaming(ctx, vol.HypervisorID, vol.Deadline), activities.RestoreBackupName,
			activities.RestoreBackupInput{SourceVolumeID: vol.VolumeID, BackupID: in.Item.ItemID,
				Storage: in.Item.Storage, TargetVolumeID: vol.VolumeID, Target: vol.Storage}).Get(ctx, &r); err != nil {
			return res, err
		}
		res.SizeBytes = r.SizeBytes
	}
	if err := deleteSnapshotStep(vol.HypervisorID, safety).run(ctx); err != nil {
		workflow.GetLogger(ctx).Error("safety snapshot left behind", "volume_id", vol.VolumeID,
			"snapshot_id", safety.SnapshotID, "error", err)
	}
	return res, nil
}

func restoreToNew(ctx workflow.Context, s *saga, in OperationInput) (OperationResult, error) {
	vol, target := in.Volume, *in.Request.NewVolume
	if workflow.GetVersion(ctx, placementChange, workflow.DefaultVersion, 1) >= 1 {
		// Added first, so it runs last: the ID and location are given back once the volume is gone.
		s.add("release new volume id "+target.VolumeID, cleanupOn(TaskQueue, ReleasePlacementActivity,
			ReleasePlacementInput{OperationID: in.Request.OperationID, VolumeID: target.VolumeID,
				HypervisorID: target.HypervisorID, Storage: target.Storage}, placementReleaseTimeout))
	}
	// The driver deletes the new volume only if this operation created it (target.Storage.CreatedBy).
	s.add("delete new volume "+target.VolumeID, cleanupStep(target.HypervisorID, activities.DeleteVolumeName,
		activities.DeleteVolumeInput{VolumeID: target.VolumeID, Volume: target.Storage}))
	var fallback string
	if in.Request.Instant && in.Request.ItemKind() == KindBackup {
		res, instant, err := restoreInstant(ctx, s, in)
		if instant || err != nil {
			return res, err
		}
		fallback = res.InstantFallback
	}
	s.doing("restore on hypervisor " + target.HypervisorID)
	var r activities.RestoreResult
	var err error
	if in.Request.ItemKind() == KindSnapshot {
		err = workflow.ExecuteActivity(streaming(ctx, vol.HypervisorID, vol.Deadline), activities.CloneSnapshotName,
			activities.CloneSnapshotInput{SourceVolumeID: vol.VolumeID, Source: vol.Storage, SnapshotID: in.Item.ItemID,
				TargetVolumeID: target.VolumeID, Target: target.Storage}).Get(ctx, &r)
	} else {
		// Only the target hypervisor is involved: a restore never waits on the source host.
		err = workflow.ExecuteActivity(streaming(ctx, target.HypervisorID, vol.Deadline), activities.RestoreBackupName,
			activities.RestoreBackupInput{SourceVolumeID: vol.VolumeID, BackupID: in.Item.ItemID,
				Storage: in.Item.Storage, TargetVolumeID: target.VolumeID, Target: target.Storage,
				Create: true}).Get(ctx, &r)
	}
	if err != nil {
		return OperationResult{}, err
	}
	target.SizeBytes = r.SizeBytes
	if err := workflow.ExecuteActivity(controlContext(ctx), RegisterVolumeActivity, target).Get(ctx, nil); err != nil {
		return OperationResult{}, err
	}
	return OperationResult{SizeBytes: r.SizeBytes, InstantFallback: fallback}, nil
}

// controlContext runs a short control activity (registration, hydration's end).
func controlContext(ctx workflow.Context) workflow.Context {
	return workflow.WithActivityOptions(ctx, workflow.ActivityOptions{TaskQueue: TaskQueue,
		StartToCloseTimeout: time.Minute, RetryPolicy: retryPolicy()})
}

// restoreInstant makes the new volume usable at once (activities.PrepareInstantRestore: over the target
// agent's export of the backup), registers it marked Hydrating, hydrates it (the operation's long phase,
// heartbeating progress "hydrating", under the operation's deadline) and ends the mark. Compensation, newest
// first: the volume is unregistered, then deleted with its source served where needed
// (AbandonInstantRestore; the agent ends its export with it; restoreToNew's plain delete then finds
// nothing), then its ID and location given back. When the target cannot be restored instantly, nothing was made and
// instant is false: the caller restores in full, and says why (OperationResult.InstantFallback).
func restoreInstant(ctx workflow.Context, s *saga, in OperationInput) (res OperationResult, instant bool, err error) {
	target := *in.Request.NewVolume
	input := activities.RestoreBackupInput{SourceVolumeID: in.Volume.VolumeID, BackupID: in.Item.ItemID,
		Storage: in.Item.Storage, TargetVolumeID: target.VolumeID, Target: target.Storage, Create: true}
	s.doing("instant restore on hypervisor " + target.HypervisorID)
	var ready activities.InstantRestoreResult
	if err := workflow.ExecuteActivity(onHypervisor(ctx, target.HypervisorID), activities.PrepareInstantRestoreName,
		input).Get(ctx, &ready); err != nil {
		return res, false, err
	}
	if !ready.Instant {
		workflow.GetLogger(ctx).Info("instant restore not possible; restoring in full", "volume_id",
			target.VolumeID, "reason", ready.FallbackReason)
		return OperationResult{InstantFallback: ready.FallbackReason}, false, nil
	}
	target.SizeBytes = ready.SizeBytes
	target.Hydrating = in.Request.OperationID
	// Before the plain delete (added earlier, so it runs later): an RBD import is deleted only with its
	// source served, which a restarted agent does for this step.
	s.add("abandon new volume "+target.VolumeID, cleanupStep(target.HypervisorID,
		activities.AbandonInstantRestoreName, input))
	s.add("unregister new volume "+target.VolumeID, cleanupOn(TaskQueue, EndHydrationActivity,
		HydrationEnd{VolumeID: target.VolumeID, OperationID: in.Request.OperationID, Abandon: true},
		placementReleaseTimeout))
	if err := workflow.ExecuteActivity(controlContext(ctx), RegisterVolumeActivity, target).Get(ctx, nil); err != nil {
		return res, true, err
	}
	s.doing("hydrate on hypervisor " + target.HypervisorID)
	var r activities.RestoreResult
	if err := workflow.ExecuteActivity(streaming(ctx, target.HypervisorID, in.Volume.Deadline),
		activities.HydrateVolumeName, input).Get(ctx, &r); err != nil {
		return res, true, err
	}
	if err := workflow.ExecuteActivity(controlContext(ctx), EndHydrationActivity,
		HydrationEnd{VolumeID: target.VolumeID, OperationID: in.Request.OperationID}).Get(ctx, nil); err != nil {
		return res, true, err
	}
	return OperationResult{SizeBytes: r.SizeBytes}, true, nil
}

// DeleteWorkflow removes a snapshot from the volume's storage or a backup's manifest from backup storage
// (its chunks are collected by GC once no manifest references them). Deletion is not compensated.
func DeleteWorkflow(ctx workflow.Context, in OperationInput) (OperationResult, error) {
	return runSaga(ctx, in, func(ctx workflow.Context, s *saga) (OperationResult, error) {
		vol := in.Volume
		hv := onHypervisor(ctx, vol.HypervisorID)
		if in.Request.ItemKind() == KindSnapshot {
			s.doing("delete snapshot on hypervisor " + vol.HypervisorID)
			return OperationResult{}, workflow.ExecuteActivity(hv, activities.DeleteSnapshotName,
				activities.SnapshotRef{VolumeID: vol.VolumeID, Volume: vol.Storage, SnapshotID: in.Item.ItemID}).Get(ctx, nil)
		}
		ref := activities.BackupRef{VolumeID: vol.VolumeID, BackupID: in.Item.ItemID, Storage: in.Item.Storage}
		if workflow.GetVersion(ctx, replicationChange, workflow.DefaultVersion, 1) == workflow.DefaultVersion {
			return OperationResult{}, workflow.ExecuteActivity(hv, activities.DeleteBackupName, ref).Get(ctx, nil)
		}
		s.doing("delete on storage " + ref.Storage)
		return OperationResult{}, deleteBackupEverywhere(ctx, vol.VolumeID, in.Item)
	})
}

// deleteGCGrace is the age below which an unreferenced chunk survives the collection that follows a delete.
// The delete holds the volume's lock, so no backup of the volume is writing; the grace only covers a zombie
// upload from a host Temporal already gave up on.
const deleteGCGrace = 10 * time.Minute

// deleteBackupEverywhere removes a backup's manifest from its storage and from its replica, on the storages'
// own queues, then collects the chunks no other backup of the volume uses, per storage. A failed collection
// does not fail the delete (the backup is gone; the next collection takes the chunks).
func deleteBackupEverywhere(ctx workflow.Context, volumeID string, it Item) error {
	refs := []activities.BackupRef{{VolumeID: volumeID, BackupID: it.ItemID, Storage: it.Storage}}
	if it.Replica != nil {
		refs = append(refs, activities.BackupRef{VolumeID: volumeID, BackupID: it.ItemID, Storage: it.Replica.Storage})
	}
	for _, r := range refs {
		if err := workflow.ExecuteActivity(onStorage(ctx, r.Storage, shortActivityTimeout, false),
			activities.DeleteBackupName, r).Get(ctx, nil); err != nil {
			return fmt.Errorf("storage %s: %w", r.Storage, err)
		}
	}
	for _, r := range refs {
		// Bounded: a volume whose backup is running (or whose crashed backup still holds a fresh lock) is
		// busy for GC, and the next collection takes the chunks; the delete must not wait on it.
		gctx := onStorage(ctx, r.Storage, shortActivityTimeout, false)
		o := workflow.GetActivityOptions(gctx)
		o.ScheduleToCloseTimeout = storageCleanupTimeout
		gctx = workflow.WithActivityOptions(gctx, o)
		if err := workflow.ExecuteActivity(gctx, activities.CollectGarbageName,
			activities.GCInput{Storage: r.Storage, VolumeID: r.VolumeID, Grace: deleteGCGrace}).Get(ctx, nil); err != nil {
			workflow.GetLogger(ctx).Warn("garbage collection after delete failed", "volume_id", r.VolumeID,
				"storage", r.Storage, "error", err)
		}
	}
	return nil
}

// onStorage routes a storage-only activity to the queue every agent configured with the storage serves;
// long ones (streaming: replication, scrub) heartbeat, so a dead agent's work moves to another agent.
func onStorage(ctx workflow.Context, storage string, timeout time.Duration, streaming bool) workflow.Context {
	o := workflow.ActivityOptions{
		TaskQueue:           activities.StorageTaskQueue(storage),
		StartToCloseTimeout: timeout,
		RetryPolicy:         retryPolicy(),
		WaitForCancellation: true,
	}
	if streaming {
		o.HeartbeatTimeout = heartbeatTimeout
	}
	return workflow.WithActivityOptions(ctx, o)
}
