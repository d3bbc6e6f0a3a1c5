package starter_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/starter"
	"github.com/holdfast/holdfast/starter/startertest"
	"github.com/holdfast/holdfast/workflows"
)

// TestIntegrationSecondsIntervalScheduleKeepsExactlyKeepLast runs a real Temporal Schedule every 2 s on the
// dev server: scheduled backups are created through ScheduledRunWorkflow, retention keeps exactly keep_last
// of them, the manual backup is never touched, and detaching deletes the schedule.
func TestIntegrationSecondsIntervalScheduleKeepsExactlyKeepLast(t *testing.T) {
	hv := startertest.NewGatedHypervisor()
	hv.Gate.Open()
	c := startertest.NewCluster(t, testConfig, map[string]activities.Hypervisor{"hv1": hv})
	hf := c.Client
	ctx := context.Background()
	c.Register(t, "vol1", "acct-1")
	manual, err := hf.Backup(ctx, "vol1", "manual")
	require.NoError(t, err)
	_, err = hf.Watch(ctx, manual.OperationID, 100*time.Millisecond, nil)
	require.NoError(t, err)

	p, err := hf.PutPolicy(ctx, workflows.Policy{PolicyID: "quick", Kind: workflows.KindBackup, Every: "2s", KeepLast: 2})
	require.NoError(t, err)
	assert.Equal(t, 2, p.KeepLast)
	a, err := hf.AttachPolicy(ctx, "vol1", "quick")
	require.NoError(t, err)
	require.Equal(t, "policy/quick/volume/vol1", a.ScheduleID)
	t.Cleanup(func() { _ = hf.DeleteSchedule(context.Background(), "quick", "vol1") })

	desc, err := c.Temporal.ScheduleClient().GetHandle(ctx, a.ScheduleID).Describe(ctx)
	require.NoError(t, err)
	assert.Equal(t, enumspb.SCHEDULE_OVERLAP_POLICY_SKIP, desc.Schedule.Policy.Overlap)
	assert.Equal(t, 10*time.Second, desc.Schedule.Policy.CatchupWindow)
	require.Len(t, desc.Schedule.Spec.Intervals, 1)
	assert.Equal(t, 2*time.Second, desc.Schedule.Spec.Intervals[0].Every)

	created := map[string]bool{}
	startertest.WaitFor(t, "three scheduled backups, two retained", func() bool {
		v, err := hf.Volume(ctx, "vol1")
		if err != nil {
			return false
		}
		retained, manualOK := 0, false
		for _, b := range v.Backups {
			switch {
			case b.Scheduled && b.Status == workflows.StatusAvailable:
				retained++
				created[b.ItemID] = true
			case !b.Scheduled:
				manualOK = b.Status == workflows.StatusAvailable && b.Name == "manual"
			}
		}
		require.True(t, manualOK, "the manual backup is never deleted")
		require.LessOrEqual(t, retained, 2, "retention holds keep_last at every moment")
		return len(created) >= 3 && retained == 2
	})

	// The volume's history now holds scheduled runs that made room and applied retention: the replay test
	// keeps that (versioned) path from breaking running workflows.
	recordHistory(t, hf, workflows.VolumeWorkflowID("vol1"), "volume-scheduled-retention")

	// Detach: the schedule goes, the volume no longer names a policy, the retained backups stay.
	a, err = hf.AttachPolicy(ctx, "vol1", "")
	require.NoError(t, err)
	assert.Empty(t, a.PolicyID)
	_, err = c.Temporal.ScheduleClient().GetHandle(ctx, "policy/quick/volume/vol1").Describe(ctx)
	var nf *serviceerror.NotFound
	require.True(t, errors.As(err, &nf), "schedule deleted: %v", err)
	v, err := hf.Volume(ctx, "vol1")
	require.NoError(t, err)
	assert.Empty(t, v.PolicyID)
}

func TestIntegrationScheduledRunRejectionIsRecorded(t *testing.T) {
	c := newCluster(t) // gate closed: the manual backup holds the volume busy
	ctx := context.Background()
	c.register(t, "vol1", "acct-1")
	// A window that closed an hour ago: the run, started now, has no time left to wait for its turn.
	_, err := c.hf.PutPolicy(ctx, workflows.Policy{PolicyID: "nightly", Kind: workflows.KindBackup,
		Window: windowAround(-3*time.Hour, -time.Hour), KeepLast: 3})
	require.NoError(t, err)
	_, err = c.hf.AttachPolicy(ctx, "vol1", "nightly")
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.hf.DeleteSchedule(context.Background(), "nightly", "vol1") })
	_, err = c.hf.Backup(ctx, "vol1", "manual")
	require.NoError(t, err)

	// What the schedule's action does when it fires, run directly: the busy volume rejects it, and the
	// rejection is the run's recorded result.
	run, err := c.Temporal.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: "scheduled-run-test", TaskQueue: workflows.TaskQueue}, workflows.ScheduledRunWorkflow,
		workflows.ScheduledRunInput{PolicyID: "nightly", VolumeID: "vol1"})
	require.NoError(t, err)
	var res workflows.ScheduledRunResult
	require.NoError(t, run.Get(ctx, &res))
	assert.False(t, res.Accepted)
	require.NotNil(t, res.Rejection)
	assert.Equal(t, workflows.ErrVolumeBusy, res.Rejection.Type)
	assert.Equal(t, "Volume is busy with operation: backup", res.Rejection.Message)

	// Unknown policy: typed, recorded, not retried.
	_, err = c.hf.AttachPolicy(ctx, "vol1", "nope")
	assert.Equal(t, `policy_id: unknown policy "nope"`, err.Error())
	var se *starter.Error
	require.ErrorAs(t, err, &se)
	assert.Equal(t, workflows.ErrInvalidArgument, se.Type)
	c.hv.Gate.Open()
}

// windowAround is a daily window from now+from to now+to (UTC, to the minute).
func windowAround(from, to time.Duration) *workflows.Window {
	now := time.Now().UTC()
	return &workflows.Window{Start: now.Add(from).Format("15:04"), End: now.Add(to).Format("15:04")}
}

// Scheduled runs that meet the owner's limit wait for their turn within their window instead of missing the
// night: four volumes of one owner (limit 3) on one nightly policy, their runs started together. The run
// refused is queued at the owner, which tells it its turn (SignalTurn) when a permit frees.
func TestIntegrationScheduledRunsWaitForTheOwnersPermits(t *testing.T) {
	c := newCluster(t) // gate closed: the first three backups hold the owner's permits
	ctx := context.Background()
	vols := []string{"w1", "w2", "w3", "w4"}
	for _, id := range vols {
		c.register(t, id, "acct-w")
	}
	_, err := c.hf.PutPolicy(ctx, workflows.Policy{PolicyID: "nightly", Kind: workflows.KindBackup,
		Window: windowAround(-time.Hour, time.Hour), KeepLast: 3})
	require.NoError(t, err)
	for _, id := range vols {
		// The schedules fire at the window's opening, tomorrow: the runs below are started by hand.
		_, err = c.hf.AttachPolicy(ctx, id, "nightly")
		require.NoError(t, err)
		t.Cleanup(func() { _ = c.hf.DeleteSchedule(context.Background(), "nightly", id) })
	}
	runs := map[string]client.WorkflowRun{}
	for _, id := range vols {
		run, err := c.Temporal.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: "scheduled-run-" + id,
			TaskQueue: workflows.TaskQueue}, workflows.ScheduledRunWorkflow,
			workflows.ScheduledRunInput{PolicyID: "nightly", VolumeID: id})
		require.NoError(t, err)
		runs[id] = run
	}
	waitFor(t, "three backups running, the owner's limit", func() bool {
		busy := 0
		for _, id := range vols {
			if v, err := c.hf.Volume(ctx, id); err == nil && v.Active != nil {
				busy++
			}
		}
		return busy == 3
	})
	c.hv.Gate.Open()
	waited := ""
	for id, run := range runs {
		var res workflows.ScheduledRunResult
		require.NoError(t, run.Get(ctx, &res))
		assert.True(t, res.Accepted, "%s: %+v", id, res.Rejection)
		if res.Attempts > 1 {
			waited = id
		}
	}
	require.NotEmpty(t, waited, "one run met the owner's limit and waited")
	told := false
	iter := c.Temporal.GetWorkflowHistory(ctx, workflows.OwnerWorkflowID("acct-w"), "", false,
		enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	for iter.HasNext() {
		ev, err := iter.Next()
		require.NoError(t, err)
		if a := ev.GetSignalExternalWorkflowExecutionInitiatedEventAttributes(); a != nil &&
			a.GetSignalName() == workflows.SignalTurn && a.GetWorkflowExecution().GetWorkflowId() == "scheduled-run-"+waited {
			told = true
		}
	}
	assert.True(t, told, "the owner told the waiting run its turn")
	recordHistory(t, c.hf, "scheduled-run-"+waited, "scheduled-run-told-its-turn")
}

// A scheduled run refused VolumeBusy (a manual operation holds the volume) is told by the volume when that
// operation ends (SignalTurn), instead of waiting out its back-off: the volume's history holds the signal.
func TestIntegrationScheduledRunIsToldWhenTheVolumeIsFree(t *testing.T) {
	c := newCluster(t) // gate closed: the manual snapshot holds the volume
	ctx := context.Background()
	c.register(t, "b1", "acct-b")
	_, err := c.hf.PutPolicy(ctx, workflows.Policy{PolicyID: "nightly-b", Kind: workflows.KindBackup,
		Window: windowAround(-time.Hour, time.Hour), KeepLast: 3})
	require.NoError(t, err)
	_, err = c.hf.AttachPolicy(ctx, "b1", "nightly-b")
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.hf.DeleteSchedule(context.Background(), "nightly-b", "b1") })
	_, err = c.hf.Request(ctx, "b1", workflows.OperationRequest{Kind: workflows.KindSnapshot, Name: "manual"})
	require.NoError(t, err)
	const runID = "scheduled-run-b1"
	run, err := c.Temporal.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: runID,
		TaskQueue: workflows.TaskQueue}, workflows.ScheduledRunWorkflow,
		workflows.ScheduledRunInput{PolicyID: "nightly-b", VolumeID: "b1"})
	require.NoError(t, err)
	waitFor(t, "the run refused VolumeBusy and waiting", func() bool {
		return historyHas(t, c, runID, func(ev *historypb.HistoryEvent) bool {
			return ev.GetTimerStartedEventAttributes() != nil
		})
	})
	c.hv.Gate.Open()
	var res workflows.ScheduledRunResult
	require.NoError(t, run.Get(ctx, &res))
	require.True(t, res.Accepted, "%+v", res.Rejection)
	assert.Equal(t, 2, res.Attempts, "refused once (VolumeBusy), accepted the second time")
	assert.True(t, historyHas(t, c, workflows.VolumeWorkflowID("b1"), func(ev *historypb.HistoryEvent) bool {
		a := ev.GetSignalExternalWorkflowExecutionInitiatedEventAttributes()
		return a != nil && a.GetSignalName() == workflows.SignalTurn && a.GetWorkflowExecution().GetWorkflowId() == runID
	}), "the volume told the waiting run its turn when the manual snapshot ended")
	recordHistory(t, c.hf, workflows.VolumeWorkflowID("b1"), "volume-told-idle-waiter")
	recordHistory(t, c.hf, runID, "scheduled-run-told-volume-free")
}

// historyHas says whether workflowID's history (latest run) has an event match accepts.
func historyHas(t *testing.T, c *cluster, workflowID string, match func(*historypb.HistoryEvent) bool) bool {
	t.Helper()
	iter := c.Temporal.GetWorkflowHistory(context.Background(), workflowID, "", false,
		enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	for iter.HasNext() {
		ev, err := iter.Next()
		require.NoError(t, err)
		if match(ev) {
			return true
		}
	}
	return false
}

// TestIntegrationEditedConfigPolicyRetimesAttachedSchedules: a config-file policy's schedules follow the file
// once the control worker syncs it at start.
func TestIntegrationEditedConfigPolicyRetimesAttachedSchedules(t *testing.T) {
	hv := startertest.NewGatedHypervisor()
	c := startertest.NewCluster(t, testConfig+"policies: {hourly: {kind: snapshot, every: 1h}}\n",
		map[string]activities.Hypervisor{"hv1": hv})
	ctx := context.Background()
	c.Register(t, "vol1", "acct-1")
	a, err := c.Client.AttachPolicy(ctx, "vol1", "hourly")
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Client.DeleteSchedule(context.Background(), "hourly", "vol1") })

	c.Config.Policies["hourly"].Every = "2h" // the operator edits the file and restarts the worker
	edited := starter.New(c.Temporal, c.Config)
	startertest.WaitFor(t, "schedule re-timed", func() bool {
		require.NoError(t, edited.SyncConfigPolicies(ctx))
		desc, err := c.Temporal.ScheduleClient().GetHandle(ctx, a.ScheduleID).Describe(ctx)
		require.NoError(t, err)
		return len(desc.Schedule.Spec.Intervals) == 1 && desc.Schedule.Spec.Intervals[0].Every == 2*time.Hour
	})
}
