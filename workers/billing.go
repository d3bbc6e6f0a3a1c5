package workers

import (
	"context"
	"errors"
	"fmt"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/holdfast/holdfast/activities/billing"
	"github.com/holdfast/holdfast/activities/billing/contract"
	"github.com/holdfast/holdfast/workflows"
)

// BillingScheduleID is the ID of the hourly billing schedule (visible on the Web UI's Schedules page).
const BillingScheduleID = "holdfast-billing"

// BillingScheduleOptions tune the billing schedule; the zero value is production's.
type BillingScheduleOptions struct {
	// TaskQueue runs BillingWorkflow and its activities (default workflows.TaskQueue).
	TaskQueue string
	// CatchupWindow is how late a missed hour (server down) is still billed (default 7 days).
	CatchupWindow time.Duration
	// Paused creates the schedule paused (an update leaves the pause state alone).
	Paused bool
}

// EnsureBillingSchedule creates the hourly billing schedule, or brings an existing one up to date. Each
// action starts BillingWorkflow with an empty input: the workflow bills the hour before the action's
// nominal time (TemporalScheduledStartTime), at the top of every hour (UTC).
//
// Overlap policy BufferAll: a run still going (a webhook down for a while) makes the next hours wait their
// turn instead of being skipped, so no hour is ever lost; each buffered run still bills its own nominal hour,
// and sinks deduplicate by key. The catch-up window bills the hours missed while the server was down.
// The sinks are not part of the schedule: they are the control worker's configuration (billing.SinkConfig),
// so secrets never land in workflow history.
func EnsureBillingSchedule(ctx context.Context, c client.Client, opts BillingScheduleOptions) error {
	if opts.TaskQueue == "" {
		opts.TaskQueue = workflows.TaskQueue
	}
	if opts.CatchupWindow <= 0 {
		opts.CatchupWindow = 7 * 24 * time.Hour
	}
	spec := client.ScheduleSpec{Intervals: []client.ScheduleIntervalSpec{{Every: time.Hour}}}
	action := &client.ScheduleWorkflowAction{
		// The server appends the action time to this ID, so every hour's run has its own workflow ID.
		ID: "billing", Workflow: workflows.BillingWorkflow, Args: []any{workflows.BillingInput{}},
		TaskQueue: opts.TaskQueue,
		// Bounded so that a wedged run cannot hold the buffer forever; a failed hour is re-run by hand
		// with an explicit BillingInput.Hour (idempotent).
		WorkflowExecutionTimeout: 12 * time.Hour,
	}
	_, err := c.ScheduleClient().Create(ctx, client.ScheduleOptions{
		ID: BillingScheduleID, Spec: spec, Action: action, Overlap: enumspb.SCHEDULE_OVERLAP_POLICY_BUFFER_ALL,
		CatchupWindow: opts.CatchupWindow, Paused: opts.Paused,
		Note: "Holdfast hourly billing: bills the previous hour",
	})
	if err == nil {
		return nil
	}
	var exists *serviceerror.WorkflowExecutionAlreadyStarted
	if !errors.Is(err, temporal.ErrScheduleAlreadyRunning) && !errors.As(err, &exists) {
		return fmt.Errorf("create billing schedule: %w", err)
	}
	h := c.ScheduleClient().GetHandle(ctx, BillingScheduleID)
	err = h.Update(ctx, client.ScheduleUpdateOptions{DoUpdate: func(in client.ScheduleUpdateInput) (*client.ScheduleUpdate, error) {
		s := in.Description.Schedule
		s.Spec = &spec
		s.Action = action
		s.Policy = &client.SchedulePolicies{Overlap: enumspb.SCHEDULE_OVERLAP_POLICY_BUFFER_ALL,
			CatchupWindow: opts.CatchupWindow}
		return &client.ScheduleUpdate{Schedule: &s}, nil
	}})
	if err != nil {
		return fmt.Errorf("update billing schedule: %w", err)
	}
	return nil
}

// QueryVolumeUsage is how the billing activities read one volume's usage: they list volume workflows, this
// queries one's state (workflows.QueryState, which reaches the latest run) and trims it with
// workflows.UsageOf. A workflow that has vanished, or a volume never registered, gives nil: left out of the
// bill. Read-only.
func QueryVolumeUsage(c client.Client) billing.UsageFunc {
	return func(ctx context.Context, workflowID string) (*contract.VolumeUsage, error) {
		res, err := c.QueryWorkflow(ctx, workflowID, "", workflows.QueryState)
		if err != nil {
			var nf *serviceerror.NotFound
			if errors.As(err, &nf) {
				return nil, nil
			}
			return nil, err
		}
		var st workflows.VolumeState
		if err := res.Get(&st); err != nil {
			return nil, err
		}
		if st.Spec.VolumeID == "" {
			return nil, nil // never registered: nothing was ever billable
		}
		u := workflows.UsageOf(st)
		return &u, nil
	}
}
