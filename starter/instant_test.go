package starter_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/starter"
	"github.com/holdfast/holdfast/starter/startertest"
	"github.com/holdfast/holdfast/workflows"
)

// instantCluster is a cluster whose agent backs up at once and holds hydrations at c.hv.Hydrate.
func instantCluster(t *testing.T) *cluster {
	c := newCluster(t)
	c.hv.Hydrate = startertest.NewGate()
	c.hv.Gate.Open()
	return c
}

// finished waits for an operation to end and returns it.
func (c *cluster) finished(t *testing.T, operationID string) *workflows.Operation {
	t.Helper()
	var op *workflows.Operation
	waitFor(t, "operation "+operationID+" ends", func() bool {
		var err error
		op, err = c.hf.Operation(context.Background(), operationID)
		return err == nil && op.FinishedAt != nil
	})
	return op
}

// backedUp registers volumeID and backs it up, returning the backup's ID.
func (c *cluster) backedUp(t *testing.T, volumeID string) string {
	t.Helper()
	c.register(t, volumeID, "acct-i")
	op, err := c.hf.Request(context.Background(), volumeID, workflows.OperationRequest{Kind: workflows.KindBackup})
	require.NoError(t, err)
	require.Equal(t, workflows.StatusAvailable, c.finished(t, op.OperationID).Status)
	return op.ItemID
}

// An instant restore through the control plane: the new volume is registered, marked hydrating, while the
// operation still runs (its progress phase "hydrating"), and refuses requests; once the hydration ends the
// operation completes and the volume is like any other.
func TestIntegrationInstantRestoreIsUsableWhileItHydrates(t *testing.T) {
	c := instantCluster(t)
	ctx := context.Background()
	backupID := c.backedUp(t, "src")
	op, err := c.hf.Restore(ctx, "src", starter.RestoreRequest{BackupID: backupID, Mode: workflows.ModeNewVolume,
		NewVolumeID: "inst", NewVolumeName: "inst", Instant: true})
	require.NoError(t, err)

	var v *starter.Volume
	waitFor(t, "the new volume registered while it hydrates", func() bool {
		v, err = c.hf.Volume(ctx, "inst")
		return err == nil
	})
	assert.Equal(t, op.OperationID, v.Spec.Hydrating)
	_, err = c.hf.Request(ctx, "inst", workflows.OperationRequest{Kind: workflows.KindSnapshot})
	assert.Equal(t, workflows.ErrVolumeBusy, typeOf(err), "a hydrating volume refuses requests")
	waitFor(t, "progress phase hydrating", func() bool {
		o, err := c.hf.Operation(ctx, op.OperationID)
		return err == nil && o.Progress != nil && o.Progress.Phase == "hydrating"
	})
	running, err := c.hf.Operation(ctx, op.OperationID)
	require.NoError(t, err)
	assert.Nil(t, running.FinishedAt, "the operation runs while the volume is in use")

	c.hv.Hydrate.Open()
	done := c.finished(t, op.OperationID)
	assert.Equal(t, workflows.StatusCompleted, done.Status)
	assert.Empty(t, done.InstantFallback)
	v, err = c.hf.Volume(ctx, "inst")
	require.NoError(t, err)
	assert.Empty(t, v.Spec.Hydrating)
	_, err = c.hf.Request(ctx, "inst", workflows.OperationRequest{Kind: workflows.KindSnapshot})
	require.NoError(t, err, "hydrated: like any volume")
	recordHistory(t, c.hf, workflows.OperationWorkflowID(op.OperationID), "restore-instant")
	recordHistory(t, c.hf, workflows.VolumeWorkflowID("inst"), "volume-hydrated")
}

// Aborting an instant restore while it hydrates unregisters the new volume and deletes it; its ID is free
// again. A target that cannot be restored instantly (raw) is restored in full, and the operation says why.
func TestIntegrationInstantRestoreAbortedAndFallback(t *testing.T) {
	c := instantCluster(t)
	ctx := context.Background()
	backupID := c.backedUp(t, "src")
	op, err := c.hf.Restore(ctx, "src", starter.RestoreRequest{BackupID: backupID, Mode: workflows.ModeNewVolume,
		NewVolumeID: "gone", NewVolumeName: "gone", Instant: true})
	require.NoError(t, err)
	waitFor(t, "the new volume registered", func() bool { _, err := c.hf.Volume(ctx, "gone"); return err == nil })
	_, err = c.hf.Abort(ctx, "src", "")
	require.NoError(t, err)
	assert.Equal(t, workflows.StatusAborted, c.finished(t, op.OperationID).Status)
	_, err = c.hf.Volume(ctx, "gone")
	assert.Equal(t, workflows.ErrNotFound, typeOf(err), "unregistered")
	_, deleted := c.hv.Deleted.Load("gone")
	assert.True(t, deleted, "deleted on its hypervisor")
	c.register(t, "gone", "acct-i") // the ID and location are free again

	raw := "/vols/raw-copy.raw"
	op, err = c.hf.Restore(ctx, "src", starter.RestoreRequest{BackupID: backupID, Mode: workflows.ModeNewVolume,
		NewVolumeID: "raw-copy", NewVolumeName: "raw-copy", Instant: true,
		Storage: &activities.VolumeRef{Type: activities.VolumeFile, Path: raw, Format: "raw"}})
	require.NoError(t, err)
	done := c.finished(t, op.OperationID)
	assert.Equal(t, workflows.StatusCompleted, done.Status, "%+v", done.Error)
	assert.Equal(t, "instant restore needs a qcow2 file volume or an RBD image; restored in full", done.InstantFallback)
	v, err := c.hf.Volume(ctx, "raw-copy")
	require.NoError(t, err)
	assert.Empty(t, v.Spec.Hydrating)
}
