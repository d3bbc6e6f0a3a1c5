package workers_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/activities/backup"
	"github.com/holdfast/holdfast/activities/backup/stores"
	"github.com/holdfast/holdfast/starter/startertest"
	"github.com/holdfast/holdfast/workers"
	"github.com/holdfast/holdfast/workers/config"
)

// replicateThenList is a test workflow driving the storage queues as Holdfast's workflows do: it replicates
// a backup on the source storage's queue, then lists the replica storage's catalog on that one's queue.
func replicateThenList(ctx workflow.Context, in activities.ReplicateInput) (activities.CatalogPage, error) {
	on := func(storage string) workflow.Context {
		return workflow.WithActivityOptions(ctx, workflow.ActivityOptions{TaskQueue: activities.StorageTaskQueue(storage),
			StartToCloseTimeout: time.Minute, RetryPolicy: &temporal.RetryPolicy{MaximumAttempts: 1}})
	}
	var r activities.ReplicateResult
	if err := workflow.ExecuteActivity(on(in.From), activities.ReplicateBackupName, in).Get(ctx, &r); err != nil {
		return activities.CatalogPage{}, err
	}
	if !r.Verified || r.ChunksCopied == 0 {
		return activities.CatalogPage{}, fmt.Errorf("replication result %+v", r)
	}
	var page activities.CatalogPage
	err := workflow.ExecuteActivity(on(in.To), activities.ListCatalogName, activities.CatalogInput{Storage: in.To}).Get(ctx, &page)
	return page, err
}

// The agent serves every configured storage's queue next to its hypervisor queue, and stops them all when
// its context ends.
func TestAgentServesStorageQueues(t *testing.T) {
	dev := startertest.StartDevServer(t)
	dir := t.TempDir()
	cfg, err := config.Parse(strings.NewReader(fmt.Sprintf(`
temporal: {address: %q}
backup_storages:
  primary: {type: fs, path: %q, replica: offsite}
  offsite: {type: fs, path: %q}
hypervisor_groups: {g: {backup_storage: primary}}
hypervisors: {hv1: {group: g, libvirt_uri: none}}
`, dev.Address, filepath.Join(dir, "primary"), filepath.Join(dir, "offsite"))))
	require.NoError(t, err)
	ctx := context.Background()

	// A backup in the primary storage, as an upload would have left it.
	sc, err := workers.StoreConfig(cfg.Storages["primary"])
	require.NoError(t, err)
	e, err := stores.OpenEngine(ctx, sc, backup.Options{Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	img := make([]byte, 3*backup.DefaultChunkSize+100)
	for i := range img {
		img[i] = byte(rand.Uint32())
	}
	_, err = e.Backup(ctx, backup.BackupRequest{VolumeID: "vol-1", BackupID: "b1", Source: bytes.NewReader(img),
		Size: int64(len(img)), Labels: map[string]string{activities.LabelOwnerID: "o1"}})
	require.NoError(t, err)

	c, err := workers.Dial(cfg, client.Options{Logger: startertest.QuietLogger{}})
	require.NoError(t, err)
	defer c.Close()
	a, err := workers.NewAgent(ctx, cfg, "hv1", nil, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	defer a.Close()
	agentWorkers := workers.NewAgentWorkers(c, cfg, "hv1", a)
	require.Len(t, agentWorkers, 4, "the hypervisor queue, its cleanup queue, and one per configured storage")
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- workers.Run(runCtx, agentWorkers...)
	}()

	const testQueue = "workers-test"
	w := worker.New(c, testQueue, worker.Options{})
	w.RegisterWorkflow(replicateThenList)
	require.NoError(t, w.Start())
	defer w.Stop()
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{TaskQueue: testQueue, WorkflowExecutionTimeout: time.Minute},
		replicateThenList, activities.ReplicateInput{VolumeID: "vol-1", BackupID: "b1", From: "primary", To: "offsite"})
	require.NoError(t, err)
	var page activities.CatalogPage
	require.NoError(t, run.Get(ctx, &page))
	require.Len(t, page.Entries, 1)
	require.Equal(t, "vol-1", page.Entries[0].VolumeID)
	require.Equal(t, "o1", page.Entries[0].Labels[activities.LabelOwnerID])
	require.Equal(t, int64(len(img)), page.Entries[0].SizeBytes)

	stop()
	select {
	case err := <-done:
		require.NoError(t, err, "workers stop cleanly when the agent's context ends")
	case <-time.After(30 * time.Second):
		t.Fatal("workers did not stop")
	}
}
