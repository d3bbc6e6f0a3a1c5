package workflows

import (
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"
)

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
