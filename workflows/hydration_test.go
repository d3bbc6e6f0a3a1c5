package workflows

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"

	"github.com/holdfast/holdfast/activities"
)

// instantTarget is a new file volume on hv2 for restore op.
func instantTarget(id, op, path string) VolumeSpec {
	nv := testSpec()
	nv.VolumeID, nv.Name, nv.HypervisorID = id, id, "hv2"
	nv.Storage = activities.VolumeRef{Type: "file", Path: path, CreatedBy: op}
	return nv
}

// An instant restore: the new volume is made over the export, registered marked Hydrating by this restore
// before the hydration starts, hydrated, and the mark ended; a hydration that fails unregisters the volume,
// then deletes it (with its source, then plainly), then gives its ID and location back (in that order); a
// target the agent cannot restore
// instantly is restored in full, and the operation says why.
func TestInstantRestoreRegistersFirstAndCleansUpInOrder(t *testing.T) {
	h := newHarness(t)
	var order []string
	note := func(what string) func(mock.Arguments) { return func(mock.Arguments) { order = append(order, what) } }
	h.env.OnActivity(activities.PrepareInstantRestoreName, mock.Anything, mock.MatchedBy(func(in activities.RestoreBackupInput) bool {
		return in.TargetVolumeID == "full"
	})).Return(activities.InstantRestoreResult{FallbackReason: "instant restore needs a qcow2 file volume or an RBD image; restored in full"}, nil)
	h.env.OnActivity(activities.PrepareInstantRestoreName, mock.Anything, mock.Anything).
		Return(activities.InstantRestoreResult{SizeBytes: 1 << 30, Instant: true}, nil)
	h.env.OnActivity(RegisterVolumeActivity, mock.Anything, mock.Anything).Run(func(args mock.Arguments) {
		order = append(order, "register "+args.Get(1).(VolumeSpec).VolumeID+" hydrating="+args.Get(1).(VolumeSpec).Hydrating)
	}).Return(nil)
	h.env.OnActivity(activities.HydrateVolumeName, mock.Anything, mock.MatchedBy(func(in activities.RestoreBackupInput) bool {
		return in.TargetVolumeID == "broken"
	})).Run(note("hydrate broken")).Return(activities.RestoreResult{},
		temporal.NewNonRetryableApplicationError("disk full", activities.ErrInvalidArgument, nil))
	h.env.OnActivity(activities.HydrateVolumeName, mock.Anything, mock.Anything).Run(note("hydrate")).
		Return(activities.RestoreResult{SizeBytes: 1 << 30, BytesWritten: 1 << 29}, nil)
	h.env.OnActivity(EndHydrationActivity, mock.Anything, mock.Anything).Run(func(args mock.Arguments) {
		e := args.Get(1).(HydrationEnd)
		if e.Abandon {
			order = append(order, "abandon "+e.VolumeID)
		} else {
			order = append(order, "hydrated "+e.VolumeID)
		}
	}).Return(nil)
	h.env.OnActivity(activities.AbandonInstantRestoreName, mock.Anything, mock.Anything).Run(func(args mock.Arguments) {
		order = append(order, "abandon on hypervisor "+args.Get(1).(activities.RestoreBackupInput).TargetVolumeID)
	}).Return(nil)
	h.env.OnActivity(activities.DeleteVolumeName, mock.Anything, mock.Anything).Run(func(args mock.Arguments) {
		order = append(order, "delete "+args.Get(1).(activities.DeleteVolumeInput).VolumeID)
	}).Return(nil)
	h.env.OnActivity(ReleasePlacementActivity, mock.Anything, mock.Anything).Run(func(args mock.Arguments) {
		order = append(order, "release "+args.Get(1).(ReleasePlacementInput).VolumeID)
	}).Return(nil)
	h.mockHypervisor()
	spec := testSpec()
	spec.Cooldown = 0
	var bk, ok, broken, full *reply
	var done VolumeState
	h.at(time.Second, func() { h.register(spec) })
	h.at(2*time.Second, func() { bk = h.request(OperationRequest{Kind: KindBackup}) })
	restore := func(id, op string) *reply {
		nv := instantTarget(id, op, "/vols/"+id+".qcow2")
		return h.request(OperationRequest{OperationID: op, Kind: KindRestore, BackupID: bk.op.ItemID,
			Mode: ModeNewVolume, NewVolume: &nv, Instant: true})
	}
	h.at(3*time.Second, func() { ok = restore("copy", "op-copy") })
	h.at(4*time.Second, func() { order = append(order, "--"); broken = restore("broken", "op-broken") })
	h.at(5*time.Second, func() { order = append(order, "--"); full = restore("full", "op-full") })
	h.at(6*time.Second, func() { done = h.state() })
	h.run(time.Hour, VolumeInput{})

	requireAccepted(t, ok)
	requireAccepted(t, broken)
	requireAccepted(t, full)
	assert.Equal(t, []string{
		"register copy hydrating=op-copy", "hydrate", "hydrated copy",
		"--", "register broken hydrating=op-broken", "hydrate broken", "abandon broken", "abandon on hypervisor broken", "delete broken",
		"release broken",
		"--", "register full hydrating=",
	}, order)
	h.env.AssertActivityCalled(t, activities.RestoreBackupName, mock.Anything, mock.MatchedBy(func(in activities.RestoreBackupInput) bool {
		return in.TargetVolumeID == "full" && in.Create
	}))
	ops := map[string]Operation{}
	for _, op := range done.Recent {
		ops[op.OperationID] = op
	}
	assert.Equal(t, StatusCompleted, ops["op-copy"].Status)
	assert.Empty(t, ops["op-copy"].InstantFallback)
	assert.Equal(t, StatusFailed, ops["op-broken"].Status)
	assert.Equal(t, StatusCompleted, ops["op-full"].Status)
	assert.Equal(t, "instant restore needs a qcow2 file volume or an RBD image; restored in full", ops["op-full"].InstantFallback)
}

// What may be instant: only a restore of a backup to a new volume.
func TestInstantIsOnlyForBackupsToNewVolumes(t *testing.T) {
	h := newHarness(t)
	h.mockHypervisor()
	spec := testSpec()
	spec.Cooldown = 0
	var snapshot, inPlace, snapRestore *reply
	h.at(time.Second, func() { h.register(spec) })
	h.at(2*time.Second, func() { snapshot = h.request(OperationRequest{Kind: KindSnapshot, Instant: true}) })
	h.at(3*time.Second, func() {
		inPlace = h.request(OperationRequest{Kind: KindRestore, BackupID: "b", Mode: ModeInPlace, Confirm: spec.Name, Instant: true})
		nv := instantTarget("copy", "op-x", "/vols/copy.qcow2")
		snapRestore = h.request(OperationRequest{Kind: KindRestore, SnapshotID: "s", Mode: ModeNewVolume, NewVolume: &nv, Instant: true})
	})
	h.run(time.Hour, VolumeInput{})
	const msg = "instant: only a restore of a backup to a new volume is instant"
	requireRejected(t, snapshot, ErrInvalidArgument, msg)
	requireRejected(t, inPlace, ErrInvalidArgument, msg)
	requireRejected(t, snapRestore, ErrInvalidArgument, msg)
}

// A volume that hydrates is usable by its domain but refuses every request and any registration but its
// restore's; only that restore ends the mark (done: the volume is like any other; abandoned: unregistered).
func TestHydratingVolumeIsItsRestoresOnly(t *testing.T) {
	h := newHarness(t)
	h.mockHypervisor()
	nv := instantTarget("vol1", "op-r", "/vols/vol1.qcow2")
	nv.Hydrating = "op-r"
	nv.Cooldown = 0
	var snap, panel, again, stranger, done, doneAgain, after *reply
	var during VolumeState
	h.at(time.Second, func() { h.update(UpdateReserve, Reservation{OperationID: "op-r"}) })
	h.at(2*time.Second, func() { h.register(nv) })
	h.at(3*time.Second, func() {
		snap = h.request(OperationRequest{Kind: KindSnapshot})
		plain := nv
		plain.Hydrating = ""
		panel = h.update(UpdateRegister, plain)
		again = h.update(UpdateRegister, nv)
		stranger = h.update(UpdateHydration, HydrationEnd{VolumeID: "vol1", OperationID: "op-other"})
		during = h.state()
	})
	h.at(4*time.Second, func() {
		done = h.update(UpdateHydration, HydrationEnd{VolumeID: "vol1", OperationID: "op-r"})
	})
	h.at(5*time.Second, func() {
		doneAgain = h.update(UpdateHydration, HydrationEnd{VolumeID: "vol1", OperationID: "op-r"})
		after = h.request(OperationRequest{Kind: KindSnapshot})
	})
	h.run(time.Hour, VolumeInput{})

	requireRejected(t, snap, ErrVolumeBusy, "Volume is busy with operation: restore")
	requireRejected(t, panel, ErrVolumeBusy, "Volume is busy with operation: restore")
	require.NoError(t, again.err, "its restore's retried registration")
	requireRejected(t, stranger, ErrInvalidArgument, "operation_id: volume vol1 is not hydrated by op-other")
	assert.Equal(t, "op-r", during.Spec.Hydrating)
	require.NoError(t, done.err)
	require.NoError(t, doneAgain.err, "idempotent")
	requireAccepted(t, after)
	assert.Empty(t, h.state().Spec.Hydrating)
}

// An abandoned hydration unregisters the volume (its compensation deletes it next); abandoning again, or a
// volume the restore never registered, is a no-op.
func TestAbandonedHydrationUnregisters(t *testing.T) {
	h := newHarness(t)
	h.mockHypervisor()
	nv := instantTarget("vol1", "op-r", "/vols/vol1.qcow2")
	nv.Hydrating = "op-r"
	var abandon, again, never *reply
	h.at(time.Second, func() { h.update(UpdateReserve, Reservation{OperationID: "op-r"}) })
	h.at(2*time.Second, func() { h.register(nv) })
	h.at(3*time.Second, func() {
		abandon = h.update(UpdateHydration, HydrationEnd{VolumeID: "vol1", OperationID: "op-r", Abandon: true})
	})
	h.at(4*time.Second, func() {
		again = h.update(UpdateHydration, HydrationEnd{VolumeID: "vol1", OperationID: "op-r", Abandon: true})
		never = h.update(UpdateHydration, HydrationEnd{VolumeID: "vol1", OperationID: "op-never", Abandon: true})
	})
	h.run(time.Hour, VolumeInput{})
	require.NoError(t, abandon.err)
	require.NoError(t, again.err)
	require.NoError(t, never.err)
	st := h.state()
	assert.False(t, st.Registered)
	assert.Empty(t, st.Spec.Hydrating)
}
