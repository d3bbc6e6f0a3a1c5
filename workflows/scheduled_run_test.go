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

// A run refused for "not now" (the volume busy, twice) waits and tries again, backing off, each attempt a
// request of its own, until one is accepted within its window.
func TestScheduledRunWaitsForItsTurn(t *testing.T) {
	rt := newRefusedThen(t, 2, volumeBusy)
	res := rt.run(t)
	got, at := rt.got, rt.at
	assert.True(t, res.Accepted)
	assert.Equal(t, 3, res.Attempts)
	require.Len(t, got, 3)
	assert.False(t, got[0].StartedAt.IsZero(), "the run tells when it started, for its window")
	ids := map[string]bool{}
	for _, r := range got {
		assert.True(t, activities.ValidID(r.OperationID), r.OperationID)
		ids[r.OperationID] = true
	}
	assert.Len(t, ids, 3, "each attempt is a request of its own")
	assert.GreaterOrEqual(t, at[1].Sub(at[0]), scheduledRetryMin, "it waits between attempts")
	assert.Greater(t, at[2].Sub(at[1]), at[1].Sub(at[0])-time.Second, "backing off")
}

// A run still refused when its window closes ends with the refusal (a missed night, counted and alerted);
// a Cooldown's Retry-After is honoured.
func TestScheduledRunGivesUpWhenItsWindowCloses(t *testing.T) {
	var at []time.Time
	var env *testsuite.TestWorkflowEnvironment
	env = scheduledRunEnv(t, func(_ context.Context, r ScheduledRequest) (ScheduledRunResult, error) {
		at = append(at, env.Now())
		return ScheduledRunResult{PolicyID: r.PolicyID, VolumeID: r.VolumeID, OperationID: r.OperationID,
			WaitUntil: r.StartedAt.Add(10 * time.Minute), RetryAfter: 100,
			Rejection: &ErrorInfo{Type: ErrCooldown, Message: "Volume is in cooldown. Try again in 100 seconds."}}, nil
	})
	start := env.Now()
	env.ExecuteWorkflow(ScheduledRunWorkflow, ScheduledRunInput{PolicyID: "nightly", VolumeID: "vol1"})
	require.NoError(t, env.GetWorkflowError())
	var res ScheduledRunResult
	require.NoError(t, env.GetWorkflowResult(&res))
	assert.False(t, res.Accepted)
	require.NotNil(t, res.Rejection)
	assert.Equal(t, ErrCooldown, res.Rejection.Type)
	require.Greater(t, len(at), 2)
	for i := 1; i < len(at); i++ {
		assert.GreaterOrEqual(t, at[i].Sub(at[i-1]), 100*time.Second, "Retry-After honoured")
	}
	assert.True(t, at[len(at)-1].Before(start.Add(10*time.Minute)), "no attempt after the window")
	assert.Equal(t, len(at), res.Attempts)
}

func TestPolicyWaitUntilIsTheEndOfTheRunsWindow(t *testing.T) {
	nightly := Policy{Kind: KindBackup, TimeZone: "Europe/Berlin", Window: &Window{Start: "23:00", End: "03:00"}}
	berlin, err := time.LoadLocation("Europe/Berlin")
	require.NoError(t, err)
	at := func(s string) time.Time {
		tm, err := time.ParseInLocation("2006-01-02 15:04", s, berlin)
		require.NoError(t, err)
		return tm
	}
	assert.Equal(t, at("2026-12-01 03:00").UTC(), nightly.WaitUntil(at("2026-11-30 23:40")), "before midnight")
	assert.Equal(t, at("2026-12-01 03:00").UTC(), nightly.WaitUntil(at("2026-12-01 01:10")), "after midnight")
	assert.True(t, nightly.WaitUntil(at("2026-12-01 05:00")).Before(at("2026-12-01 05:00")),
		"a run caught up after its window has no time left")
	every := Policy{Kind: KindSnapshot, Every: "6h"}
	start := at("2026-12-01 10:00")
	assert.Equal(t, start.Add(6*time.Hour).UTC(), every.WaitUntil(start), "until the next run")
}

// Runs refused together come back apart: each run's spread shifts its waits, also after a cooldown.
func TestScheduledRetryWaitKeepsEachRunsSpread(t *testing.T) {
	for n := 1; n <= 6; n++ {
		early, late := scheduledRetryWait(n, 0, 0), scheduledRetryWait(n, 0.9, 0)
		assert.Greater(t, late, early, "attempt %d", n)
		assert.LessOrEqual(t, late, scheduledRetryMax*3/2, "attempt %d", n)
	}
	assert.GreaterOrEqual(t, scheduledRetryWait(1, 0, 100*time.Second), 100*time.Second, "a cooldown is waited out")
	assert.Greater(t, scheduledRetryWait(1, 0.9, 100*time.Second), scheduledRetryWait(1, 0, 100*time.Second))
}

// A run refused at the owner's limit names itself as the waiter and comes back as soon as the owner tells
// it its turn, well before its back-off; a turn told while an attempt is in flight does not trigger another.
func TestScheduledRunComesBackWhenToldItsTurn(t *testing.T) {
	rt := newRefusedThen(t, 2, ownerAtLimit)
	env := rt.env
	start := env.Now()
	env.RegisterDelayedCallback(func() { env.SignalWorkflow(SignalTurn, nil) }, time.Second)
	env.RegisterDelayedCallback(func() { env.SignalWorkflow(SignalTurn, nil) }, 2*time.Second)
	res := rt.run(t)
	got, at := rt.got, rt.at
	assert.True(t, res.Accepted)
	require.Len(t, got, 3)
	for _, r := range got {
		assert.Equal(t, "default-test-workflow-id", r.Waiter, "the run names itself for the owner's queue")
	}
	assert.Less(t, at[1].Sub(start), 2*time.Second, "came back at the first turn, not after %s", scheduledRetryMin)
	assert.Less(t, at[2].Sub(start), 3*time.Second, "and at the second")
}

// A run queued at the owner does not try again on its back-off: it waits for its turn, up to
// scheduledRetryMax, and then asks again (a turn lost must not cost the night).
func TestScheduledRunQueuedAtTheOwnerWaitsForItsTurnNotItsBackoff(t *testing.T) {
	rt := newRefusedThen(t, 2, ownerAtLimit)
	rt.run(t)
	at := rt.at
	require.Len(t, at, 3)
	assert.GreaterOrEqual(t, at[1].Sub(at[0]), scheduledRetryMax)
	assert.GreaterOrEqual(t, at[2].Sub(at[1]), scheduledRetryMax)
}

// refusedThen is a run's environment whose requests are refused with refusal (type, message) refused times,
// then accepted; it records each request and when it came.
type refusedThen struct {
	env *testsuite.TestWorkflowEnvironment
	got []ScheduledRequest
	at  []time.Time
}

func newRefusedThen(t *testing.T, refused int, refusal ErrorInfo) *refusedThen {
	rt := &refusedThen{}
	rt.env = scheduledRunEnv(t, func(_ context.Context, r ScheduledRequest) (ScheduledRunResult, error) {
		rt.got = append(rt.got, r)
		rt.at = append(rt.at, rt.env.Now())
		res := ScheduledRunResult{PolicyID: r.PolicyID, VolumeID: r.VolumeID, OperationID: r.OperationID,
			Kind: KindBackup, WaitUntil: r.StartedAt.Add(10 * time.Minute)}
		if len(rt.got) <= refused {
			res.Rejection = &refusal
		} else {
			res.Accepted, res.ItemID = true, "bk-"+r.OperationID
		}
		return res, nil
	})
	return rt
}

// run executes the run to its end and returns its result; a workflow error fails the test.
func (rt *refusedThen) run(t *testing.T) ScheduledRunResult {
	t.Helper()
	rt.env.ExecuteWorkflow(ScheduledRunWorkflow, ScheduledRunInput{PolicyID: "nightly", VolumeID: "vol1"})
	require.NoError(t, rt.env.GetWorkflowError())
	var res ScheduledRunResult
	require.NoError(t, rt.env.GetWorkflowResult(&res))
	return res
}

var (
	volumeBusy   = ErrorInfo{Type: ErrVolumeBusy, Message: "Volume is busy with operation: snapshot"}
	ownerAtLimit = ErrorInfo{Type: ErrOwnerLimit, Message: "Too many operations in flight"}
)
