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

func TestDeregisterDeletesWhatHoldfastMadeAndFreesTheID(t *testing.T) {
	h := newHarness(t)
	h.mockHypervisor()
	spec := testSpec()
	spec.Cooldown = time.Minute
	var snap, bk, wrong, busy, dereg, again *reply
	h.at(time.Second, func() { h.register(spec) })
	h.at(2*time.Second, func() { snap = h.request(OperationRequest{Kind: KindSnapshot}) })
	h.at(3*time.Minute, func() {
		bk = h.request(OperationRequest{Kind: KindBackup})
		busy = h.request(OperationRequest{Kind: KindDeregister, Confirm: spec.Name})
	})
	h.at(4*time.Minute+10*time.Second, func() { // in the backup's cooldown: a deregistration does not wait
		wrong = h.request(OperationRequest{Kind: KindDeregister, Confirm: "nope"})
		dereg = h.request(OperationRequest{Kind: KindDeregister, Confirm: spec.Name})
	})
	h.at(time.Hour, func() {
		other := testSpec()
		other.OwnerID = "someone-else"
		again = h.update(UpdateRegister, other)
	})
	h.run(2*time.Hour, VolumeInput{})

	requireAccepted(t, snap)
	requireAccepted(t, bk)
	requireRejected(t, busy, ErrVolumeBusy, "")
	requireRejected(t, wrong, ErrConfirmationMismatch, "")
	requireAccepted(t, dereg)
	h.env.AssertActivityCalled(t, activities.DeleteSnapshotName, mock.Anything,
		activities.SnapshotRef{VolumeID: "vol1", Volume: spec.Storage, SnapshotID: snap.op.ItemID})
	h.env.AssertActivityCalled(t, activities.DeleteBackupName, mock.Anything,
		activities.BackupRef{VolumeID: "vol1", BackupID: bk.op.ItemID, Storage: "local"})
	h.env.AssertActivityCalled(t, ReleasePlacementActivity, mock.Anything, ReleasePlacementInput{
		OperationID: dereg.op.OperationID, VolumeID: "vol1", HypervisorID: spec.HypervisorID, Storage: spec.Storage})
	h.env.AssertActivityNotCalled(t, activities.DeleteVolumeName, mock.Anything, mock.Anything)
	require.NoError(t, again.err, "a deregistered ID without kept backups is free")
	st := h.state()
	assert.Empty(t, st.Snapshots, "nothing of the old volume comes with the new registration")
	assert.Empty(t, st.Backups)
	assert.Equal(t, "someone-else", st.Spec.OwnerID)
}

func TestDeregisterKeepsBackupsForTheirOwnerThenDeletesThem(t *testing.T) {
	for _, comesBack := range []bool{false, true} {
		h := newHarness(t)
		h.mockHypervisor()
		spec := testSpec()
		spec.Cooldown = 0
		var bk, dereg, stranger, owner *reply
		h.at(time.Second, func() { h.register(spec) })
		h.at(2*time.Second, func() { bk = h.request(OperationRequest{Kind: KindBackup}) })
		h.at(time.Minute, func() {
			dereg = h.request(OperationRequest{Kind: KindDeregister, Confirm: spec.Name, KeepBackupsFor: 24 * time.Hour})
		})
		h.at(2*time.Hour, func() {
			other := testSpec()
			other.OwnerID = "someone-else"
			stranger = h.update(UpdateRegister, other)
			if comesBack {
				owner = h.update(UpdateRegister, spec)
			}
		})
		h.run(48*time.Hour, VolumeInput{})

		requireAccepted(t, bk)
		requireAccepted(t, dereg)
		requireRejected(t, stranger, ErrInvalidArgument, "")
		assert.Contains(t, stranger.err.Error(), "its backups are kept for its owner until")
		st := h.state()
		if comesBack {
			require.NoError(t, owner.err)
			require.Len(t, st.Backups, 1, "its owner registered it again and got its backups back")
			assert.Nil(t, st.BackupsKeptUntil)
			h.env.AssertActivityNotCalled(t, activities.DeleteBackupName, mock.Anything, mock.Anything)
			continue
		}
		assert.False(t, st.Registered)
		assert.Empty(t, st.Backups, "deleted when the period ended")
		assert.Nil(t, st.BackupsKeptUntil)
		h.env.AssertActivityCalled(t, activities.DeleteBackupName, mock.Anything,
			activities.BackupRef{VolumeID: "vol1", BackupID: bk.op.ItemID, Storage: "local"})
	}
}

func TestDeregisterToleratesADiskAlreadyGone(t *testing.T) {
	h := newHarness(t)
	h.env.OnActivity(activities.DeleteSnapshotName, mock.Anything, mock.Anything).
		Return(tNotFound()).Once()
	h.mockHypervisor()
	spec := testSpec()
	spec.Cooldown = 0
	var dereg *reply
	h.at(time.Second, func() { h.register(spec) })
	h.at(2*time.Second, func() { h.request(OperationRequest{Kind: KindSnapshot}) })
	h.at(time.Minute, func() { dereg = h.request(OperationRequest{Kind: KindDeregister, Confirm: spec.Name}) })
	h.run(time.Hour, VolumeInput{})
	requireAccepted(t, dereg)
	st := h.state()
	assert.False(t, st.Registered)
	require.NotEmpty(t, st.Recent)
	assert.Equal(t, StatusCompleted, st.Recent[len(st.Recent)-1].Status)
}

func tNotFound() error {
	return temporal.NewNonRetryableApplicationError("volume file:/gone: not found", activities.ErrNotFound, nil)
}
