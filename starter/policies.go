package starter

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/workflows"
)

// Policies and their schedules. Where things live, so the control plane needs no database:
//   - a policy from the config file lives in the file (read-only through the API: change the file);
//   - a policy PUT through the API lives in its PolicyWorkflow (ID policy/<policy_id>);
//   - a volume's attachment lives in its VolumeWorkflow (state policy_id), the source of truth;
//   - the timing lives in one Temporal Schedule per attached volume, ID policy/<policy_id>/volume/<volume_id>,
//     visible (and pausable) on the Web UI's Schedules page.
//
// A scheduled run reads the policy's kind and retention when it fires, so changing retention needs no
// schedule update; changing timing updates the policy's schedules.

// scheduleCatchupWindow is how late a missed run may still start after an outage: a backup that could not
// start in its window should not start hours later, in business hours.
const scheduleCatchupWindow = 10 * time.Minute

// scheduledRunTimeout bounds one ScheduledRunWorkflow (it only sends a request; it never waits for the
// operation), so overlap-skip can never hold the next run back for long.
const scheduledRunTimeout = 15 * time.Minute

// PolicyAttachment is a volume's policy, as the attach endpoint answers it.
type PolicyAttachment struct {
	VolumeID   string `json:"volume_id"`
	PolicyID   string `json:"policy_id,omitempty"`
	ScheduleID string `json:"schedule_id,omitempty"`
}

// Policy returns a policy: from the config file, else from its PolicyWorkflow. Unknown: NotFound.
func (c *Client) Policy(ctx context.Context, policyID string) (*workflows.Policy, error) {
	if p := c.cfg.Policy(policyID); p != nil {
		out := *p
		return &out, nil
	}
	res, err := c.temporal.QueryWorkflow(ctx, workflows.PolicyWorkflowID(policyID), "", workflows.QueryPolicy)
	var nf *serviceerror.NotFound
	if errors.As(err, &nf) {
		return nil, policyNotFound(policyID)
	}
	if err != nil {
		if e := typed(err); isType(e, workflows.ErrNotFound) {
			return nil, policyNotFound(policyID)
		}
		return nil, typed(err)
	}
	var p workflows.Policy
	if err := res.Get(&p); err != nil {
		return nil, err
	}
	return &p, nil
}

func policyNotFound(policyID string) error {
	return &Error{Type: workflows.ErrNotFound, Message: fmt.Sprintf("Policy %s not found.", policyID)}
}

func isType(err error, errType string) bool {
	var e *Error
	return errors.As(err, &e) && e.Type == errType
}

// PutPolicy creates or replaces an API-managed policy (validated; errors name the field) and re-times the
// schedules of the volumes attached to it. Config policies are read-only here.
func (c *Client) PutPolicy(ctx context.Context, p workflows.Policy) (*workflows.Policy, error) {
	if !validPolicyID(p.PolicyID) {
		return nil, invalid("policy_id: must match %s", activities.IDPattern)
	}
	if c.cfg.Policy(p.PolicyID) != nil {
		return nil, invalid("policy_id: policy %q is defined in the config file; change it there", p.PolicyID)
	}
	if err := p.Validate(); err != nil {
		return nil, typed(err)
	}
	var stored workflows.Policy
	if err := c.updateWithStart(ctx, workflows.PolicyWorkflowID(p.PolicyID), workflows.PolicyWorkflow,
		workflows.PolicyInput{PolicyID: p.PolicyID}, workflows.UpdatePutPolicy, "", p, &stored); err != nil {
		return nil, err
	}
	if err := c.retimeSchedules(ctx, stored); err != nil {
		return nil, err
	}
	return &stored, nil
}

// SyncConfigPolicies re-times the schedules of every config-file policy, so that an edited config takes
// effect for volumes already attached. The control worker calls it at start.
func (c *Client) SyncConfigPolicies(ctx context.Context) error {
	for _, id := range c.cfg.PolicyIDs() {
		if err := c.retimeSchedules(ctx, *c.cfg.Policy(id)); err != nil {
			return fmt.Errorf("policies.%s: %w", id, err)
		}
	}
	return nil
}

// retimeSchedules brings the schedules of a policy's volumes to its current timing. Schedules are found by
// their ID prefix (listing is eventually consistent: a schedule created a moment ago already has the timing).
func (c *Client) retimeSchedules(ctx context.Context, p workflows.Policy) error {
	iter, err := c.temporal.ScheduleClient().List(ctx, client.ScheduleListOptions{})
	if err != nil {
		return err
	}
	prefix := workflows.ScheduleID(p.PolicyID, "")
	for iter.HasNext() {
		entry, err := iter.Next()
		if err != nil {
			return err
		}
		if volumeID, ok := strings.CutPrefix(entry.ID, prefix); ok {
			if err := c.upsertSchedule(ctx, p, volumeID); err != nil {
				return err
			}
		}
	}
	return nil
}

// AttachPolicy attaches a volume to a policy (policyID "" detaches it): the new schedule first, then the
// volume's record, then the old schedule goes. Interrupted half-way, a left-over schedule only produces
// recorded PolicyNotAttached rejections, and attaching again repairs it.
func (c *Client) AttachPolicy(ctx context.Context, volumeID, policyID string) (*PolicyAttachment, error) {
	st, err := c.state(ctx, volumeID)
	if err != nil {
		return nil, err
	}
	out := &PolicyAttachment{VolumeID: volumeID, PolicyID: policyID}
	if policyID != "" {
		if !validPolicyID(policyID) {
			return nil, invalid("policy_id: must match %s", activities.IDPattern)
		}
		p, err := c.Policy(ctx, policyID)
		if isType(err, workflows.ErrNotFound) {
			return nil, invalid("policy_id: unknown policy %q", policyID)
		}
		if err != nil {
			return nil, err
		}
		if p.Kind == workflows.KindBackup && st.Spec.BackupStorage == "" {
			return nil, &Error{Type: workflows.ErrNoBackupStorage, Message: "Hypervisor has no backup storage configured."}
		}
		if err := c.upsertSchedule(ctx, *p, volumeID); err != nil {
			return nil, err
		}
		out.ScheduleID = workflows.ScheduleID(policyID, volumeID)
	}
	var previous string
	if err := c.update(ctx, workflows.VolumeWorkflowID(volumeID), workflows.UpdateSetPolicy, "",
		workflows.PolicyAttachment{PolicyID: policyID}, &previous); err != nil {
		return nil, typed(err)
	}
	if previous != "" && previous != policyID {
		if err := c.DeleteSchedule(ctx, previous, volumeID); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// DeleteSchedule removes a policy's schedule for a volume (gone already is fine).
func (c *Client) DeleteSchedule(ctx context.Context, policyID, volumeID string) error {
	err := c.temporal.ScheduleClient().GetHandle(ctx, workflows.ScheduleID(policyID, volumeID)).Delete(ctx)
	var nf *serviceerror.NotFound
	if errors.As(err, &nf) {
		return nil
	}
	return err
}

// ScheduleSpec is how a policy's timing becomes a Temporal schedule spec:
//   - every: an interval (ScheduleIntervalSpec), for short test cadences or "every 6h";
//   - window alone: a calendar entry firing daily at window.start in time_zone;
//   - cron (optionally with a window opening at the cron's hour and minute): the cron's days and times.
//
// The spread over the window is the schedule's Jitter: each run is delayed by a random amount in
// [0, jitter], jitter defaulting to the window's length (end - start, wrapping midnight). The server draws
// the delay per schedule and run, and every volume has its own schedule, so N volumes on one policy start
// spread uniformly over the window instead of all at its opening; the agents' concurrency limits bound
// what runs at once per hypervisor beyond that.
func ScheduleSpec(p workflows.Policy) client.ScheduleSpec {
	spec := client.ScheduleSpec{TimeZoneName: p.TimeZone, Jitter: p.JitterDuration()}
	switch {
	case p.Every != "":
		spec.Intervals = []client.ScheduleIntervalSpec{{Every: p.Interval()}}
	case p.Cron != "":
		spec.CronExpressions = []string{p.Cron}
	default:
		hour, minute := p.WindowStart()
		spec.Calendars = []client.ScheduleCalendarSpec{{
			Second: []client.ScheduleRange{{Start: 0}}, Minute: []client.ScheduleRange{{Start: minute}},
			Hour:    []client.ScheduleRange{{Start: hour}},
			Comment: fmt.Sprintf("policy %s: window %s-%s", p.PolicyID, p.Window.Start, p.Window.End),
		}}
	}
	return spec
}

func scheduleAction(policyID, volumeID string) *client.ScheduleWorkflowAction {
	return &client.ScheduleWorkflowAction{
		// The server appends the nominal time, so each run has its own workflow ID.
		ID:                       "scheduled/" + policyID + "/" + volumeID,
		Workflow:                 workflows.ScheduledRunWorkflow,
		Args:                     []any{workflows.ScheduledRunInput{PolicyID: policyID, VolumeID: volumeID}},
		TaskQueue:                workflows.TaskQueue,
		WorkflowExecutionTimeout: scheduledRunTimeout,
		TypedSearchAttributes: temporal.NewSearchAttributes(
			temporal.NewSearchAttributeKeyKeyword(workflows.SearchVolume).ValueSet(volumeID)),
	}
}

// catchupWindow is short (a run that missed its time by more is skipped, not started late); the server's
// minimum is 10 s and an interval schedule never catches up more than one interval.
func catchupWindow(p workflows.Policy) time.Duration {
	if d := p.Interval(); d > 0 && d < scheduleCatchupWindow {
		return max(d, 10*time.Second)
	}
	return scheduleCatchupWindow
}

// upsertSchedule creates the volume's schedule for a policy, or updates its timing when it exists.
func (c *Client) upsertSchedule(ctx context.Context, p workflows.Policy, volumeID string) error {
	id := workflows.ScheduleID(p.PolicyID, volumeID)
	_, err := c.temporal.ScheduleClient().Create(ctx, client.ScheduleOptions{
		ID: id, Spec: ScheduleSpec(p), Action: scheduleAction(p.PolicyID, volumeID),
		Overlap:       enumspb.SCHEDULE_OVERLAP_POLICY_SKIP,
		CatchupWindow: catchupWindow(p),
		Memo:          map[string]any{"policy_id": p.PolicyID, "volume_id": volumeID, "kind": string(p.Kind)},
		Note:          fmt.Sprintf("Holdfast %s policy %s for volume %s", p.Kind, p.PolicyID, volumeID),
	})
	if !errors.Is(err, temporal.ErrScheduleAlreadyRunning) {
		return err
	}
	return c.temporal.ScheduleClient().GetHandle(ctx, id).Update(ctx, client.ScheduleUpdateOptions{
		DoUpdate: func(in client.ScheduleUpdateInput) (*client.ScheduleUpdate, error) {
			s := in.Description.Schedule
			spec := ScheduleSpec(p)
			s.Spec = &spec
			s.Action = scheduleAction(p.PolicyID, volumeID)
			if s.Policy == nil {
				s.Policy = &client.SchedulePolicies{}
			}
			s.Policy.Overlap, s.Policy.CatchupWindow = enumspb.SCHEDULE_OVERLAP_POLICY_SKIP, catchupWindow(p)
			return &client.ScheduleUpdate{Schedule: &s}, nil
		},
	})
}

// RequestScheduled sends the request of one scheduled run (it is Request with Scheduled: true, the policy's
// kind and retention): the owner's permit is taken like for any request. A guard-rail rejection is returned
// as the result, not as an error.
func (c *Client) RequestScheduled(ctx context.Context, in workflows.ScheduledRequest) (workflows.ScheduledRunResult, error) {
	res := workflows.ScheduledRunResult{PolicyID: in.PolicyID, VolumeID: in.VolumeID, OperationID: in.OperationID}
	reject := func(err error) (workflows.ScheduledRunResult, error) {
		var e *Error
		if !errors.As(err, &e) {
			return res, err
		}
		res.Rejection = &workflows.ErrorInfo{Type: e.Type, Message: e.Message}
		res.RetryAfter = e.RetryAfter
		return res, nil
	}
	p, err := c.Policy(ctx, in.PolicyID)
	if err != nil {
		return reject(err)
	}
	res.Kind = p.Kind
	if !in.StartedAt.IsZero() {
		res.WaitUntil = p.WaitUntil(in.StartedAt)
	}
	retention := p.Retention()
	op, err := c.Request(ctx, in.VolumeID, workflows.OperationRequest{OperationID: in.OperationID, Kind: p.Kind,
		Scheduled: true, PolicyID: in.PolicyID, Retention: &retention, Waiter: in.Waiter})
	if err != nil {
		return reject(err)
	}
	res.Accepted, res.ItemID = true, op.ItemID
	return res, nil
}

// WaitIdle asks a volume to tell the scheduled run waiter its turn when the operation holding the volume
// ends (workflows.SignalWaitIdle).
func (c *Client) WaitIdle(ctx context.Context, volumeID, waiter string) error {
	return c.temporal.SignalWorkflow(ctx, workflows.VolumeWorkflowID(volumeID), "", workflows.SignalWaitIdle, waiter)
}

// RequestScheduled is the activity (workflows.ScheduledRequestActivity) a ScheduledRunWorkflow sends its
// request through. Idempotent: the operation id is the Update ID and the permit's lease id, so a retry
// repeats the same request and gets the first answer. A run refused VolumeBusy has the volume tell it its
// turn when the volume is free (WaitIdle); best effort, since a run never told comes back after its back-off.
func (a *ControlActivities) RequestScheduled(ctx context.Context, in workflows.ScheduledRequest) (workflows.ScheduledRunResult, error) {
	res, err := a.Client.RequestScheduled(ctx, in)
	if err == nil && in.Waiter != "" && res.Rejection != nil && res.Rejection.Type == workflows.ErrVolumeBusy {
		if err := a.Client.WaitIdle(ctx, in.VolumeID, in.Waiter); err != nil {
			activity.GetLogger(ctx).Warn("volume not asked to tell the waiting run its turn",
				"volume_id", in.VolumeID, "run", in.Waiter, "error", err)
		}
	}
	return res, err
}

func validPolicyID(id string) bool { return activities.ValidID(id) }
