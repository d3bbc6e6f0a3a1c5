package workflows

import (
	"crypto/sha256"
	"encoding/hex"
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
}

// scheduledRunsName is metrics.ScheduledRunsName (declared there with the other metric names).
const scheduledRunsName = metrics.ScheduledRunsName

// ScheduledRunWorkflow is what a policy's schedule starts: it sends the volume one request with
// Scheduled: true (through ScheduledRequestActivity, which takes the owner's permit like any request) and
// returns as soon as the request is accepted or rejected. It never waits for the operation itself, so the
// schedule's overlap policy (skip) only skips while this short run is in flight; a stuck operation is failed
// by its own deadline and cannot block the next night. A rejection is the run's result (and a log line and a
// metric), not an error to retry: the next night is the retry.
func ScheduledRunWorkflow(ctx workflow.Context, in ScheduledRunInput) (ScheduledRunResult, error) {
	info := workflow.GetInfo(ctx)
	sum := sha256.Sum256([]byte(info.WorkflowExecution.ID + "/" + info.WorkflowExecution.RunID))
	req := ScheduledRequest{PolicyID: in.PolicyID, VolumeID: in.VolumeID,
		OperationID: "sched-" + hex.EncodeToString(sum[:12])}
	actx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		TaskQueue:              TaskQueue,
		StartToCloseTimeout:    time.Minute,
		ScheduleToCloseTimeout: 10 * time.Minute, // bounded: an unreachable cluster fails this run, not the next
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: time.Second, BackoffCoefficient: 2,
			MaximumInterval: 30 * time.Second},
	})
	logger := workflow.GetLogger(ctx)
	mh := workflow.GetMetricsHandler(ctx)
	var res ScheduledRunResult
	if err := workflow.ExecuteActivity(actx, ScheduledRequestActivity, req).Get(ctx, &res); err != nil {
		logger.Error("scheduled run failed", "policy_id", in.PolicyID, "volume_id", in.VolumeID,
			"operation_id", req.OperationID, "error", err)
		mh.WithTags(map[string]string{"policy": in.PolicyID, "result": "failed", "type": "Internal"}).
			Counter(scheduledRunsName).Inc(1)
		return ScheduledRunResult{PolicyID: in.PolicyID, VolumeID: in.VolumeID, OperationID: req.OperationID}, err
	}
	if res.Rejection != nil {
		logger.Warn("scheduled run rejected", "policy_id", in.PolicyID, "volume_id", in.VolumeID,
			"operation_id", req.OperationID, "type", res.Rejection.Type, "message", res.Rejection.Message)
		mh.WithTags(map[string]string{"policy": in.PolicyID, "result": "rejected", "type": res.Rejection.Type}).
			Counter(scheduledRunsName).Inc(1)
		return res, nil
	}
	logger.Info("scheduled run accepted", "policy_id", in.PolicyID, "volume_id", in.VolumeID,
		"operation_id", res.OperationID, "item_id", res.ItemID)
	mh.WithTags(map[string]string{"policy": in.PolicyID, "result": "accepted", "type": ""}).
		Counter(scheduledRunsName).Inc(1)
	return res, nil
}
