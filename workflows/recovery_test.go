package workflows

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/holdfast/holdfast/activities"
)

// queueLog records which task queue each storage activity call went to.
type queueLog struct {
	mu    sync.Mutex
	calls []string
}

func (l *queueLog) add(ctx context.Context, what string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls = append(l.calls, activity.GetInfo(ctx).TaskQueue+" "+what)
}

func (l *queueLog) list() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.calls...)
}

func replicatedSpec(required bool) VolumeSpec {
	spec := testSpec()
	spec.BackupReplica, spec.RequireReplication, spec.Cooldown = "offsite", required, 0
	return spec
}

// mockStorage records deletes and collections on the storage queues.
func (h *harness) mockStorage(log *queueLog) {
	h.env.OnActivity(activities.DeleteBackupName, mock.Anything, mock.Anything).Return(
		func(ctx context.Context, ref activities.BackupRef) error {
			log.add(ctx, "delete "+ref.Storage+" "+ref.BackupID)
			return nil
		}).Maybe()
	h.env.OnActivity(activities.AbandonBackupName, mock.Anything, mock.Anything).Return(
		func(ctx context.Context, ref activities.BackupRef) error {
			log.add(ctx, "abandon "+ref.Storage+" "+ref.BackupID)
			return nil
		}).Maybe()
	h.env.OnActivity(activities.CollectGarbageName, mock.Anything, mock.Anything).Return(
		func(ctx context.Context, in activities.GCInput) (activities.GCResult, error) {
			log.add(ctx, "gc "+in.Storage+" "+in.VolumeID)
			return activities.GCResult{}, nil
		}).Maybe()
}

func TestBackupIsReplicatedAndDeleteRemovesBothCopies(t *testing.T) {
	h := newHarness(t)
	var log queueLog
	h.env.OnActivity(activities.ReplicateBackupName, mock.Anything, mock.Anything).Return(
		func(ctx context.Context, in activities.ReplicateInput) (activities.ReplicateResult, error) {
			log.add(ctx, "replicate "+in.From+" "+in.To+" "+in.BackupID)
			return activities.ReplicateResult{ChunksCopied: 3, BytesCopied: 12 << 20, Verified: true}, nil
		}).Once()
	h.mockStorage(&log)
	h.mockHypervisor()
	var b, del *reply
	var made, gone VolumeState
	h.at(time.Second, func() { h.register(replicatedSpec(true)) })
	h.at(2*time.Second, func() { b = h.request(OperationRequest{Kind: KindBackup, Name: "nightly"}) })
	h.at(time.Minute, func() {
		made = h.state()
		del = h.request(OperationRequest{Kind: KindDelete, BackupID: b.op.ItemID, Confirm: "nightly"})
	})
	h.at(2*time.Minute, func() { gone = h.state() })
	h.run(time.Hour, VolumeInput{})

	requireAccepted(t, b)
	requireAccepted(t, del)
	bk := findItem(made.Backups, b.op.ItemID)
	require.NotNil(t, bk)
	assert.Equal(t, StatusAvailable, bk.Status)
	require.NotNil(t, bk.Replica, "the backup records its replica")
	assert.Equal(t, "offsite", bk.Replica.Storage)
	assert.Equal(t, ReplicaReplicated, bk.Replica.Status)
	assert.Equal(t, int64(12<<20), bk.Replica.BytesCopied)
	assert.Nil(t, findItem(gone.Backups, b.op.ItemID))
	id := b.op.ItemID
	// Replication and deletion run on the storages' own queues (any agent with the storage), never on the
	// host that made the backup; the delete removes both copies, then collects each storage.
	assert.Equal(t, []string{
		"storage/local replicate local offsite " + id,
		"storage/local delete local " + id,
		"storage/offsite delete offsite " + id,
		"storage/local gc local vol1",
		"storage/offsite gc offsite vol1",
	}, log.list())
}

// backupWithFailingReplication runs one backup whose replication fails with msg, and returns the volume's
// state a minute later, the backup's id and the storage calls made.
func backupWithFailingReplication(t *testing.T, required bool, msg string) (VolumeState, string, []string) {
	h := newHarness(t)
	var log queueLog
	h.env.OnActivity(activities.ReplicateBackupName, mock.Anything, mock.Anything).Return(
		activities.ReplicateResult{}, temporal.NewNonRetryableApplicationError(msg, activities.ErrInvalidArgument, nil)).Once()
	h.mockStorage(&log)
	h.mockHypervisor()
	var b *reply
	var after VolumeState
	h.at(time.Second, func() { h.register(replicatedSpec(required)) })
	h.at(2*time.Second, func() { b = h.request(OperationRequest{Kind: KindBackup, Name: "nightly"}) })
	h.at(time.Minute, func() { after = h.state() })
	h.run(time.Hour, VolumeInput{})
	requireAccepted(t, b)
	require.Nil(t, after.Active, "lock released")
	return after, b.op.ItemID, log.list()
}

func TestRequiredReplicationFailureFailsTheBackupAndRemovesBothCopies(t *testing.T) {
	after, id, calls := backupWithFailingReplication(t, true, "offsite bucket refused the write")
	bk := findItem(after.Backups, id)
	require.NotNil(t, bk)
	assert.Equal(t, StatusFailed, bk.Status, "a backup that must be replicated is not available without its replica")
	assert.Contains(t, bk.Error, "offsite bucket refused the write")
	assert.Equal(t, []string{"storage/offsite abandon offsite " + id, "storage/local abandon local " + id}, calls)
}

func TestBestEffortReplicationFailureKeepsTheBackupAvailable(t *testing.T) {
	after, id, calls := backupWithFailingReplication(t, false, "offsite unreachable")
	bk := findItem(after.Backups, id)
	require.NotNil(t, bk)
	assert.Equal(t, StatusAvailable, bk.Status)
	require.NotNil(t, bk.Replica)
	assert.Equal(t, ReplicaFailed, bk.Replica.Status)
	assert.Contains(t, bk.Replica.Error, "offsite unreachable")
	// The partial replica is removed; the primary copy stays.
	assert.Equal(t, []string{"storage/offsite abandon offsite " + id}, calls)
}

func TestImportBackupsIsIdempotentAndKeepsCreationOrder(t *testing.T) {
	h := newHarness(t)
	h.mockHypervisor()
	t0 := time.Date(2026, 11, 1, 2, 0, 0, 0, time.UTC)
	found := func(id string, days int) Item {
		return Item{ItemID: id, Name: id, Status: StatusAvailable, Storage: "offsite",
			CreatedAt: t0.AddDate(0, 0, days), SizeBytes: 1 << 30, StoredBytes: 1 << 20}
	}
	var first, second, unregistered, bad *reply
	var st VolumeState
	results := map[*reply]ImportResult{}
	imp := func(items ...Item) *reply {
		o := &reply{}
		h.env.UpdateWorkflow(UpdateImportBackups, "", &testsuite.TestUpdateCallback{
			OnAccept: func() {},
			OnReject: func(err error) { o.done, o.err = true, err },
			OnComplete: func(res any, err error) {
				o.done, o.err = true, err
				if r, ok := res.(ImportResult); ok {
					results[o] = r
				}
			},
		}, ImportRequest{Backups: items})
		return o
	}
	h.at(time.Second, func() { unregistered = imp(found("bk-a", 1)) })
	h.at(2*time.Second, func() { h.register(testSpec()) })
	h.at(3*time.Second, func() { first = imp(found("bk-b", 2), found("bk-a", 1)) })
	h.at(4*time.Second, func() { second = imp(found("bk-a", 1), found("bk-c", 0), found("bk-b", 2)) })
	h.at(5*time.Second, func() {
		it := found("bk-d", 3)
		it.Status = StatusCreating
		bad = imp(it)
	})
	h.at(6*time.Second, func() { st = h.state() })
	h.run(time.Hour, VolumeInput{})

	requireRejected(t, unregistered, ErrNotFound, "Volume vol1 not found.")
	requireRejected(t, bad, ErrInvalidArgument, "")
	require.NoError(t, first.err)
	require.NoError(t, second.err)
	assert.Equal(t, ImportResult{Imported: 2}, results[first])
	assert.Equal(t, ImportResult{Imported: 1, Known: 2}, results[second])
	var ids []string
	for _, it := range st.Backups {
		ids = append(ids, it.ItemID)
		assert.True(t, it.Recovered)
		assert.Equal(t, StatusAvailable, it.Status)
	}
	assert.Equal(t, []string{"bk-c", "bk-a", "bk-b"}, ids, "oldest first, each once")
}

func entry(volumeID, backupID string, day int) activities.CatalogEntry {
	return activities.CatalogEntry{VolumeID: volumeID, BackupID: backupID, SizeBytes: 1 << 30,
		CreatedAt: time.Date(2026, 11, day, 2, 0, 0, 0, time.UTC)}
}

func TestRecoverWorkflowPagesThroughTheCatalogOneVolumeAtATime(t *testing.T) {
	var suite testsuite.WorkflowTestSuite
	env := suite.NewTestWorkflowEnvironment()
	env.RegisterWorkflow(RecoverWorkflow)
	env.RegisterActivityWithOptions(fakeStorage{}.ListCatalog, activity.RegisterOptions{Name: activities.ListCatalogName})
	var mu sync.Mutex
	got := map[string][]string{}
	env.RegisterActivityWithOptions(func(ctx context.Context, in RecoverVolumeInput) (RecoverVolumeResult, error) {
		mu.Lock()
		defer mu.Unlock()
		for _, b := range in.Backups {
			got[in.VolumeID] = append(got[in.VolumeID], b.BackupID)
		}
		switch in.VolumeID {
		case "gone":
			return RecoverVolumeResult{Skipped: `hypervisor "hv9" is not configured`}, nil
		case "broken":
			return RecoverVolumeResult{}, temporal.NewNonRetryableApplicationError("boom", "Internal", nil)
		case "b":
			return RecoverVolumeResult{Registered: len(got["b"]) == 1, Imported: len(in.Backups)}, nil
		}
		return RecoverVolumeResult{Registered: true, Imported: len(in.Backups)}, nil
	}, activity.RegisterOptions{Name: RecoverVolumeActivity})
	env.OnActivity(activities.ListCatalogName, mock.Anything, activities.CatalogInput{Storage: "offsite"}).Return(
		activities.CatalogPage{Entries: []activities.CatalogEntry{entry("a", "bk-2", 2), entry("a", "bk-1", 1),
			entry("b", "bk-3", 3)}, Problems: []activities.CatalogProblem{{VolumeID: "a", BackupID: "bk-x",
			Error: "manifest hash mismatch"}}, Next: "b/bk-3"}, nil).Once()
	env.OnActivity(activities.ListCatalogName, mock.Anything, activities.CatalogInput{Storage: "offsite", After: "b/bk-3"}).Return(
		activities.CatalogPage{Entries: []activities.CatalogEntry{entry("b", "bk-4", 4), entry("broken", "bk-5", 5),
			entry("gone", "bk-6", 6)}}, nil).Once()
	env.ExecuteWorkflow(RecoverWorkflow, RecoverInput{Storage: "offsite"})
	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	var res RecoverResult
	require.NoError(t, env.GetWorkflowResult(&res))

	assert.Equal(t, map[string][]string{"a": {"bk-1", "bk-2"}, "b": {"bk-3", "bk-4"}, "broken": {"bk-5"},
		"gone": {"bk-6"}}, got, "each volume's backups, oldest first; a volume split over pages is recovered twice")
	assert.Equal(t, 6, res.Manifests)
	assert.Equal(t, 2, res.Volumes, "a, and b (on both pages, counted once)")
	assert.Equal(t, 2, res.Registered)
	assert.Equal(t, 4, res.Imported)
	require.Len(t, res.Problems, 3)
	assert.Equal(t, RecoverProblem{VolumeID: "a", BackupID: "bk-x", Error: "manifest hash mismatch"}, res.Problems[0])
	assert.Equal(t, "broken", res.Problems[1].VolumeID)
	assert.Contains(t, res.Problems[1].Error, "boom")
	assert.Equal(t, RecoverProblem{VolumeID: "gone", Error: `hypervisor "hv9" is not configured`}, res.Problems[2])
}

func TestRecoveredItemFallsBackToTheBackupIDForAName(t *testing.T) {
	e := entry("vol1", "bk-9", 9)
	e.Labels = map[string]string{activities.LabelConsistency: "application", activities.LabelScheduled: "true",
		activities.LabelOperationID: "op-9"}
	it := RecoveredItem("offsite", e)
	assert.Equal(t, Item{ItemID: "bk-9", Name: "bk-9", Status: StatusAvailable, CreatedAt: e.CreatedAt,
		SizeBytes: 1 << 30, Storage: "offsite", Consistency: "application", Scheduled: true, OperationID: "op-9",
		Recovered: true}, it)
	e.Labels[activities.LabelItemName] = "nightly"
	assert.Equal(t, "nightly", RecoveredItem("offsite", e).Name)
}

func TestNextBackupCatchesUpAFailedBestEffortReplica(t *testing.T) {
	h := newHarness(t)
	var log queueLog
	h.env.OnActivity(activities.ReplicateBackupName, mock.Anything, mock.Anything).Return(
		activities.ReplicateResult{}, temporal.NewNonRetryableApplicationError("offsite unreachable",
			activities.ErrInvalidArgument, nil)).Once()
	h.env.OnActivity(activities.ReplicateBackupName, mock.Anything, mock.Anything).Return(
		func(ctx context.Context, in activities.ReplicateInput) (activities.ReplicateResult, error) {
			log.add(ctx, "replicate "+in.BackupID)
			return activities.ReplicateResult{Verified: true}, nil
		})
	h.mockStorage(&log)
	h.mockHypervisor()
	var first, second *reply
	var between, after VolumeState
	h.at(time.Second, func() { h.register(replicatedSpec(false)) })
	h.at(2*time.Second, func() { first = h.request(OperationRequest{Kind: KindBackup, Name: "monday"}) })
	h.at(time.Minute, func() {
		between = h.state()
		second = h.request(OperationRequest{Kind: KindBackup, Name: "tuesday"})
	})
	h.at(2*time.Minute, func() { after = h.state() })
	h.run(time.Hour, VolumeInput{})

	requireAccepted(t, first)
	requireAccepted(t, second)
	assert.Equal(t, ReplicaFailed, findItem(between.Backups, first.op.ItemID).Replica.Status)
	for _, id := range []string{first.op.ItemID, second.op.ItemID} {
		bk := findItem(after.Backups, id)
		require.NotNil(t, bk.Replica, id)
		assert.Equal(t, ReplicaReplicated, bk.Replica.Status, "%s has its off-site copy now", id)
	}
	assert.Equal(t, []string{"storage/offsite abandon offsite " + first.op.ItemID, // the partial replica
		"storage/local replicate " + second.op.ItemID, "storage/local replicate " + first.op.ItemID}, log.list())
}
