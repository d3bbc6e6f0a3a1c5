package workflows

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"

	"github.com/holdfast/holdfast/activities"
)

// snapshotLog records the snapshots the hypervisor was asked to delete, and the uploads it was asked for.
type snapshotLog struct {
	mu      sync.Mutex
	deleted []string
	uploads []activities.UploadBackupInput
}

func (l *snapshotLog) mock(h *harness) {
	h.env.OnActivity(activities.DeleteSnapshotName, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.SnapshotRef) error {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.deleted = append(l.deleted, in.SnapshotID)
			return nil
		})
	// The agent on a volume that tracks changes: the snapshot is kept; an upload named "fails" fails.
	h.env.OnActivity(activities.UploadBackupName, mock.Anything, mock.Anything).Return(
		func(_ context.Context, in activities.UploadBackupInput) (activities.UploadBackupResult, error) {
			l.mu.Lock()
			l.uploads = append(l.uploads, in)
			l.mu.Unlock()
			if in.Labels[activities.LabelItemName] == "fails" {
				return activities.UploadBackupResult{}, temporal.NewNonRetryableApplicationError("store down", "Internal", nil)
			}
			res := activities.UploadBackupResult{SizeBytes: 1 << 30, StoredBytes: 1 << 20, ReadBytes: 1 << 30,
				FullReadReason: in.FullReadReason, KeepSnapshot: true}
			if in.BaseSnapshotID != "" {
				res.ReadBytes, res.Incremental = 8<<20, true
			}
			return res, nil
		})
}

func (l *snapshotLog) take() ([]string, []activities.UploadBackupInput) {
	l.mu.Lock()
	defer l.mu.Unlock()
	d, u := l.deleted, l.uploads
	l.deleted, l.uploads = nil, nil
	return d, u
}

// A backup keeps the snapshot it was read from as the next backup's base (the volume's BackupBase, never an
// item); the next backup diffs against it and drops it once it kept its own. A restore in place makes the
// base stale (the next backup reads everything, and says why); a failed backup keeps the old base and drops
// its own snapshot; a deregistration deletes the base.
func TestBackupsKeepTheirSnapshotAsTheNextOnesBase(t *testing.T) {
	h := newHarness(t)
	l := &snapshotLog{}
	l.mock(h)
	h.mockHypervisor()
	spec := testSpec()
	tmp := func(itemID string) string { return "holdfast-backup-" + itemID }
	var b1, b2, restore, b3, b4, dereg *reply
	var st1, st2, st3, st4, st5, st6 VolumeState
	var del1, del2, del3, del4, del5, del6 []string
	var up1, up2, up3 []activities.UploadBackupInput
	h.at(time.Second, func() { h.register(spec) })
	h.at(2*time.Second, func() { b1 = h.request(OperationRequest{Kind: KindBackup, Name: "monday"}) })
	h.at(10*time.Minute, func() {
		st1 = h.state()
		del1, up1 = l.take()
		b2 = h.request(OperationRequest{Kind: KindBackup, Name: "tuesday"})
	})
	h.at(20*time.Minute, func() {
		st2 = h.state()
		del2, up2 = l.take()
		restore = h.request(OperationRequest{Kind: KindRestore, BackupID: b2.op.ItemID, Mode: ModeInPlace, Confirm: spec.Name})
	})
	h.at(30*time.Minute, func() {
		st3 = h.state()
		del3, _ = l.take()
		b3 = h.request(OperationRequest{Kind: KindBackup, Name: "wednesday"})
	})
	h.at(40*time.Minute, func() {
		st4 = h.state()
		del4, up3 = l.take()
		b4 = h.request(OperationRequest{Kind: KindBackup, Name: "fails"})
	})
	h.at(50*time.Minute, func() {
		st5 = h.state()
		del5, _ = l.take()
		dereg = h.request(OperationRequest{Kind: KindDeregister, Confirm: spec.Name})
	})
	h.at(60*time.Minute, func() {
		st6 = h.state()
		del6, _ = l.take()
	})
	h.run(2*time.Hour, VolumeInput{})
	for _, r := range []*reply{b1, b2, restore, b3, b4, dereg} {
		requireAccepted(t, r)
	}

	// The first backup: nothing to diff against; its snapshot is kept, not deleted, and not an item.
	require.Len(t, up1, 1)
	assert.Empty(t, up1[0].BaseSnapshotID)
	assert.Equal(t, "first backup", up1[0].FullReadReason)
	assert.Empty(t, del1, "the first backup's snapshot is kept")
	require.NotNil(t, st1.Base)
	assert.Equal(t, BackupBase{SnapshotID: tmp(b1.op.ItemID), BackupID: b1.op.ItemID, HypervisorID: "hv1",
		Volume: spec.Storage}, *st1.Base)
	assert.Empty(t, st1.Snapshots, "the base is not a snapshot the owner sees or pays for")
	assert.Equal(t, "first backup", findItem(st1.Backups, b1.op.ItemID).FullReadReason)

	// The second diffs against it, then drops it and keeps its own.
	require.Len(t, up2, 1)
	assert.Equal(t, tmp(b1.op.ItemID), up2[0].BaseSnapshotID)
	assert.Equal(t, b1.op.ItemID, up2[0].ParentBackupID)
	assert.Equal(t, []string{tmp(b1.op.ItemID)}, del2, "the old base goes, the new snapshot stays")
	assert.Equal(t, tmp(b2.op.ItemID), st2.Base.SnapshotID)
	second := findItem(st2.Backups, b2.op.ItemID)
	assert.True(t, second.Incremental)
	assert.Equal(t, int64(8<<20), second.ReadBytes)

	// A restore in place: the base stays (still to be deleted) but is stale.
	assert.NotContains(t, del3, tmp(b2.op.ItemID), "only the restore's safety snapshot goes")
	require.NotNil(t, st3.Base)
	assert.Equal(t, "restored in place", st3.Base.Stale)

	// So the next backup reads everything, says why, and drops the stale base.
	require.Len(t, up3, 1)
	assert.Empty(t, up3[0].BaseSnapshotID)
	assert.Equal(t, "restored in place", up3[0].FullReadReason)
	assert.Equal(t, []string{tmp(b2.op.ItemID)}, del4)
	assert.Equal(t, tmp(b3.op.ItemID), st4.Base.SnapshotID)
	assert.Empty(t, st4.Base.Stale)
	assert.Equal(t, "restored in place", findItem(st4.Backups, b3.op.ItemID).FullReadReason)

	// A failed backup removes its own snapshot and keeps the base.
	assert.Equal(t, []string{tmp(b4.op.ItemID)}, del5)
	assert.Equal(t, StatusFailed, findItem(st5.Backups, b4.op.ItemID).Status)
	require.NotNil(t, st5.Base)
	assert.Equal(t, tmp(b3.op.ItemID), st5.Base.SnapshotID)

	// A deregistration deletes the base.
	assert.Contains(t, del6, tmp(b3.op.ItemID))
	assert.Nil(t, st6.Base)
}

// The base is used only when it is the parent's snapshot, on the volume's hypervisor and storage.
func TestBaseForAcceptsOnlyTheParentsSnapshotWhereTheVolumeIs(t *testing.T) {
	spec := testSpec()
	base := &BackupBase{SnapshotID: "holdfast-backup-bk-1", BackupID: "bk-1", HypervisorID: "hv1", Volume: spec.Storage}
	moved := *base
	moved.HypervisorID = "hv2"
	stale := *base
	stale.Stale = "restored in place"
	for _, c := range []struct {
		name, parent string
		base         *BackupBase
		want, why    string
	}{
		{"first backup", "", nil, "", "first backup"},
		{"none kept", "bk-1", nil, "", "no base snapshot"},
		{"the parent's", "bk-1", base, "holdfast-backup-bk-1", ""},
		{"another backup's", "bk-2", base, "", "base is not of the previous backup"},
		{"on another hypervisor", "bk-1", &moved, "", "volume moved"},
		{"stale", "bk-1", &stale, "", "restored in place"},
	} {
		got, why := baseFor(OperationInput{Volume: spec, ParentID: c.parent, Base: c.base})
		assert.Equal(t, c.want, got, c.name)
		assert.Equal(t, c.why, why, c.name)
	}
}
