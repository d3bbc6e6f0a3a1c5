package workflows

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/holdfast/holdfast/activities/metrics"
)

// ScheduledRequestActivity is the control-plane activity (task queue TaskQueue) through which a scheduled run
// sends its request, input ScheduledRequest, result ScheduledRunResult.
const ScheduledRequestActivity = "RequestScheduled"

// ScheduleID is the ID of the Temporal Schedule that runs a policy for one volume.
func ScheduleID(policyID, volumeID string) string {
	return "policy/" + policyID + "/volume/" + volumeID
}

// ScheduledRunInput is what a policy's schedule starts a ScheduledRunWorkflow with.
type ScheduledRunInput struct {
	PolicyID string `json:"policy_id"`
	VolumeID string `json:"volume_id"`
}

// ScheduledRequest is the input of ScheduledRequestActivity. OperationID is derived from the run, so a retried
// activity repeats the same (deduplicated) request instead of making a second one.
type ScheduledRequest struct {
	PolicyID    string `json:"policy_id"`
	VolumeID    string `json:"volume_id"`
	OperationID string `json:"operation_id"`
	// StartedAt is when the run started; the answer's WaitUntil is computed from it (Policy.WaitUntil).
	StartedAt time.Time `json:"started_at,omitzero"`
	// Waiter is the run's workflow ID, for the owner to tell it when a permit frees (OperationRequest.Waiter).
	Waiter string `json:"waiter,omitempty"`
}

// ScheduledRunResult is what one scheduled run did: Accepted with the operation and item, or the guard-rail
// Rejection (busy, cooldown, owner limit, plan cap with nothing scheduled to delete, ...) that stopped it.
type ScheduledRunResult struct {
	PolicyID    string     `json:"policy_id"`
	VolumeID    string     `json:"volume_id"`
	OperationID string     `json:"operation_id"`
	Kind        Kind       `json:"kind,omitempty"`
	Accepted    bool       `json:"accepted"`
	ItemID      string     `json:"item_id,omitempty"`
	Rejection   *ErrorInfo `json:"rejection,omitempty"`
	// WaitUntil is how long the run may keep trying (the policy's Policy.WaitUntil for StartedAt), and
	// RetryAfter the seconds a Cooldown rejection named.
	WaitUntil  time.Time `json:"wait_until,omitzero"`
	RetryAfter int64     `json:"retry_after,omitempty"`
	// Attempts is how many requests the run sent (the last one's answer is the result).
	Attempts int `json:"attempts,omitempty"`
}

// scheduledWaitChange has a scheduled run wait for its turn instead of ending at its first refusal;
// scheduledTurnChange has it queue at the owner when refused OwnerLimit, and come back as soon as it is told
// a permit is free (SignalTurn) rather than only at the end of its back-off.
const (
	scheduledWaitChange = "scheduled-wait"
	scheduledTurnChange = "scheduled-turn"
)

// waitsForTurn are the refusals a scheduled run waits out: another operation holds the owner's permits or
// the volume, the volume cools down, or the control plane or the hypervisor is too busy to answer.
var waitsForTurn = map[string]bool{ErrOwnerLimit: true, ErrVolumeBusy: true, ErrCooldown: true,
	ErrUnavailable: true, ErrHypervisorDown: true}

// Back-off between a waiting run's attempts: from scheduledRetryMin, doubling to scheduledRetryMax, with a
// spread of its own per run (derived from the run's ID: deterministic) so that the runs refused together
// do not all come back together.
const (
	scheduledRetryMin = 5 * time.Second
	scheduledRetryMax = 2 * time.Minute
)

// scheduledRetryWait is the wait before attempt n+1 (n ≥ 1) of a run whose spread is in [0, 1): the back-off,
// or a cooldown's remaining time when longer, plus the run's own share of half of it, so that runs refused
// together come back apart.
func scheduledRetryWait(n int, spread float64, cooldown time.Duration) time.Duration {
	d := scheduledRetryMin << min(n-1, 10)
	d = max(min(d, scheduledRetryMax), cooldown)
	return d + time.Duration(float64(d)*spread/2)
}

// awaitTurn returns when the owner tells the run it is its turn, or after wait.
func awaitTurn(ctx workflow.Context, turns workflow.ReceiveChannel, wait time.Duration) error {
	tctx, cancel := workflow.WithCancel(ctx)
	defer cancel()
	sel := workflow.NewSelector(ctx)
	sel.AddReceive(turns, func(c workflow.ReceiveChannel, _ bool) { c.Receive(ctx, nil) })
	sel.AddFuture(workflow.NewTimer(tctx, wait), func(workflow.Future) {})
	sel.Select(ctx)
	return ctx.Err()
}

// scheduledRunsName is metrics.ScheduledRunsName (declared there with the other metric names).
const scheduledRunsName = metrics.ScheduledRunsName

// ScheduledRunWorkflow is what a policy's schedule starts: it sends the volume one request with
// Scheduled: true (through ScheduledRequestActivity, which sends it like any request) and returns as soon as
// a request is accepted. It never waits for the operation itself, so the schedule's overlap policy (skip)
// only skips while this run is in flight; a stuck operation is failed by its own deadline.
//
// A refusal that only means "not now" (waitsForTurn: the owner's permits, the volume's lock or cooldown, a
// busy control plane or hypervisor) is waited out, durably, until the run's window closes (the answer's
// WaitUntil), each attempt a request of its own (operation ID derived from the run and the attempt).
// Refused at the owner's limit, the run is queued at the owner (its workflow ID is the request's Waiter) and
// comes back as soon as the owner tells it a permit is free (SignalTurn) and kept for it, first come first
// served among the owner's runs, without trying in between (scheduledRetryMax bounds a turn that never
// comes); the other refusals are waited out with the back-off. Any other refusal, or the window's end, is
// the run's result (and a log line and a metric), not an error to retry: the next night is the retry.
func ScheduledRunWorkflow(ctx workflow.Context, in ScheduledRunInput) (ScheduledRunResult, error) {
	info := workflow.GetInfo(ctx)
	sum := sha256.Sum256([]byte(info.WorkflowExecution.ID + "/" + info.WorkflowExecution.RunID))
	runID := hex.EncodeToString(sum[:12])
	req := ScheduledRequest{PolicyID: in.PolicyID, VolumeID: in.VolumeID, OperationID: "sched-" + runID}
	waits := workflow.GetVersion(ctx, scheduledWaitChange, workflow.DefaultVersion, 1) == 1
	if waits {
		req.StartedAt = info.WorkflowStartTime
	}
	queues := waits && workflow.GetVersion(ctx, scheduledTurnChange, workflow.DefaultVersion, 1) == 1
	if queues {
		req.Waiter = info.WorkflowExecution.ID
	}
	turns := workflow.GetSignalChannel(ctx, SignalTurn)
	actx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		TaskQueue:              TaskQueue,
		StartToCloseTimeout:    time.Minute,
		ScheduleToCloseTimeout: 10 * time.Minute, // bounded: an unreachable cluster fails this run, not the next
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: time.Second, BackoffCoefficient: 2,
			MaximumInterval: 30 * time.Second},
	})
	logger := workflow.GetLogger(ctx)
	mh := workflow.GetMetricsHandler(ctx)
	spread := float64(sum[12]) / 256
	var res ScheduledRunResult
	for attempt := 1; ; attempt++ {
		if attempt > 1 {
			req.OperationID = fmt.Sprintf("sched-%s-%d", runID, attempt)
		}
		res = ScheduledRunResult{} // decoding into the last answer would keep its fields
		for turns.ReceiveAsync(nil) {
			// a turn told while the last attempt was in flight: this attempt is the one it was for
		}
		if err := workflow.ExecuteActivity(actx, ScheduledRequestActivity, req).Get(ctx, &res); err != nil {
			logger.Error("scheduled run failed", "policy_id", in.PolicyID, "volume_id", in.VolumeID,
				"operation_id", req.OperationID, "error", err)
			mh.WithTags(map[string]string{"policy": in.PolicyID, "result": "failed", "type": "Internal"}).
				Counter(scheduledRunsName).Inc(1)
			return ScheduledRunResult{PolicyID: in.PolicyID, VolumeID: in.VolumeID, OperationID: req.OperationID,
				Attempts: attempt}, err
		}
		res.Attempts = attempt
		if res.Rejection == nil || !waits || !waitsForTurn[res.Rejection.Type] {
			break
		}
		var cooldown time.Duration
		if res.Rejection.Type == ErrCooldown {
			cooldown = time.Duration(res.RetryAfter) * time.Second
		}
		wait := scheduledRetryWait(attempt, spread, cooldown)
		if queues && res.Rejection.Type == ErrOwnerLimit {
			// Queued at the owner: told its turn when a permit frees, and that permit is kept for it, so
			// trying sooner would only be refused again. scheduledRetryMax bounds a turn that never comes;
			// the run waits for one until its window closes.
			wait = min(scheduledRetryMax, res.WaitUntil.Sub(workflow.Now(ctx))-time.Second)
			if wait <= 0 {
				break // the window closed while the run waited: this night is missed
			}
		} else if !workflow.Now(ctx).Add(wait).Before(res.WaitUntil) {
			break // the window closes before the next attempt: this night is missed
		}
		logger.Info("scheduled run waits for its turn", "policy_id", in.PolicyID, "volume_id", in.VolumeID,
			"type", res.Rejection.Type, "attempt", attempt, "retry_in", wait)
		if !queues {
			if err := workflow.Sleep(ctx, wait); err != nil {
				return res, err
			}
			continue
		}
		if err := awaitTurn(ctx, turns, wait); err != nil {
			return res, err
		}
	}
	if res.Rejection != nil {
		logger.Warn("scheduled run rejected", "policy_id", in.PolicyID, "volume_id", in.VolumeID,
			"operation_id", req.OperationID, "type", res.Rejection.Type, "message", res.Rejection.Message,
			"attempts", res.Attempts)
		mh.WithTags(map[string]string{"policy": in.PolicyID, "result": "rejected", "type": res.Rejection.Type}).
			Counter(scheduledRunsName).Inc(1)
		return res, nil
	}
	logger.Info("scheduled run accepted", "policy_id", in.PolicyID, "volume_id", in.VolumeID,
		"operation_id", res.OperationID, "item_id", res.ItemID, "attempts", res.Attempts)
	mh.WithTags(map[string]string{"policy": in.PolicyID, "result": "accepted", "type": ""}).
		Counter(scheduledRunsName).Inc(1)
	return res, nil
}
