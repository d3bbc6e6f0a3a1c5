package workflows

import (
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/holdfast/holdfast/activities/metrics"
)

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
			in.Base = v.st.Base
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
		in.Snapshots, in.Backups, in.Base = v.st.Snapshots, v.st.Backups, v.st.Base
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
