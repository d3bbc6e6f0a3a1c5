package workflows

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/testsuite"

	"github.com/holdfast/holdfast/activities"
)

const night = 24 * time.Hour

func scheduled(policyID string, kind Kind, r Retention) OperationRequest {
	return OperationRequest{Kind: kind, Scheduled: true, PolicyID: policyID, Retention: &r}
}

func itemNames(items []Item) []string {
	var out []string
	for _, it := range items {
		out = append(out, fmt.Sprintf("%s:%s", it.Name, it.Status))
	}
	sort.Strings(out)
	return out
}

// TestAWeekOfNightsRetentionHoldsExactly drives one volume with a scheduled backup every night for a week,
// beside two manual backups: whether room is made at the plan cap (keep_last above what the cap allows) or
// retention trims after each night (keep_last below it), what remains is exactly the newest three scheduled
// backups and both manual ones.
func TestAWeekOfNightsRetentionHoldsExactly(t *testing.T) {
	for _, tc := range []struct {
		name       string
		maxBackups int
		retention  Retention
	}{
		{"at the plan cap", 5, Retention{KeepLast: 10}},
		{"keep_last under the cap", 10, Retention{KeepLast: 3}},
		{"no retention rules: the cap alone", 5, Retention{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.mockHypervisor()
			spec := testSpec()
			spec.Plan.MaxBackups = tc.maxBackups
			var manual [2]*reply
			nights := make([]*reply, 7)
			var st VolumeState
			var attach *reply
			h.at(time.Second, func() { h.register(spec) })
			h.at(2*time.Second, func() { attach = h.update(UpdateSetPolicy, PolicyAttachment{PolicyID: "nightly"}) })
			h.at(time.Minute, func() { manual[0] = h.request(OperationRequest{Kind: KindBackup, Name: "manual-1"}) })
			h.at(10*time.Minute, func() { manual[1] = h.request(OperationRequest{Kind: KindBackup, Name: "manual-2"}) })
			for n := range nights {
				h.at(time.Duration(n+1)*night+2*time.Hour, func() {
					req := scheduled("nightly", KindBackup, tc.retention)
					req.Name = fmt.Sprintf("night-%d", n+1)
					nights[n] = h.request(req)
				})
			}
			h.at(8*night, func() { st = h.state() })
			h.run(9*night, VolumeInput{})

			require.NoError(t, attach.err)
			for _, m := range manual {
				requireAccepted(t, m)
			}
			for _, n := range nights {
				requireAccepted(t, n) // never rejected: a scheduled item made room every night
			}
			assert.Equal(t, []string{"manual-1:available", "manual-2:available", "night-5:available",
				"night-6:available", "night-7:available"}, itemNames(st.Backups))
			deletes := 0
			for _, op := range st.Recent {
				if op.Kind == KindDelete {
					deletes++
					assert.True(t, op.Scheduled)
					assert.Equal(t, StatusCompleted, op.Status)
				}
			}
			assert.Equal(t, 4, deletes, "nights 1 to 4 were deleted through DeleteWorkflow")
			h.env.AssertActivityNumberOfCalls(t, activities.DeleteBackupName, 4)
		})
	}
}

func TestScheduledRequestAtCapWithOnlyManualItemsIsRejected(t *testing.T) {
	h := newHarness(t)
	h.mockHypervisor()
	spec := testSpec()
	spec.Plan.MaxSnapshots, spec.Cooldown = 2, 0
	var m1, m2, sched, other, manualAtCap *reply
	var st VolumeState
	h.at(time.Second, func() { h.register(spec) })
	h.at(2*time.Second, func() { h.update(UpdateSetPolicy, PolicyAttachment{PolicyID: "nightly"}) })
	h.at(time.Minute, func() { m1 = h.request(OperationRequest{Kind: KindSnapshot, Name: "m1"}) })
	h.at(2*time.Minute, func() { m2 = h.request(OperationRequest{Kind: KindSnapshot, Name: "m2"}) })
	h.at(3*time.Minute, func() {
		sched = h.request(scheduled("nightly", KindSnapshot, Retention{KeepLast: 1}))
		other = h.request(scheduled("weekly", KindSnapshot, Retention{KeepLast: 1}))
		manualAtCap = h.request(OperationRequest{Kind: KindSnapshot})
	})
	h.at(time.Hour, func() { st = h.state() })
	h.run(2*time.Hour, VolumeInput{})

	requireAccepted(t, m1)
	requireAccepted(t, m2)
	requireRejected(t, sched, ErrSnapshotLimit, "Snapshot limit reached. Delete an existing snapshot first.")
	requireRejected(t, other, ErrNotAttached, "Volume vol1 is not attached to policy weekly.")
	requireRejected(t, manualAtCap, ErrSnapshotLimit, "Snapshot limit reached. Delete an existing snapshot first.")
	assert.Equal(t, []string{"m1:available", "m2:available"}, itemNames(st.Snapshots), "manual items never deleted")
	h.env.AssertActivityNotCalled(t, activities.DeleteSnapshotName, mock.Anything, mock.Anything)
}

func TestManualItemsAreNeverDeletedByRetention(t *testing.T) {
	h := newHarness(t)
	h.mockHypervisor()
	spec := testSpec()
	spec.Plan.MaxSnapshots, spec.Cooldown = 4, 0
	var replies []*reply
	var st VolumeState
	h.at(time.Second, func() { h.register(spec) })
	// Interleaved manual and scheduled snapshots; keep_last 1 and the cap keep trimming scheduled ones only.
	for i, manual := range []bool{true, false, true, false, false, false, true, false} {
		h.at(time.Duration(i+1)*time.Hour, func() {
			req := scheduled("", KindSnapshot, Retention{KeepLast: 1})
			if manual {
				req = OperationRequest{Kind: KindSnapshot}
			}
			req.Name = fmt.Sprintf("s%d", i+1)
			replies = append(replies, h.request(req))
		})
	}
	h.at(20*time.Hour, func() { st = h.state() })
	h.run(21*time.Hour, VolumeInput{})
	for _, r := range replies[:7] {
		requireAccepted(t, r)
	}
	// s8 (scheduled) would be the fifth live snapshot with three manual ones and s6: it makes room by deleting
	// s6; the manual ones stay.
	requireAccepted(t, replies[7])
	assert.Equal(t, []string{"s1:available", "s3:available", "s7:available", "s8:available"}, itemNames(st.Snapshots))
}

func TestAbortWhileMakingRoomFailsTheScheduledItemOnly(t *testing.T) {
	h := newHarness(t)
	h.env.OnActivity(activities.DeleteBackupName, mock.Anything, mock.Anything).After(time.Hour).Return(nil).Once()
	h.mockHypervisor()
	spec := testSpec()
	spec.Plan.MaxBackups, spec.Cooldown = 1, 0
	var first, second *reply
	var st VolumeState
	h.at(time.Second, func() { h.register(spec) })
	h.at(time.Minute, func() { first = h.request(scheduled("", KindBackup, Retention{KeepLast: 1})) })
	h.at(time.Hour, func() { second = h.request(scheduled("", KindBackup, Retention{KeepLast: 1})) })
	h.at(time.Hour+time.Minute, func() { h.update(UpdateAbort, "operator") })
	h.at(3*time.Hour, func() { st = h.state() })
	h.run(4*time.Hour, VolumeInput{})
	requireAccepted(t, first)
	requireAccepted(t, second)
	require.Nil(t, st.Active)
	assert.Equal(t, StatusAvailable, findItem(st.Backups, first.op.ItemID).Status, "the old item is kept")
	assert.Equal(t, StatusFailed, findItem(st.Backups, second.op.ItemID).Status)
	assert.Equal(t, StatusAborted, st.Recent[len(st.Recent)-1].Status)
}

func TestScheduledRequestsAreValidated(t *testing.T) {
	assert.Error(t, validateRequest(OperationRequest{OperationID: "o", Kind: KindSnapshot, PolicyID: "p"}, "v"))
	err := validateRequest(OperationRequest{OperationID: "o", Kind: KindDelete, SnapshotID: "s", Scheduled: true}, "v")
	typ, msg := errType(t, err)
	assert.Equal(t, ErrInvalidArgument, typ)
	assert.Equal(t, "kind: only snapshots and backups are scheduled", msg)
}

// ---- retention rules ----

func items(times ...string) []Item {
	var out []Item
	for i, s := range times {
		ts, err := time.Parse(time.RFC3339, s)
		if err != nil {
			panic(err)
		}
		out = append(out, Item{ItemID: fmt.Sprintf("i%02d", i), Name: s, Status: StatusAvailable, CreatedAt: ts,
			Scheduled: true})
	}
	return out
}

func names(items []Item) string {
	var out []string
	for _, it := range items {
		out = append(out, it.Name)
	}
	return strings.Join(out, " ")
}

func TestRetentionRules(t *testing.T) {
	// Two a day (01:00 and 13:00 UTC) from Monday 2026-01-05 to Sunday 2026-01-25: three ISO weeks.
	var ts []string
	for d := 5; d <= 25; d++ {
		ts = append(ts, fmt.Sprintf("2026-01-%02dT01:00:00Z", d), fmt.Sprintf("2026-01-%02dT13:00:00Z", d))
	}
	all := items(ts...)
	kept := func(r Retention) string {
		exp := map[string]bool{}
		for _, it := range r.Expired(all, "") {
			exp[it.ItemID] = true
		}
		var k []Item
		for _, it := range all {
			if !exp[it.ItemID] {
				k = append(k, it)
			}
		}
		return names(k)
	}
	assert.Equal(t, "2026-01-25T01:00:00Z 2026-01-25T13:00:00Z", kept(Retention{KeepLast: 2}))
	assert.Equal(t, "2026-01-23T13:00:00Z 2026-01-24T13:00:00Z 2026-01-25T13:00:00Z", kept(Retention{KeepDaily: 3}))
	// The newest of each of the last two ISO weeks (weeks end on Sunday).
	assert.Equal(t, "2026-01-18T13:00:00Z 2026-01-25T13:00:00Z", kept(Retention{KeepWeekly: 2}))
	assert.Equal(t, "2026-01-25T13:00:00Z", kept(Retention{KeepMonthly: 3}), "one month of items")
	// Rules combine (a union); keep_last 1 and keep_daily 2 overlap on the newest.
	assert.Equal(t, "2026-01-24T13:00:00Z 2026-01-25T13:00:00Z", kept(Retention{KeepLast: 1, KeepDaily: 2}))
	// Days are the policy's: in Los Angeles (UTC-8) 01:00Z is still the previous evening, so a day holds
	// its 13:00Z item and the next 01:00Z one, which is that day's newest.
	assert.Equal(t, "2026-01-24T01:00:00Z 2026-01-25T01:00:00Z 2026-01-25T13:00:00Z",
		kept(Retention{KeepDaily: 3, TimeZone: "America/Los_Angeles"}))
	assert.Empty(t, Retention{}.Expired(all, ""), "no rules: keep everything (the plan cap still applies)")
	// Expired items come oldest first, which is the order they are deleted in.
	exp := Retention{KeepLast: 40}.Expired(all, "")
	assert.Equal(t, "2026-01-05T01:00:00Z 2026-01-05T13:00:00Z", names(exp))

	// The item being created counts as the newest and is never expired; manual and failed items are never
	// candidates.
	mixed := items("2026-01-01T01:00:00Z", "2026-01-02T01:00:00Z", "2026-01-03T01:00:00Z")
	mixed[0].Scheduled = false
	mixed[1].Status = StatusFailed
	mixed = append(mixed, Item{ItemID: "new", Name: "new", Status: StatusCreating, Scheduled: true})
	assert.Equal(t, "2026-01-03T01:00:00Z", names(Retention{KeepLast: 1}.Expired(mixed, "new")))
	victims, ok := Retention{KeepLast: 5}.Evictions(mixed, "new", 1)
	assert.True(t, ok)
	assert.Equal(t, "2026-01-03T01:00:00Z", names(victims), "the cap wins over keep_last")
	_, ok = Retention{KeepLast: 5}.Evictions(mixed, "new", 2)
	assert.False(t, ok, "manual and failed items are never evicted")
}

func TestPolicyValidationNamesTheField(t *testing.T) {
	ok := Policy{Kind: KindBackup, Window: &Window{Start: "01:00", End: "05:00"}, TimeZone: "Europe/Berlin",
		KeepLast: 7, KeepWeekly: 4}
	require.NoError(t, ok.Validate())
	assert.Equal(t, 4*time.Hour, ok.JitterDuration(), "jitter defaults to the window's length")
	wrap := Policy{Kind: KindSnapshot, Window: &Window{Start: "23:30", End: "02:00"}}
	require.NoError(t, wrap.Validate())
	assert.Equal(t, 150*time.Minute, wrap.JitterDuration())
	h, m := wrap.WindowStart()
	assert.Equal(t, [2]int{23, 30}, [2]int{h, m})
	require.NoError(t, Policy{Kind: KindBackup, Every: "2s", KeepLast: 2}.Validate())
	require.NoError(t, Policy{Kind: KindBackup, Cron: "0 1 * * 0", Window: &Window{Start: "01:00", End: "03:00"}}.Validate())
	require.NoError(t, Policy{Kind: KindBackup, Cron: "@daily"}.Validate())

	for _, tc := range []struct {
		p    Policy
		want string
	}{
		{Policy{Kind: "restore", Every: "1h"}, "kind: must be snapshot or backup"},
		{Policy{Kind: KindBackup}, "every: give every, cron or window"},
		{Policy{Kind: KindBackup, Every: "soon"}, "every: not a duration"},
		{Policy{Kind: KindBackup, Every: "10ms"}, "every: must be at least 1s"},
		{Policy{Kind: KindBackup, Every: "1h", Cron: "0 1 * * *"}, "every: give either every or cron"},
		{Policy{Kind: KindBackup, Every: "1h", Window: &Window{Start: "01:00", End: "02:00"}}, "window: an interval"},
		{Policy{Kind: KindBackup, Window: &Window{Start: "1:00", End: "05:00"}}, "window.start: must be HH:MM"},
		{Policy{Kind: KindBackup, Window: &Window{Start: "01:00", End: "24:00"}}, "window.end: must be HH:MM"},
		{Policy{Kind: KindBackup, Window: &Window{Start: "01:00", End: "01:00"}}, "window.end: must differ"},
		{Policy{Kind: KindBackup, Window: &Window{Start: "01:00", End: "05:00"}, Jitter: "5h"}, "jitter: must not exceed the window's length 4h0m0s"},
		{Policy{Kind: KindBackup, Every: "1m", Jitter: "2m"}, "jitter: must not exceed every"},
		{Policy{Kind: KindBackup, Every: "1m", Jitter: "-1s"}, "jitter: must not be negative"},
		{Policy{Kind: KindBackup, Cron: "0 2 * * *", Window: &Window{Start: "01:00", End: "05:00"}}, "cron: must fire at window.start"},
		{Policy{Kind: KindBackup, Cron: "0 1"}, "cron: must have 5 to 7 fields"},
		{Policy{Kind: KindBackup, Every: "1h", TimeZone: "Mars/Olympus"}, "time_zone: unknown time zone"},
		{Policy{Kind: KindBackup, Every: "1h", KeepDaily: -1}, "keep_daily: must be 0 to 1000"},
		{Policy{Kind: KindBackup, Every: "1h", PolicyID: "-x"}, "policy_id: must match"},
	} {
		err := tc.p.Validate()
		require.Error(t, err, "%+v", tc.p)
		typ, msg := errType(t, err)
		assert.Equal(t, ErrInvalidArgument, typ)
		assert.Contains(t, msg, tc.want)
	}
}

// ---- ScheduledRunWorkflow ----

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

func TestPolicyWorkflowStoresAValidatedPolicy(t *testing.T) {
	var suite testsuite.WorkflowTestSuite
	env := suite.NewTestWorkflowEnvironment()
	env.RegisterWorkflow(PolicyWorkflow)
	var bad, good *reply
	var got Policy
	var queryErr error
	update := func(p Policy) *reply {
		o := &reply{}
		env.UpdateWorkflow(UpdatePutPolicy, "", &testsuite.TestUpdateCallback{OnAccept: func() {},
			OnReject:   func(err error) { o.done, o.err = true, err },
			OnComplete: func(_ any, err error) { o.done, o.err = true, err }}, p)
		return o
	}
	env.RegisterDelayedCallback(func() {
		_, queryErr = env.QueryWorkflow(QueryPolicy)
		bad = update(Policy{PolicyID: "nightly", Kind: KindBackup})
		good = update(Policy{PolicyID: "nightly", Kind: KindBackup, Every: "24h", KeepLast: 7})
	}, time.Second)
	env.RegisterDelayedCallback(func() {
		v, err := env.QueryWorkflow(QueryPolicy)
		require.NoError(t, err)
		require.NoError(t, v.Get(&got))
		env.CancelWorkflow()
	}, time.Minute)
	env.ExecuteWorkflow(PolicyWorkflow, PolicyInput{PolicyID: "nightly"})
	require.Error(t, queryErr, "no policy stored yet")
	requireRejected(t, bad, ErrInvalidArgument, "every: give every, cron or window")
	require.NoError(t, good.err)
	assert.Equal(t, 7, got.KeepLast)
}
