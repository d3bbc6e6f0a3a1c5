package starter_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/worker"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/starter"
	"github.com/holdfast/holdfast/workers"
	"github.com/holdfast/holdfast/workers/config"
	"github.com/holdfast/holdfast/workflows"
)

// temporalBin finds the dev server built by `make temporal`; without it the test skips locally and fails
// under CI=true.
func temporalBin(t *testing.T) string {
	t.Helper()
	path := os.Getenv("HOLDFAST_TEMPORAL_BIN")
	if path == "" {
		path = filepath.Join("..", "bin", "temporal")
	}
	if _, err := os.Stat(path); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("Temporal dev server not found at %s (CI=true: failing): run make temporal", path)
		}
		t.Skipf("Temporal dev server not found at %s: run make temporal", path)
	}
	abs, err := filepath.Abs(path)
	require.NoError(t, err)
	return abs
}

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().String()
}

type devServer struct {
	t       *testing.T
	bin     string
	db      string
	address string
	server  *testsuite.DevServer
}

// startDevServer runs the real Temporal dev server (SQLite file, so it can be restarted with its state).
func startDevServer(t *testing.T) *devServer {
	d := &devServer{t: t, bin: temporalBin(t), db: filepath.Join(t.TempDir(), "temporal.db"), address: freePort(t)}
	d.start()
	t.Cleanup(func() { _ = d.server.Stop() })
	return d
}

func (d *devServer) start() {
	args := []string{"--dynamic-config-value", "frontend.enableUpdateWorkflowExecution=true"}
	for _, name := range workflows.SearchAttributeNames {
		args = append(args, "--search-attribute", name+"=Keyword")
	}
	s, err := testsuite.StartDevServer(context.Background(), testsuite.DevServerOptions{
		ExistingPath: d.bin, DBFilename: d.db, LogLevel: "error", ExtraArgs: args,
		ClientOptions: &client.Options{HostPort: d.address, Namespace: "default"},
	})
	require.NoError(d.t, err)
	d.server = s
}

func (d *devServer) restart() {
	require.NoError(d.t, d.server.Stop())
	d.start()
}

// gatedHypervisor is an in-process hypervisor agent whose snapshots wait for a gate, so tests can hold an
// operation open (busy volume, permits in flight, server restarts mid-operation).
type gatedHypervisor struct {
	gate      chan struct{}
	mu        sync.Mutex
	snapshots int
}

func (g *gatedHypervisor) Attachment(context.Context, activities.AttachmentInput) (activities.AttachmentResult, error) {
	return activities.AttachmentResult{}, nil
}

func (g *gatedHypervisor) CreateSnapshot(ctx context.Context, in activities.SnapshotInput) (activities.SnapshotResult, error) {
	if !strings.HasPrefix(in.SnapshotID, "holdfast-") { // a backup's own snapshot passes at once
		select {
		case <-g.gate:
		case <-ctx.Done():
			return activities.SnapshotResult{}, ctx.Err()
		}
	}
	g.mu.Lock()
	g.snapshots++
	g.mu.Unlock()
	return activities.SnapshotResult{SnapshotID: in.SnapshotID, SizeBytes: 1 << 20, Consistency: activities.ConsistencyCrash}, nil
}

func (g *gatedHypervisor) DeleteSnapshot(context.Context, activities.SnapshotRef) error   { return nil }
func (g *gatedHypervisor) RollbackSnapshot(context.Context, activities.SnapshotRef) error { return nil }

// UploadBackup heartbeats progress until the context ends or the gate opens.
func (g *gatedHypervisor) UploadBackup(ctx context.Context, in activities.UploadBackupInput) (activities.UploadBackupResult, error) {
	total := int64(64 << 20)
	for done := int64(0); ; done += 4 << 20 {
		if done > total/2 {
			done = total / 2
		}
		activity.RecordHeartbeat(ctx, activities.Progress{Phase: "uploading", BytesDone: done, BytesTotal: total,
			NextOffset: done, BytesPerSecond: 4 << 20})
		select {
		case <-g.gate:
			return activities.UploadBackupResult{SizeBytes: total, StoredBytes: total / 4}, nil
		case <-ctx.Done():
			return activities.UploadBackupResult{}, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (g *gatedHypervisor) DeleteBackup(context.Context, activities.BackupRef) error { return nil }
func (g *gatedHypervisor) RestoreBackup(context.Context, activities.RestoreBackupInput) (activities.RestoreResult, error) {
	return activities.RestoreResult{SizeBytes: 64 << 20}, nil
}
func (g *gatedHypervisor) CloneSnapshot(context.Context, activities.CloneSnapshotInput) (activities.RestoreResult, error) {
	return activities.RestoreResult{SizeBytes: 1 << 20}, nil
}
func (g *gatedHypervisor) DeleteVolume(context.Context, activities.DeleteVolumeInput) error {
	return nil
}

type cluster struct {
	dev *devServer
	hf  *starter.Client
	hv  *gatedHypervisor
}

const testConfig = `
limits: {cooldown: 0s}
backup_storages: {local: {type: fs, path: /tmp/holdfast-test-backups}}
hypervisor_groups: {g1: {backup_storage: local}}
hypervisors: {hv1: {group: g1}}
`

// newCluster starts a dev server, the control worker and a gated agent for hv1.
func newCluster(t *testing.T) *cluster {
	dev := startDevServer(t)
	cfg, err := config.Parse(strings.NewReader(testConfig))
	require.NoError(t, err)
	tc, err := client.Dial(client.Options{HostPort: dev.address, Logger: quietLogger{}})
	require.NoError(t, err)
	t.Cleanup(tc.Close)
	hf := starter.New(tc, cfg)
	control := workers.NewControl(tc, hf, worker.Options{})
	hv := &gatedHypervisor{gate: make(chan struct{})}
	agent := worker.New(tc, activities.TaskQueue("hv1"), worker.Options{})
	agent.RegisterActivity(hv)
	require.NoError(t, control.Start())
	require.NoError(t, agent.Start())
	t.Cleanup(func() { agent.Stop(); control.Stop() })
	return &cluster{dev: dev, hf: hf, hv: hv}
}

type quietLogger struct{}

func (quietLogger) Debug(string, ...any) {}
func (quietLogger) Info(string, ...any)  {}
func (quietLogger) Warn(string, ...any)  {}
func (quietLogger) Error(string, ...any) {}

func (c *cluster) register(t *testing.T, volumeID, ownerID string) {
	_, err := c.hf.RegisterVolume(context.Background(), starter.RegisterRequest{VolumeID: volumeID, Name: volumeID,
		OwnerID: ownerID, HypervisorID: "hv1", Storage: activities.VolumeRef{Type: "file", Path: "/vols/" + volumeID + ".qcow2"}})
	require.NoError(t, err)
}

// waitFor polls cond (real time: a real server) until it holds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func typeOf(err error) string {
	var e *starter.Error
	if errors.As(err, &e) {
		return e.Type
	}
	return "untyped: " + err.Error()
}

func TestIntegrationConcurrentRequestsOnOneVolumeExactlyOneAccepted(t *testing.T) {
	c := newCluster(t)
	c.register(t, "vol1", "acct-1")
	ctx := context.Background()
	const n = 50
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if i%2 == 0 {
				_, errs[i] = c.hf.Snapshot(ctx, "vol1", "")
			} else {
				_, errs[i] = c.hf.Backup(ctx, "vol1", "")
			}
		})
	}
	wg.Wait()
	accepted := 0
	for _, err := range errs {
		if err == nil {
			accepted++
			continue
		}
		assert.Contains(t, []string{workflows.ErrVolumeBusy, workflows.ErrOwnerLimit}, typeOf(err), err.Error())
	}
	assert.Equal(t, 1, accepted)
	v, err := c.hf.Volume(ctx, "vol1")
	require.NoError(t, err)
	require.NotNil(t, v.Active)
	close(c.hv.gate)
	waitFor(t, "operation to finish", func() bool {
		v, err := c.hf.Volume(ctx, "vol1")
		return err == nil && v.Active == nil
	})
	// Every permit came back: the owner can run three operations again.
	for _, id := range []string{"v2", "v3", "v4"} {
		c.register(t, id, "acct-1")
	}
	for _, id := range []string{"v2", "v3", "v4"} {
		_, err := c.hf.Snapshot(ctx, id, "")
		require.NoError(t, err)
	}
}

func TestIntegrationOwnerLimitAcrossTwentyVolumes(t *testing.T) {
	c := newCluster(t)
	ctx := context.Background()
	for i := range 20 {
		c.register(t, fmt.Sprintf("v%02d", i), "acct-7")
	}
	errs := make([]error, 20)
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() { _, errs[i] = c.hf.Snapshot(ctx, fmt.Sprintf("v%02d", i), "") })
	}
	wg.Wait()
	accepted := 0
	for _, err := range errs {
		if err == nil {
			accepted++
			continue
		}
		require.Equal(t, workflows.ErrOwnerLimit, typeOf(err))
		assert.Equal(t, "Too many operations in flight for this account (limit 3). Try again when one finishes.", err.Error())
	}
	assert.Equal(t, 3, accepted)
	close(c.hv.gate)
}

func TestIntegrationStateSurvivesServerRestartMidOperation(t *testing.T) {
	c := newCluster(t)
	ctx := context.Background()
	c.register(t, "vol1", "acct-1")
	op, err := c.hf.Backup(ctx, "vol1", "nightly")
	require.NoError(t, err)
	waitFor(t, "live progress", func() bool {
		got, err := c.hf.Operation(ctx, op.OperationID)
		return err == nil && got.Progress != nil && got.Progress.BytesDone > 0
	})
	c.dev.restart()
	// The server came back from its SQLite file: the volume is still locked by the same operation.
	waitFor(t, "state after restart", func() bool {
		v, err := c.hf.Volume(ctx, "vol1")
		return err == nil && v.Active != nil && v.Active.OperationID == op.OperationID
	})
	_, err = c.hf.Snapshot(ctx, "vol1", "")
	require.Error(t, err)
	assert.Equal(t, "Volume is busy with operation: backup", err.Error())
	close(c.hv.gate)
	final, err := c.hf.Watch(ctx, op.OperationID, 200*time.Millisecond, nil)
	require.NoError(t, err)
	assert.Equal(t, workflows.StatusAvailable, final.Status)
	v, err := c.hf.Volume(ctx, "vol1")
	require.NoError(t, err)
	require.Len(t, v.Backups, 1)
	assert.Equal(t, workflows.StatusAvailable, v.Backups[0].Status)
	assert.Equal(t, "nightly", v.Backups[0].Name)
	assert.Nil(t, v.Active)
	recordHistory(t, c, workflows.VolumeWorkflowID("vol1"), "volume-backup-across-restart")
	recordHistory(t, c, workflows.OperationWorkflowID(op.OperationID), "backup-across-restart")
}

func TestIntegrationAbortReleasesTheLock(t *testing.T) {
	c := newCluster(t)
	ctx := context.Background()
	c.register(t, "vol1", "acct-1")
	op, err := c.hf.Backup(ctx, "vol1", "")
	require.NoError(t, err)
	waitFor(t, "backup streaming", func() bool {
		got, err := c.hf.Operation(ctx, op.OperationID)
		return err == nil && got.Progress != nil
	})
	_, err = c.hf.Abort(ctx, "vol1", "test")
	require.NoError(t, err)
	final, err := c.hf.Watch(ctx, op.OperationID, 200*time.Millisecond, nil)
	require.NoError(t, err)
	assert.Equal(t, workflows.StatusAborted, final.Status)
	recordHistory(t, c, workflows.VolumeWorkflowID("vol1"), "volume-abort")
	recordHistory(t, c, workflows.OperationWorkflowID(op.OperationID), "backup-aborted")
	_, err = c.hf.Abort(ctx, "vol1", "again")
	assert.Equal(t, workflows.ErrNoActiveOperation, typeOf(err))
	_, err = c.hf.Snapshot(ctx, "nope", "")
	assert.Equal(t, workflows.ErrNotFound, typeOf(err))
	_, err = c.hf.RegisterVolume(ctx, starter.RegisterRequest{VolumeID: "v9", Name: "v9", OwnerID: "a",
		HypervisorID: "hv1", Plan: "gold", Storage: activities.VolumeRef{Type: "file", Path: "/v"}})
	assert.Equal(t, "plan: unknown plan \"gold\"", err.Error())
}

// recordHistory saves a workflow's history for the replay test (workers/testdata/histories) when
// HOLDFAST_RECORD_HISTORIES=1: re-record after an intentional, versioned change to workflow code.
func recordHistory(t *testing.T, c *cluster, workflowID, name string) {
	if os.Getenv("HOLDFAST_RECORD_HISTORIES") != "1" {
		return
	}
	ctx := context.Background()
	iter := c.hf.Temporal().GetWorkflowHistory(ctx, workflowID, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	history := &historypb.History{}
	for iter.HasNext() {
		ev, err := iter.Next()
		require.NoError(t, err)
		history.Events = append(history.Events, ev)
	}
	data, err := protojson.MarshalOptions{Indent: "  "}.Marshal(history)
	require.NoError(t, err)
	dir := filepath.Join("..", "workers", "testdata", "histories")
	require.NoError(t, os.MkdirAll(dir, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, name+".json"), data, 0o644))
}
