package workflows

import (
	"errors"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/holdfast/holdfast/activities/metrics"
)

// finish records an operation's outcome, starts the cooldown and releases the lock and the owner's permit.
func (v *volume) finish(ctx workflow.Context, req OperationRequest, res OperationResult, err error) {
	now := workflow.Now(ctx)
	op := v.st.Active
	op.FinishedAt = &now
	status, info := outcome(err)
	op.Error = info
	op.InstantFallback = res.InstantFallback
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
	v.tellIdleWaiters(ctx)
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
		if req.Kind == KindBackup {
			it.ReadBytes, it.Incremental, it.FullReadReason = res.ReadBytes, res.Incremental, res.FullReadReason
			v.st.Base = res.Base // the backup dropped the old one
		}
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
	case KindRestore:
		if err == nil && req.Mode == ModeInPlace && v.st.Base != nil {
			// The volume's contents were replaced wholesale: the next backup reads everything.
			v.st.Base.Stale = "restored in place"
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
