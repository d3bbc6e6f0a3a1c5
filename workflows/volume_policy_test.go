package workflows

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"

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

	// Only a scheduled request names a run to tell its turn, and a bounded one.
	typ, _ = errType(t, validateRequest(OperationRequest{OperationID: "o", Kind: KindSnapshot, Waiter: "run"}, "v"))
	assert.Equal(t, ErrInvalidArgument, typ)
	long := OperationRequest{OperationID: "o", Kind: KindSnapshot, Scheduled: true, Waiter: strings.Repeat("r", 1001)}
	typ, _ = errType(t, validateRequest(long, "v"))
	assert.Equal(t, ErrInvalidArgument, typ)
	assert.NoError(t, validateRequest(OperationRequest{OperationID: "o", Kind: KindSnapshot, Scheduled: true,
		Waiter: "policy/nightly/volume/v-2026-11-30T00:00:00Z"}, "v"))
}
