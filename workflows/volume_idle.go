package workflows

import (
	"slices"

	"go.temporal.io/sdk/workflow"
)

// maxIdleWaiters bounds the scheduled runs one volume keeps to tell (a volume has one run per attached
// policy at a time, so this is generous); past it a run falls back on its back-off.
const maxIdleWaiters = 16

// receiveIdleWaiters takes SignalWaitIdle for the life of the run: a scheduled run refused VolumeBusy is
// told its turn (SignalTurn) when the operation holding the volume ends (tellIdleWaiters), or at once if it
// has ended already, rather than coming back at the end of its back-off. Histories from before this signal
// never hold one, so they replay unchanged.
func (v *volume) receiveIdleWaiters(ctx workflow.Context) {
	ch := workflow.GetSignalChannel(ctx, SignalWaitIdle)
	workflow.Go(ctx, func(ctx workflow.Context) {
		for {
			var id string
			if !ch.Receive(ctx, &id) {
				return
			}
			switch {
			case id == "" || len(id) > maxWaiterLength:
				workflow.GetLogger(ctx).Warn("idle waiter ignored", "volume_id", v.volumeID, "length", len(id))
			case v.st.Active == nil:
				v.tellTurn(ctx, id)
			case len(v.st.IdleWaiters) < maxIdleWaiters && !slices.Contains(v.st.IdleWaiters, id):
				v.st.IdleWaiters = append(v.st.IdleWaiters, id)
			}
		}
	})
}

// tellIdleWaiters tells every waiting run its turn, now that the volume is free (signals sent together).
func (v *volume) tellIdleWaiters(ctx workflow.Context) {
	waiters := v.st.IdleWaiters
	v.st.IdleWaiters = nil
	sent := make([]workflow.Future, len(waiters))
	for i, id := range waiters {
		sent[i] = workflow.SignalExternalWorkflow(ctx, id, "", SignalTurn, nil)
	}
	for i, f := range sent {
		v.toldTurn(ctx, waiters[i], f)
	}
}

// tellTurn signals a waiting run its turn.
func (v *volume) tellTurn(ctx workflow.Context, workflowID string) {
	v.toldTurn(ctx, workflowID, workflow.SignalExternalWorkflow(ctx, workflowID, "", SignalTurn, nil))
}

// toldTurn waits for a turn's signal; best effort, since a run that is not told comes back after its
// back-off.
func (v *volume) toldTurn(ctx workflow.Context, workflowID string, sent workflow.Future) {
	if err := sent.Get(ctx, nil); err != nil {
		workflow.GetLogger(ctx).Info("waiting run not told its turn", "volume_id", v.volumeID,
			"run", workflowID, "error", err)
	}
}
