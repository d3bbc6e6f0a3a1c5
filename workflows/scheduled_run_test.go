package workflows

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/testsuite"

	"github.com/holdfast/holdfast/activities"
)

func scheduledRunEnv(t *testing.T, fn func(context.Context, ScheduledRequest) (ScheduledRunResult, error)) *testsuite.TestWorkflowEnvironment {
	var suite testsuite.WorkflowTestSuite
	env := suite.NewTestWorkflowEnvironment()
	env.RegisterWorkflow(ScheduledRunWorkflow)
	env.RegisterActivityWithOptions(fn, activity.RegisterOptions{Name: ScheduledRequestActivity})
	env.SetTestTimeout(30 * time.Second)
	return env
}

func TestScheduledRunReturnsOnceAccepted(t *testing.T) {
	var got []ScheduledRequest
	env := scheduledRunEnv(t, func(_ context.Context, r ScheduledRequest) (ScheduledRunResult, error) {
		got = append(got, r)
		return ScheduledRunResult{PolicyID: r.PolicyID, VolumeID: r.VolumeID, OperationID: r.OperationID,
			Kind: KindBackup, Accepted: true, ItemID: "bk-" + r.OperationID}, nil
	})
	env.ExecuteWorkflow(ScheduledRunWorkflow, ScheduledRunInput{PolicyID: "nightly", VolumeID: "vol1"})
	require.NoError(t, env.GetWorkflowError())
	var res ScheduledRunResult
	require.NoError(t, env.GetWorkflowResult(&res))
	assert.True(t, res.Accepted)
	require.Len(t, got, 1)
	assert.Regexp(t, `^sched-[0-9a-f]{24}$`, got[0].OperationID, "a valid operation id derived from the run")
	assert.True(t, activities.ValidID(got[0].OperationID))
	assert.Equal(t, "vol1", got[0].VolumeID)
}

func TestScheduledRunRecordsARejectionAndEnds(t *testing.T) {
	calls := 0
	env := scheduledRunEnv(t, func(_ context.Context, r ScheduledRequest) (ScheduledRunResult, error) {
		calls++
		return ScheduledRunResult{PolicyID: r.PolicyID, VolumeID: r.VolumeID, OperationID: r.OperationID,
			Rejection: &ErrorInfo{Type: ErrBackupLimit, Message: "Backup limit reached. Delete an existing backup first."}}, nil
	})
	env.ExecuteWorkflow(ScheduledRunWorkflow, ScheduledRunInput{PolicyID: "nightly", VolumeID: "vol1"})
	require.NoError(t, env.GetWorkflowError(), "a rejection is a result, not a failure to retry")
	var res ScheduledRunResult
	require.NoError(t, env.GetWorkflowResult(&res))
	assert.False(t, res.Accepted)
	require.NotNil(t, res.Rejection)
	assert.Equal(t, ErrBackupLimit, res.Rejection.Type)
	assert.Equal(t, 1, calls, "not retried")
}

func TestScheduledRunGivesUpOnAnUnreachableClusterWithinTenMinutes(t *testing.T) {
	calls := 0
	env := scheduledRunEnv(t, func(context.Context, ScheduledRequest) (ScheduledRunResult, error) {
		calls++
		return ScheduledRunResult{}, errors.New("connection refused")
	})
	env.ExecuteWorkflow(ScheduledRunWorkflow, ScheduledRunInput{PolicyID: "nightly", VolumeID: "vol1"})
	require.Error(t, env.GetWorkflowError(), "the run fails visibly; the next one is the retry")
	assert.Greater(t, calls, 3)
	assert.Less(t, calls, 40)
}
