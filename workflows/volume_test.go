package workflows

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/activities/metrics"
)

func TestRequestBeforeRegistrationIsNotFound(t *testing.T) {
	h := newHarness(t)
	h.mockHypervisor()
	var o *reply
	h.at(time.Second, func() { o = h.request(OperationRequest{Kind: KindSnapshot}) })
	h.run(time.Minute, VolumeInput{})
	requireRejected(t, o, ErrNotFound, "Volume vol1 not found.")
}

func TestSnapshotLifecycleAndBusy(t *testing.T) {
	h := newHarness(t)
	h.env.OnActivity(activities.CreateSnapshotName, mock.Anything, mock.Anything).After(10*time.Minute).
		Return(activities.SnapshotResult{SizeBytes: 4096, Consistency: activities.ConsistencyApplication}, nil).Once()
	h.mockHypervisor()
	var first, busy, busyRestore *reply
	var during, after VolumeState
	h.at(time.Second, func() { h.register(testSpec()) })
	h.at(2*time.Second, func() { first = h.request(OperationRequest{Kind: KindSnapshot, Name: "before-upgrade"}) })
	h.at(time.Minute, func() {
		busy = h.request(OperationRequest{Kind: KindBackup})
		busyRestore = h.request(OperationRequest{Kind: KindRestore, SnapshotID: "x", Mode: ModeInPlace})
		during = h.state()
	})
	h.at(20*time.Minute, func() { after = h.state() })
	h.run(time.Hour, VolumeInput{})

	requireAccepted(t, first)
	requireRejected(t, busy, ErrVolumeBusy, "Volume is busy with operation: snapshot")
	// What the caller names is checked before the lock: a missing snapshot is NotFound even while busy.
	requireRejected(t, busyRestore, ErrNotFound, "Snapshot x not found on volume vol1.")
	require.NotNil(t, during.Active)
	assert.Equal(t, StatusCreating, during.Active.Status)
	assert.Equal(t, StatusCreating, findItem(during.Snapshots, first.op.ItemID).Status)

	assert.Nil(t, after.Active, "lock released")
	snap := findItem(after.Snapshots, first.op.ItemID)
	require.NotNil(t, snap)
	assert.Equal(t, StatusAvailable, snap.Status)
	assert.Equal(t, "before-upgrade", snap.Name)
	assert.Equal(t, int64(4096), snap.SizeBytes)
	assert.Equal(t, activities.ConsistencyApplication, snap.Consistency)
	require.Len(t, after.Recent, 1)
	assert.Equal(t, StatusAvailable, after.Recent[0].Status)
}

func TestBlankSnapshotNameIsTimestamped(t *testing.T) {
	h := newHarness(t)
	h.mockHypervisor()
	var o *reply
	var st VolumeState
	h.at(time.Second, func() { h.register(testSpec()) })
	h.at(2*time.Second, func() { o = h.request(OperationRequest{Kind: KindSnapshot}) })
	h.at(time.Minute, func() { st = h.state() })
	h.run(time.Hour, VolumeInput{})
	requireAccepted(t, o)
	assert.Regexp(t, `^snapshot-\d{8}-\d{6}$`, findItem(st.Snapshots, o.op.ItemID).Name)
}

func TestCooldownCountsDownWithTheClock(t *testing.T) {
	h := newHarness(t)
	h.mockHypervisor()
	var first, after1m, after4m, after5m *reply
	var st VolumeState
	h.at(time.Second, func() { h.register(testSpec()) })
	// The snapshot completes at once (mocked), so the cooldown runs from t=2s to t=5m2s.
	h.at(2*time.Second, func() { first = h.request(OperationRequest{Kind: KindSnapshot}) })
	h.at(62*time.Second, func() { after1m = h.request(OperationRequest{Kind: KindBackup}); st = h.state() })
	h.at(4*time.Minute+2*time.Second, func() { after4m = h.request(OperationRequest{Kind: KindSnapshot}) })
	h.at(5*time.Minute+3*time.Second, func() { after5m = h.request(OperationRequest{Kind: KindBackup}) })
	h.run(time.Hour, VolumeInput{})

	requireAccepted(t, first)
	requireRejected(t, after1m, ErrCooldown, "Volume is in cooldown. Try again in 240 seconds.")
	requireRejected(t, after4m, ErrCooldown, "Volume is in cooldown. Try again in 60 seconds.")
	var app *temporal.ApplicationError
	require.ErrorAs(t, after4m.err, &app)
	var seconds int64
	require.NoError(t, app.Details(&seconds))
	assert.Equal(t, int64(60), seconds, "remaining seconds travel as details for Retry-After")
	assert.False(t, st.CooldownUntil.IsZero())
	requireAccepted(t, after5m)
}

func TestSnapshotLimitAndDeleteFreesASlot(t *testing.T) {
	h := newHarness(t)
	h.mockHypervisor()
	spec := testSpec()
	spec.Plan.MaxSnapshots, spec.Cooldown = 2, 0
	var s1, s2, s3, badConfirm, del, s4 *reply
	var st VolumeState
	h.at(time.Second, func() { h.register(spec) })
	h.at(2*time.Second, func() { s1 = h.request(OperationRequest{Kind: KindSnapshot, Name: "one"}) })
	h.at(3*time.Second, func() { s2 = h.request(OperationRequest{Kind: KindSnapshot, Name: "two"}) })
	h.at(4*time.Second, func() { s3 = h.request(OperationRequest{Kind: KindSnapshot, Name: "three"}) })
	h.at(5*time.Second, func() {
		badConfirm = h.request(OperationRequest{Kind: KindDelete, SnapshotID: s1.op.ItemID, Confirm: "One"})
		del = h.request(OperationRequest{Kind: KindDelete, SnapshotID: s1.op.ItemID, Confirm: "one"})
	})
	h.at(6*time.Second, func() { s4 = h.request(OperationRequest{Kind: KindSnapshot, Name: "four"}) })
	h.at(time.Minute, func() { st = h.state() })
	h.run(time.Hour, VolumeInput{})

	requireAccepted(t, s1)
	requireAccepted(t, s2)
	requireRejected(t, s3, ErrSnapshotLimit, "Snapshot limit reached. Delete an existing snapshot first.")
	requireRejected(t, badConfirm, ErrConfirmationMismatch,
		`Confirmation does not match: type the snapshot name "one" to confirm.`)
	requireAccepted(t, del)
	requireAccepted(t, s4)
	names := []string{}
	for _, s := range st.Snapshots {
		names = append(names, s.Name)
	}
	assert.Equal(t, []string{"two", "four"}, names)
	h.env.AssertActivityCalled(t, activities.DeleteSnapshotName, mock.Anything,
		activities.SnapshotRef{VolumeID: "vol1", Volume: spec.Storage, SnapshotID: s1.op.ItemID})
}

func TestBackupLimitAndNoBackupStorage(t *testing.T) {
	h := newHarness(t)
	h.mockHypervisor()
	spec := testSpec()
	spec.Plan.MaxBackups, spec.Cooldown = 1, 0
	var b1, b2, noStorage *reply
	var st VolumeState
	h.at(time.Second, func() { h.register(spec) })
	h.at(2*time.Second, func() { b1 = h.request(OperationRequest{Kind: KindBackup, Name: "nightly"}) })
	h.at(3*time.Second, func() { b2 = h.request(OperationRequest{Kind: KindBackup}) })
	h.at(4*time.Second, func() {
		st = h.state()
		spec.BackupStorage = ""
		h.register(spec)
		noStorage = h.request(OperationRequest{Kind: KindBackup})
	})
	h.run(time.Hour, VolumeInput{})

	requireAccepted(t, b1)
	requireRejected(t, b2, ErrBackupLimit, "Backup limit reached. Delete an existing backup first.")
	requireRejected(t, noStorage, ErrNoBackupStorage, "Hypervisor has no backup storage configured.")
	bk := findItem(st.Backups, b1.op.ItemID)
	require.NotNil(t, bk)
	assert.Equal(t, StatusAvailable, bk.Status)
	assert.Equal(t, "local", bk.Storage)
	assert.Equal(t, int64(1<<28), bk.StoredBytes)
	// The backup streamed a temporary snapshot, then dropped it.
	h.env.AssertActivityCalled(t, activities.DeleteSnapshotName, mock.Anything, activities.SnapshotRef{
		VolumeID: "vol1", Volume: spec.Storage, SnapshotID: "holdfast-backup-" + b1.op.ItemID})
}

func TestInPlaceRestoreRefusedWhileAttachedRunning(t *testing.T) {
	h := newHarness(t)
	h.env.OnActivity(activities.AttachmentName, mock.Anything, mock.Anything).
		Return(activities.AttachmentResult{Attached: true, Domain: "vm-1", Running: true}, nil).Once()
	h.mockHypervisor()
	spec := testSpec()
	spec.Cooldown = 0
	var snap, refused, wrongName, toNew, inPlace *reply
	h.at(time.Second, func() { h.register(spec) })
	h.at(2*time.Second, func() { snap = h.request(OperationRequest{Kind: KindSnapshot, Name: "s"}) })
	h.at(3*time.Second, func() {
		refused = h.request(OperationRequest{Kind: KindRestore, SnapshotID: snap.op.ItemID, Mode: ModeInPlace,
			Confirm: "web-data"})
	})
	h.at(4*time.Second, func() {
		wrongName = h.request(OperationRequest{Kind: KindRestore, SnapshotID: snap.op.ItemID, Mode: ModeInPlace,
			Confirm: "web-dat"})
	})
	h.at(5*time.Second, func() {
		nv := spec
		nv.VolumeID, nv.Name, nv.Storage.Path = "vol2", "copy", "/var/lib/holdfast/volumes/copy.qcow2"
		toNew = h.request(OperationRequest{Kind: KindRestore, SnapshotID: snap.op.ItemID, Mode: ModeNewVolume,
			NewVolume: &nv})
	})
	h.at(6*time.Second, func() {
		inPlace = h.request(OperationRequest{Kind: KindRestore, SnapshotID: snap.op.ItemID, Mode: ModeInPlace,
			Confirm: "web-data"})
	})
	h.run(time.Hour, VolumeInput{})

	requireRejected(t, refused, ErrAttachedRunning, "Cannot restore in-place while attached to a running instance")
	requireRejected(t, wrongName, ErrConfirmationMismatch,
		`Confirmation does not match: type the volume name "web-data" to confirm.`)
	requireAccepted(t, toNew) // no running-instance restriction for a new volume
	requireAccepted(t, inPlace)
	// In place: safety snapshot first, then rollback to the chosen snapshot, then the safety snapshot goes.
	safety := activities.SnapshotRef{VolumeID: "vol1", Volume: spec.Storage,
		SnapshotID: "holdfast-safety-" + inPlace.op.OperationID}
	h.env.AssertActivityCalled(t, activities.RollbackSnapshotName, mock.Anything,
		activities.SnapshotRef{VolumeID: "vol1", Volume: spec.Storage, SnapshotID: snap.op.ItemID})
	h.env.AssertActivityCalled(t, activities.DeleteSnapshotName, mock.Anything, safety)
	h.env.AssertActivityNotCalled(t, activities.RollbackSnapshotName, mock.Anything, safety)
}

func TestInPlaceRestoreFailureRollsBackToSafetySnapshot(t *testing.T) {
	h := newHarness(t)
	h.env.OnActivity(activities.RestoreBackupName, mock.Anything, mock.Anything).
		Return(activities.RestoreResult{}, temporal.NewNonRetryableApplicationError("chunk 3 is corrupt",
			activities.ErrCorrupt, nil)).Once()
	h.mockHypervisor()
	spec := testSpec()
	spec.Cooldown = 0
	var bk, restore *reply
	var st VolumeState
	h.at(time.Second, func() { h.register(spec) })
	h.at(2*time.Second, func() { bk = h.request(OperationRequest{Kind: KindBackup, Name: "b"}) })
	h.at(3*time.Second, func() {
		restore = h.request(OperationRequest{Kind: KindRestore, BackupID: bk.op.ItemID, Mode: ModeInPlace,
			Confirm: "web-data"})
	})
	h.at(time.Minute, func() { st = h.state() })
	h.run(time.Hour, VolumeInput{})

	requireAccepted(t, restore)
	safety := activities.SnapshotRef{VolumeID: "vol1", Volume: spec.Storage,
		SnapshotID: "holdfast-safety-" + restore.op.OperationID}
	h.env.AssertActivityCalled(t, activities.RollbackSnapshotName, mock.Anything, safety)
	h.env.AssertActivityCalled(t, activities.DeleteSnapshotName, mock.Anything, safety)
	last := st.Recent[len(st.Recent)-1]
	assert.Equal(t, StatusFailed, last.Status)
	assert.Equal(t, activities.ErrCorrupt, last.Error.Type)
	assert.Equal(t, "chunk 3 is corrupt", last.Error.Message)
	assert.Equal(t, StatusAvailable, findItem(st.Backups, bk.op.ItemID).Status, "the backup itself is untouched")
	assert.Nil(t, st.Active)
}

func TestDeadlineCompensatesAndReleases(t *testing.T) {
	h := newHarness(t)
	h.env.OnActivity(activities.UploadBackupName, mock.Anything, mock.Anything).After(5*time.Hour).
		Return(activities.UploadBackupResult{}, nil).Once()
	h.env.OnSignalExternalWorkflow(mock.Anything, OwnerWorkflowID("acct-42"), "", SignalRelease,
		ReleaseSignal{LeaseID: "stuck"}).Return(nil).Once()
	h.mockHypervisor()
	var o, next *reply
	var during, after VolumeState
	h.at(time.Second, func() { h.register(testSpec()) })
	h.at(2*time.Second, func() { o = h.request(OperationRequest{OperationID: "stuck", Kind: KindBackup}) })
	h.at(time.Hour, func() { during = h.state() })
	h.at(2*time.Hour+time.Minute, func() { after = h.state() })
	h.at(2*time.Hour+6*time.Minute, func() { next = h.request(OperationRequest{Kind: KindSnapshot}) })
	h.run(3*time.Hour, VolumeInput{})

	requireAccepted(t, o)
	require.NotNil(t, during.Active)
	require.Nil(t, after.Active, "lock released at the deadline")
	bk := findItem(after.Backups, o.op.ItemID)
	assert.Equal(t, StatusFailed, bk.Status)
	last := after.Recent[len(after.Recent)-1]
	assert.Equal(t, StatusFailed, last.Status)
	assert.Equal(t, ErrDeadlineExceeded, last.Error.Type)
	assert.Contains(t, last.Error.Message, "did not finish within 2h0m0s (it was waiting on: upload on hypervisor hv1)")
	h.env.AssertActivityCalled(t, activities.AbandonBackupName, mock.Anything,
		activities.BackupRef{VolumeID: "vol1", BackupID: o.op.ItemID, Storage: "local"})
	h.env.AssertActivityCalled(t, activities.DeleteSnapshotName, mock.Anything, activities.SnapshotRef{
		VolumeID: "vol1", Volume: testSpec().Storage, SnapshotID: "holdfast-backup-" + o.op.ItemID})
	h.env.AssertExpectations(t) // the owner's permit was released
	requireAccepted(t, next)
}

func TestAbortMidBackupCompensatesWithinAMinute(t *testing.T) {
	h := newHarness(t)
	h.env.OnActivity(activities.UploadBackupName, mock.Anything, mock.Anything).After(time.Hour).
		Return(activities.UploadBackupResult{}, nil).Once()
	h.mockHypervisor()
	var o, abort, idleAbort *reply
	var after VolumeState
	h.at(time.Second, func() { h.register(testSpec()) })
	h.at(2*time.Second, func() { o = h.request(OperationRequest{Kind: KindBackup}) })
	h.at(10*time.Minute, func() { abort = h.update(UpdateAbort, "operator: saturating disk") })
	h.at(10*time.Minute+59*time.Second, func() { after = h.state() })
	h.at(12*time.Minute, func() { idleAbort = h.update(UpdateAbort, "again") })
	h.run(time.Hour, VolumeInput{})

	requireAccepted(t, o)
	require.NoError(t, abort.err)
	assert.Equal(t, o.op.OperationID, abort.op.OperationID)
	require.Nil(t, after.Active, "released within the same minute")
	last := after.Recent[len(after.Recent)-1]
	assert.Equal(t, StatusAborted, last.Status)
	assert.Equal(t, ErrAborted, last.Error.Type)
	assert.Equal(t, StatusFailed, findItem(after.Backups, o.op.ItemID).Status)
	h.env.AssertActivityCalled(t, activities.AbandonBackupName, mock.Anything,
		activities.BackupRef{VolumeID: "vol1", BackupID: o.op.ItemID, Storage: "local"})
	h.env.AssertActivityCalled(t, activities.DeleteSnapshotName, mock.Anything, activities.SnapshotRef{
		VolumeID: "vol1", Volume: testSpec().Storage, SnapshotID: "holdfast-backup-" + o.op.ItemID})
	requireRejected(t, idleAbort, ErrNoActiveOperation, "No operation is running on volume vol1.")
}

func TestActivityFailureCompensates(t *testing.T) {
	h := newHarness(t)
	h.env.OnActivity(activities.UploadBackupName, mock.Anything, mock.Anything).
		Return(activities.UploadBackupResult{}, temporal.NewNonRetryableApplicationError(
			"snapshot vanished", activities.ErrNotFound, nil)).Once()
	h.mockHypervisor()
	var o *reply
	var st VolumeState
	h.at(time.Second, func() { h.register(testSpec()) })
	h.at(2*time.Second, func() { o = h.request(OperationRequest{Kind: KindBackup, Name: "b"}) })
	h.at(time.Minute, func() { st = h.state() })
	h.run(time.Hour, VolumeInput{})

	requireAccepted(t, o)
	bk := findItem(st.Backups, o.op.ItemID)
	assert.Equal(t, StatusFailed, bk.Status)
	assert.Equal(t, "snapshot vanished", bk.Error)
	assert.Equal(t, 0, countLive(st.Backups), "a failed backup does not count against the cap")
	h.env.AssertActivityCalled(t, activities.AbandonBackupName, mock.Anything,
		activities.BackupRef{VolumeID: "vol1", BackupID: o.op.ItemID, Storage: "local"})
	h.env.AssertActivityCalled(t, activities.DeleteSnapshotName, mock.Anything, activities.SnapshotRef{
		VolumeID: "vol1", Volume: testSpec().Storage, SnapshotID: "holdfast-backup-" + o.op.ItemID})
	assert.Nil(t, st.Active)
}

func TestRestoreToNewVolumeRegistersItAndCleansUpOnFailure(t *testing.T) {
	h := newHarness(t)
	h.env.OnActivity(activities.RestoreBackupName, mock.Anything, mock.MatchedBy(func(in activities.RestoreBackupInput) bool {
		return in.TargetVolumeID == "broken"
	})).Return(activities.RestoreResult{}, temporal.NewNonRetryableApplicationError("disk full", activities.ErrInvalidArgument, nil)).Once()
	h.mockHypervisor()
	spec := testSpec()
	spec.Cooldown = 0
	nv := spec
	nv.VolumeID, nv.Name, nv.HypervisorID, nv.Storage = "copy", "copy", "hv2",
		activities.VolumeRef{Type: "rbd", Pool: "rbd", Image: "copy"}
	broken := nv
	broken.VolumeID = "broken"
	var bk, ok, fail *reply
	h.at(time.Second, func() { h.register(spec) })
	h.at(2*time.Second, func() { bk = h.request(OperationRequest{Kind: KindBackup}) })
	h.at(3*time.Second, func() {
		ok = h.request(OperationRequest{Kind: KindRestore, BackupID: bk.op.ItemID, Mode: ModeNewVolume, NewVolume: &nv})
	})
	h.at(4*time.Second, func() {
		fail = h.request(OperationRequest{Kind: KindRestore, BackupID: bk.op.ItemID, Mode: ModeNewVolume, NewVolume: &broken})
	})
	h.run(time.Hour, VolumeInput{})

	requireAccepted(t, ok)
	requireAccepted(t, fail)
	// Cross-hypervisor, cross-storage: the restore ran on the target's queue with Create set.
	h.env.AssertActivityCalled(t, activities.RestoreBackupName, mock.Anything, activities.RestoreBackupInput{
		SourceVolumeID: "vol1", BackupID: bk.op.ItemID, Storage: "local", TargetVolumeID: "copy",
		Target: nv.Storage, Create: true})
	h.env.AssertActivityCalled(t, activities.DeleteVolumeName, mock.Anything,
		activities.DeleteVolumeInput{VolumeID: "broken", Volume: broken.Storage})
	h.env.AssertActivityNotCalled(t, activities.DeleteVolumeName, mock.Anything,
		activities.DeleteVolumeInput{VolumeID: "copy", Volume: nv.Storage})
	// The failed restore gives its new volume's ID and location back; the one that succeeded keeps them.
	h.env.AssertActivityCalled(t, ReleasePlacementActivity, mock.Anything, ReleasePlacementInput{
		OperationID: fail.op.OperationID, VolumeID: "broken", HypervisorID: "hv2", Storage: broken.Storage})
	h.env.AssertActivityNotCalled(t, ReleasePlacementActivity, mock.Anything, ReleasePlacementInput{
		OperationID: ok.op.OperationID, VolumeID: "copy", HypervisorID: "hv2", Storage: nv.Storage})
	assert.Equal(t, "copy", ok.op.NewVolumeID, "the operation names the volume it creates")
}

// A volume ID reserved by a restore is registered by that restore only: a second restore, the panel, or a
// restore that did not reserve it are all refused at once, and after registration it cannot be reserved again.
func TestReservedVolumeIDIsRegisteredOnlyByItsRestore(t *testing.T) {
	h := newHarness(t)
	created := func(by string) VolumeSpec {
		s := testSpec()
		s.Storage.CreatedBy = by
		return s
	}
	var first, second, panel, stranger, own, again, reserveAfter *reply
	h.at(time.Second, func() { first = h.update(UpdateReserve, Reservation{OperationID: "op-a"}) })
	h.at(2*time.Second, func() {
		second = h.update(UpdateReserve, Reservation{OperationID: "op-b"})
		panel = h.update(UpdateRegister, testSpec())
		stranger = h.update(UpdateRegister, created("op-b"))
	})
	h.at(3*time.Second, func() { own = h.update(UpdateRegister, created("op-a")) })
	h.at(4*time.Second, func() {
		again = h.update(UpdateRegister, created("op-a"))
		reserveAfter = h.update(UpdateReserve, Reservation{OperationID: "op-c"})
	})
	h.run(time.Hour, VolumeInput{VolumeID: "vol1"})
	require.NoError(t, first.err)
	requireRejected(t, second, ErrInvalidArgument, "new_volume_id: volume vol1 is being created by another restore")
	requireRejected(t, panel, ErrInvalidArgument, "volume_id: volume vol1 is being created by a restore")
	requireRejected(t, stranger, ErrInvalidArgument, "volume_id: volume vol1 was not reserved by operation op-b")
	require.NoError(t, own.err)
	require.NoError(t, again.err, "a retried registration by the same restore is idempotent")
	requireRejected(t, reserveAfter, ErrInvalidArgument, "new_volume_id: volume vol1 already exists")
	st := h.state()
	assert.True(t, st.Registered)
	assert.Empty(t, st.Reservation)
}

// An ID given back by a failed restore is free again, for anyone.
func TestUnreservedVolumeIDIsFreeAgain(t *testing.T) {
	h := newHarness(t)
	var stale, panel *reply
	h.at(time.Second, func() { h.update(UpdateReserve, Reservation{OperationID: "op-a"}) })
	h.at(2*time.Second, func() {
		stale = h.update(UpdateUnreserve, Reservation{OperationID: "op-other"})
		h.update(UpdateUnreserve, Reservation{OperationID: "op-a"})
	})
	h.at(3*time.Second, func() { panel = h.update(UpdateRegister, testSpec()) })
	h.run(time.Hour, VolumeInput{VolumeID: "vol1"})
	require.NoError(t, stale.err)
	require.NoError(t, panel.err)
}

func TestPermitIsClaimedOnAcceptAndReleasedOnCompletion(t *testing.T) {
	h := newHarness(t)
	h.env.OnSignalExternalWorkflow(mock.Anything, OwnerWorkflowID("acct-42"), "", SignalClaim,
		ClaimSignal{LeaseID: "lease-1", VolumeID: "vol1", TTL: 3 * time.Hour}).Return(nil).Once()
	h.env.OnSignalExternalWorkflow(mock.Anything, OwnerWorkflowID("acct-42"), "", SignalRelease,
		ReleaseSignal{LeaseID: "lease-1"}).Return(nil).Once()
	h.mockHypervisor()
	var o *reply
	h.at(time.Second, func() { h.register(testSpec()) })
	h.at(2*time.Second, func() { o = h.request(OperationRequest{Kind: KindSnapshot, OwnerLease: "lease-1"}) })
	h.run(time.Hour, VolumeInput{})
	requireAccepted(t, o)
	h.env.AssertExpectations(t)
}

// An abort that lands while the request is still claiming its permit: the release must reach the owner
// after the claim (two signals in flight may arrive in either order, and a late claim re-adds the lease for
// hours), and the operation is listed in the volume's SearchOperations. (The abort of a request whose child
// never started is TestIntegrationOperationAbortedBeforeItStartedIsFound.)
func TestAbortWhileClaimingReleasesThePermitAfterTheClaim(t *testing.T) {
	h := newHarness(t)
	const claimTakes = 10 * time.Second
	// Run fires when a mock returns: after After's delay, i.e. when the signal is delivered.
	var claimDelivered, releaseSent time.Time
	h.env.OnSignalExternalWorkflow(mock.Anything, OwnerWorkflowID("acct-42"), "", SignalClaim, mock.Anything).
		Run(func(mock.Arguments) { claimDelivered = h.env.Now() }).After(claimTakes).Return(nil).Once()
	h.env.OnSignalExternalWorkflow(mock.Anything, OwnerWorkflowID("acct-42"), "", SignalRelease,
		ReleaseSignal{LeaseID: "op-queued"}).Run(func(mock.Arguments) { releaseSent = h.env.Now() }).Return(nil).Once()
	var indexed [][]string
	h.env.OnUpsertTypedSearchAttributes(mock.Anything).Run(func(args mock.Arguments) {
		if ids, ok := args.Get(0).(temporal.SearchAttributes).GetKeywordList(saOperations); ok {
			indexed = append(indexed, ids)
		}
	}).Return(nil).Maybe()
	h.mockHypervisor()
	var o, abort *reply
	h.at(time.Second, func() { h.register(testSpec()) })
	h.at(2*time.Second, func() {
		// A lease acquired by a client of an earlier version, claimed by the volume.
		o = h.request(OperationRequest{Kind: KindSnapshot, OperationID: "op-queued", OwnerLease: "op-queued"})
		abort = h.update(UpdateAbort, "changed my mind")
	})
	h.run(time.Hour, VolumeInput{})

	requireAccepted(t, o)
	require.True(t, abort.done)
	require.NoError(t, abort.err)
	h.env.AssertExpectations(t)
	require.False(t, claimDelivered.IsZero())
	assert.False(t, releaseSent.Before(claimDelivered),
		"release sent at %s, before the claim was delivered at %s", releaseSent, claimDelivered)
	st := h.state()
	require.Len(t, st.Recent, 1)
	assert.Equal(t, StatusAborted, st.Recent[0].Status)
	require.NotEmpty(t, indexed, "SearchOperations never upserted")
	assert.Equal(t, []string{"op-queued"}, indexed[len(indexed)-1])
}

func TestInvalidRequestsNameTheField(t *testing.T) {
	h := newHarness(t)
	h.mockHypervisor()
	var badMode, both, missing, badSpec *reply
	h.at(time.Second, func() { h.register(testSpec()) })
	h.at(2*time.Second, func() {
		badMode = h.request(OperationRequest{Kind: KindRestore, SnapshotID: "s", Mode: "sideways"})
		both = h.request(OperationRequest{Kind: KindDelete, SnapshotID: "s", BackupID: "b"})
		missing = h.request(OperationRequest{Kind: KindDelete, SnapshotID: "nope", Confirm: "x"})
		bad := testSpec()
		bad.Storage.Path = "relative.qcow2"
		badSpec = h.update(UpdateRegister, bad)
	})
	h.run(time.Hour, VolumeInput{})
	requireRejected(t, badMode, ErrInvalidArgument, "")
	assert.Contains(t, badMode.err.Error(), "mode")
	requireRejected(t, both, ErrInvalidArgument, "snapshot_id: give exactly one of snapshot_id and backup_id")
	requireRejected(t, missing, ErrNotFound, "Snapshot nope not found on volume vol1.")
	requireRejected(t, badSpec, ErrInvalidArgument, "storage.path: must be a clean absolute path")
}

func TestOperationMetricsAreEmitted(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := newHarness(t, func(s *testsuite.WorkflowTestSuite) { s.SetMetricsHandler(metrics.NewSDKHandler(reg)) })
	h.env.OnActivity(activities.UploadBackupName, mock.Anything, mock.Anything).After(time.Hour).
		Return(activities.UploadBackupResult{}, nil).Once()
	h.mockHypervisor()
	spec := testSpec()
	spec.Cooldown = 0
	h.at(time.Second, func() { h.register(spec) })
	h.at(2*time.Second, func() { h.request(OperationRequest{Kind: KindSnapshot}) })
	h.at(3*time.Second, func() { h.request(OperationRequest{Kind: KindBackup}) })
	h.at(4*time.Second, func() { h.update(UpdateAbort, "test") })
	h.at(5*time.Second, func() { h.request(OperationRequest{Kind: KindBackup}) })
	h.run(2*time.Hour, VolumeInput{})

	want := `
# HELP holdfast_operations_finished_total Operations finished, by kind and result (completed, failed, aborted).
# TYPE holdfast_operations_finished_total counter
holdfast_operations_finished_total{kind="backup",result="aborted"} 1
holdfast_operations_finished_total{kind="backup",result="completed"} 1
holdfast_operations_finished_total{kind="snapshot",result="completed"} 1
`
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(want), "holdfast_operations_finished_total"))
	inFlight := `
# HELP holdfast_owner_operations_in_flight Operations running per owner, as this worker saw them start. Sum across workers; never negative (an end this worker did not see start is not counted).
# TYPE holdfast_owner_operations_in_flight gauge
holdfast_owner_operations_in_flight{owner="acct-42"} 0
`
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(inFlight), "holdfast_owner_operations_in_flight"))
}

// An aborted operation whose host is down ends at once (its lock goes), and the cleanup no agent took waits
// for the host in a CleanupWorkflow, which removes what was left when an agent takes it. Likewise a cleanup
// that kept failing retryably (its store down) until its time ran out.
func TestCompensationNoAgentTookRunsWhenTheHostIsBack(t *testing.T) {
	h := newHarness(t)
	h.env.OnActivity(activities.UploadBackupName, mock.Anything, mock.Anything).
		Return(activities.UploadBackupResult{}, temporal.NewNonRetryableApplicationError("disk gone", "Boom", nil)).Once()
	var attempts []time.Time
	h.env.OnActivity(activities.DeleteSnapshotName, mock.Anything, mock.Anything).Return(
		func(ctx context.Context, ref activities.SnapshotRef) error {
			attempts = append(attempts, h.env.Now())
			if len(attempts) == 1 {
				return temporal.NewTimeoutError(enumspb.TIMEOUT_TYPE_SCHEDULE_TO_START, nil)
			}
			return nil
		}).Times(2)
	h.mockHypervisor()
	var o *reply
	var st VolumeState
	h.at(time.Second, func() { h.register(testSpec()) })
	h.at(2*time.Second, func() { o = h.request(OperationRequest{Kind: KindBackup}) })
	h.at(10*time.Minute, func() { st = h.state() })
	h.run(time.Hour, VolumeInput{})
	requireAccepted(t, o)
	require.Nil(t, st.Active, "the operation ended without waiting for the host")
	last := st.Recent[len(st.Recent)-1]
	assert.Contains(t, last.Error.Message, "it runs when its host or store is back (cleanup/operation/"+o.op.OperationID+"/")
	require.Len(t, attempts, 2, "the deferred cleanup ran the step again")
}

func TestCompensationFailingRetryablyRunsWhenTheStoreIsBack(t *testing.T) {
	h := newHarness(t)
	h.env.OnActivity(activities.UploadBackupName, mock.Anything, mock.Anything).
		Return(activities.UploadBackupResult{}, temporal.NewNonRetryableApplicationError("store gone", "Boom", nil)).Once()
	storeUp := false
	var attempts int
	var doneAt time.Time
	h.env.OnActivity(activities.AbandonBackupName, mock.Anything, mock.Anything).Return(
		func(ctx context.Context, ref activities.BackupRef) error {
			attempts++
			if !storeUp {
				return temporal.NewApplicationError("s3 put: connection refused", "")
			}
			doneAt = h.env.Now()
			return nil
		})
	h.mockHypervisor()
	var o *reply
	var st VolumeState
	h.at(time.Second, func() { h.register(testSpec()) })
	h.at(2*time.Second, func() { o = h.request(OperationRequest{Kind: KindBackup}) })
	h.at(3*time.Minute, func() { st = h.state(); storeUp = true })
	h.run(2*time.Hour, VolumeInput{})
	requireAccepted(t, o)
	require.Nil(t, st.Active, "the operation ended while its store was down")
	last := st.Recent[len(st.Recent)-1]
	assert.Contains(t, last.Error.Message, "it runs when its host or store is back (cleanup/operation/"+o.op.OperationID+"/")
	assert.Greater(t, attempts, 1)
	require.False(t, doneAt.IsZero(), "the deferred cleanup removed the backup once the store was back")
}

// A reservation whose restore never started (its request lost after the ID was reserved) lapses at its TTL
// instead of holding the ID for good.
func TestReservationLapses(t *testing.T) {
	h := newHarness(t)
	var early, late *reply
	h.at(time.Second, func() { h.update(UpdateReserve, Reservation{OperationID: "op-lost", TTL: 3 * time.Hour}) })
	h.at(2*time.Hour, func() { early = h.update(UpdateRegister, testSpec()) })
	h.at(4*time.Hour, func() { late = h.update(UpdateRegister, testSpec()) })
	h.run(5*time.Hour, VolumeInput{VolumeID: "vol1"})
	requireRejected(t, early, ErrInvalidArgument, "volume_id: volume vol1 is being created by a restore")
	require.NoError(t, late.err, "the lapsed reservation no longer holds the ID")
}

// The volume checks a request before it asks the owner for a permit: at the owner's limit, a request the volume
// would refuse anyway names its own cause and never asks; one it would take is refused OwnerLimit, and takes
// neither the lock nor an item.
func TestVolumeChecksBeforeItAsksForThePermit(t *testing.T) {
	h := newHarness(t)
	h.ownerBusy = 3
	h.mockHypervisor()
	var missing, mismatch, limited *reply
	h.at(time.Second, func() { h.register(testSpec()) })
	h.at(2*time.Second, func() {
		missing = h.request(OperationRequest{Kind: KindRestore, SnapshotID: "snap-nope", Mode: ModeInPlace, Confirm: "web-data"})
		mismatch = h.request(OperationRequest{Kind: KindDeregister, Confirm: "not-its-name"})
	})
	h.at(3*time.Second, func() { limited = h.request(OperationRequest{Kind: KindSnapshot}) })
	h.run(time.Hour, VolumeInput{})

	requireRejected(t, missing, ErrNotFound, "")
	requireRejected(t, mismatch, ErrConfirmationMismatch, "")
	requireRejected(t, limited, ErrOwnerLimit,
		"Too many operations in flight for this account (limit 3). Try again when one finishes.")
	require.Len(t, h.permitRequests, 1, "only the request the volume would take asks for a permit")
	assert.Equal(t, AcquirePermitInput{OwnerID: "acct-42", Request: PermitRequest{LeaseID: h.permitRequests[0].Request.LeaseID,
		VolumeID: "vol1", Limit: 3, TTL: 3 * time.Hour}}, h.permitRequests[0])
	st := h.state()
	assert.Nil(t, st.Active)
	assert.Empty(t, st.Snapshots)
}

// While a request waits for its permit the volume is locked (VolumeBusy); a granted permit is released when
// the operation ends, under the operation's ID.
func TestVolumeHoldsItsLockWhileAskingAndReleasesThePermit(t *testing.T) {
	h := newHarness(t)
	h.ownerAnswersAfter(5*time.Second, true)
	h.expectRelease("op-first")
	h.mockHypervisor()
	var first, second *reply
	h.at(time.Second, func() { h.register(testSpec()) })
	h.at(2*time.Second, func() { first = h.request(OperationRequest{Kind: KindSnapshot, OperationID: "op-first"}) })
	h.at(4*time.Second, func() { second = h.request(OperationRequest{Kind: KindBackup}) })
	h.run(time.Hour, VolumeInput{})
	requireAccepted(t, first)
	requireRejected(t, second, ErrVolumeBusy, "")
	h.env.AssertExpectations(t)
	st := h.state()
	require.Len(t, st.Snapshots, 1)
	assert.Equal(t, StatusAvailable, st.Snapshots[0].Status)
}

// An owner that does not answer: the request is answered Unavailable within permitTimeout, the lock comes
// back, and the permit (should it be granted late) is given back.
func TestVolumeGivesUpOnASilentOwner(t *testing.T) {
	h := newHarness(t)
	h.ownerSilent = true
	h.expectRelease("op-lost")
	h.mockHypervisor()
	var o *reply
	var during VolumeState
	var answered bool
	h.at(time.Second, func() { h.register(testSpec()) })
	h.at(2*time.Second, func() { o = h.request(OperationRequest{Kind: KindSnapshot, OperationID: "op-lost"}) })
	h.at(10*time.Second, func() { during = h.state() })
	h.at(2*time.Second+permitTimeout+time.Second, func() { answered = o.done })
	h.run(time.Hour, VolumeInput{})
	requireRejected(t, o, ErrUnavailable, UnavailableMessage)
	require.NotNil(t, during.Active, "locked while asking")
	h.env.AssertExpectations(t)
	assert.True(t, answered, "answered within permitTimeout")
	st := h.state()
	assert.Nil(t, st.Active)
	assert.Empty(t, st.Snapshots)
}

// An abort that lands while the request waits for its permit is answered once the permit is: granted, the
// operation is accepted and ends at once as aborted, as an abort of a queued request does, and the permit is
// given back; refused, there was nothing to abort (NoActiveOperation), never a 202 naming an operation that
// never existed.
func TestAbortWhileAskingForThePermit(t *testing.T) {
	h := newHarness(t)
	h.ownerAnswersAfter(5*time.Second, true)
	h.expectRelease("op-x")
	h.mockHypervisor()
	var o, abort *reply
	h.at(time.Second, func() { h.register(testSpec()) })
	h.at(2*time.Second, func() { o = h.request(OperationRequest{Kind: KindSnapshot, OperationID: "op-x"}) })
	h.at(3*time.Second, func() { abort = h.update(UpdateAbort, "changed my mind") })
	h.run(time.Hour, VolumeInput{})
	require.True(t, abort.done)
	require.NoError(t, abort.err)
	requireAccepted(t, o)
	assert.Equal(t, "op-x", abort.op.OperationID)
	h.env.AssertExpectations(t)
	st := h.state()
	assert.Nil(t, st.Active)
	require.Len(t, st.Recent, 1)
	assert.Equal(t, "op-x", st.Recent[0].OperationID)
	assert.Equal(t, StatusAborted, st.Recent[0].Status)
	for _, it := range st.Snapshots {
		assert.NotEqual(t, StatusAvailable, it.Status, "an aborted snapshot is not available")
	}
}

func TestAbortWhileAskingForAPermitThatIsRefused(t *testing.T) {
	h := newHarness(t)
	h.ownerAnswersAfter(5*time.Second, false)
	h.mockHypervisor()
	var o, abort *reply
	h.at(time.Second, func() { h.register(testSpec()) })
	h.at(2*time.Second, func() { o = h.request(OperationRequest{Kind: KindSnapshot, OperationID: "op-x"}) })
	h.at(3*time.Second, func() { abort = h.update(UpdateAbort, "changed my mind") })
	h.run(time.Hour, VolumeInput{})
	requireRejected(t, o, ErrOwnerLimit, "")
	requireRejected(t, abort, ErrNoActiveOperation, "")
	st := h.state()
	assert.Nil(t, st.Active)
	assert.Empty(t, st.Recent)
}

// Precheck gives, from a queried state, the answer the validator would: in the validator's order, and nil
// for a request only the rest of the checks (or the permit) can decide.
func TestPrecheckAnswersAsTheValidator(t *testing.T) {
	spec := testSpec()
	st := VolumeState{Registered: true, Spec: spec,
		Snapshots: []Item{{ItemID: "snap-1", Name: "s1", Status: StatusAvailable}}}
	busy := st
	busy.Active = &Operation{OperationID: "op-running", Kind: KindBackup}
	typeOf := func(err error) string {
		if err == nil {
			return ""
		}
		typ, _ := errType(t, err)
		return typ
	}
	for _, c := range []struct {
		name string
		st   VolumeState
		req  OperationRequest
		want string
	}{
		{"unregistered", VolumeState{}, OperationRequest{OperationID: "op1", Kind: KindSnapshot}, ErrNotFound},
		{"bad operation id", st, OperationRequest{OperationID: "../x", Kind: KindSnapshot}, ErrInvalidArgument},
		{"missing snapshot", busy, OperationRequest{OperationID: "op1", Kind: KindRestore, SnapshotID: "snap-9",
			Mode: ModeInPlace, Confirm: spec.Name}, ErrNotFound},
		{"wrong confirmation before busy", busy, OperationRequest{OperationID: "op1", Kind: KindDelete,
			SnapshotID: "snap-1", Confirm: "nope"}, ErrConfirmationMismatch},
		{"busy", busy, OperationRequest{OperationID: "op1", Kind: KindSnapshot}, ErrVolumeBusy},
		{"idle: for the validator", st, OperationRequest{OperationID: "op1", Kind: KindSnapshot}, ""},
	} {
		assert.Equal(t, c.want, typeOf(Precheck(c.st, spec.VolumeID, c.req)), c.name)
	}
}
