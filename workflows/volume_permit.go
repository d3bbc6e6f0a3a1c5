package workflows

import (
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"
)

// permitTimeout bounds the wait for an owner's permit: asking (AcquirePermitActivity) and then the answer.
const permitTimeout = 20 * time.Second

// permitActivityChange asks the owner through an activity, not a local activity. The answer comes by signal,
// and the wait for it makes a timer only while no answer is buffered (ReceiveWithTimeout). A local
// activity's result is not an event: when it outlasted a workflow-task heartbeat, the live worker applied it
// before seeing the answer that had arrived meanwhile (timer made), while replay applies a task's local
// activity markers after that task's new events (answer buffered, no timer) — a nondeterminism CI hit once
// (TMPRL1100, "a matching Timer command was expected"). An activity's completion is an event, ordered with
// the signal the same way live and on replay.
const permitActivityChange = "permit-activity"

// AcquirePermitActivity is the control-plane activity that delivers a volume's PermitRequest to its owner's
// workflow, starting that workflow if it does not run (input AcquirePermitInput).
const AcquirePermitActivity = "AcquirePermit"

// AcquirePermitInput names the owner a PermitRequest goes to.
type AcquirePermitInput struct {
	OwnerID string        `json:"owner_id"`
	Request PermitRequest `json:"request"`
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
		TTL: v.permitTTL(), Waiter: req.Waiter}
	in := AcquirePermitInput{OwnerID: v.st.Spec.OwnerID, Request: ask}
	retry := &temporal.RetryPolicy{InitialInterval: 200 * time.Millisecond, MaximumInterval: 2 * time.Second}
	var err error
	if workflow.GetVersion(ctx, permitActivityChange, workflow.DefaultVersion, 1) == workflow.DefaultVersion {
		// Recorded before permitActivityChange: a local activity.
		lctx := workflow.WithLocalActivityOptions(ctx, workflow.LocalActivityOptions{
			ScheduleToCloseTimeout: permitTimeout, StartToCloseTimeout: permitTimeout / 2, RetryPolicy: retry,
		})
		err = workflow.ExecuteLocalActivity(lctx, AcquirePermitActivity, in).Get(ctx, nil)
	} else {
		actx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
			ScheduleToCloseTimeout: permitTimeout, StartToCloseTimeout: permitTimeout / 2, RetryPolicy: retry,
		})
		err = workflow.ExecuteActivity(actx, AcquirePermitActivity, in).Get(ctx, nil)
	}
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
