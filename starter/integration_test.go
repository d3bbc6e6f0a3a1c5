package starter_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/starter"
	"github.com/holdfast/holdfast/starter/startertest"
	"github.com/holdfast/holdfast/workflows"
)

const testConfig = `
limits: {cooldown: 0s}
backup_storages: {local: {type: fs, path: /tmp/holdfast-test-backups}}
hypervisor_groups: {g1: {backup_storage: local}}
hypervisors: {hv1: {group: g1, volume_roots: [/vols]}}
`

type cluster struct {
	*startertest.Cluster
	hf *starter.Client
	hv *startertest.GatedHypervisor
}

func newCluster(t *testing.T) *cluster {
	hv := startertest.NewGatedHypervisor()
	c := startertest.NewCluster(t, testConfig, map[string]activities.Hypervisor{"hv1": hv})
	return &cluster{Cluster: c, hf: c.Client, hv: hv}
}

func (c *cluster) register(t *testing.T, volumeID, ownerID string) { c.Register(t, volumeID, ownerID) }

func waitFor(t *testing.T, what string, cond func() bool) { startertest.WaitFor(t, what, cond) }

// errorChain names the Go types of err and of every error it wraps, for failure messages.
func errorChain(err error) string {
	var types []string
	for ; err != nil; err = errors.Unwrap(err) {
		types = append(types, fmt.Sprintf("%T", err))
	}
	return strings.Join(types, " → ")
}

func typeOf(err error) string {
	var e *starter.Error
	if errors.As(err, &e) {
		return e.Type
	}
	return "untyped: " + err.Error()
}

// countAccepted counts the requests that were accepted and checks that every other one was rejected with
// the error type want.
func countAccepted(t *testing.T, errs []error, want string) int {
	t.Helper()
	accepted := 0
	for _, err := range errs {
		if err == nil {
			accepted++
			continue
		}
		assert.Equal(t, want, typeOf(err), "%s (%s)", err.Error(), errorChain(err))
	}
	return accepted
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
	// The owner's other volumes are idle: the only true cause of a rejection is this volume's lock.
	assert.Equal(t, 1, countAccepted(t, errs, workflows.ErrVolumeBusy))
	v, err := c.hf.Volume(ctx, "vol1")
	require.NoError(t, err)
	require.NotNil(t, v.Active)
	c.hv.Gate.Open()
	waitFor(t, "operation to finish", func() bool {
		v, err := c.hf.Volume(ctx, "vol1")
		return err == nil && v.Active == nil
	})
	// The one operation's permit comes back when it ends (a rejected request never took one). Then the owner
	// can run three operations again.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		res, err := c.hf.Temporal().QueryWorkflow(ctx, workflows.OwnerWorkflowID("acct-1"), "", workflows.QueryPermits)
		require.NoError(t, err)
		var leases []workflows.Lease
		require.NoError(t, res.Get(&leases))
		if len(leases) == 0 {
			break
		}
		require.True(t, time.Now().Before(deadline), "permits never came back: %+v", leases)
		time.Sleep(200 * time.Millisecond)
	}
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
	c.hv.Gate.Open()
}

// With the owner at its limit, a request names its true cause: a missing item is NotFound, a busy volume
// VolumeBusy, a wrong confirmation ConfirmationMismatch; only a request the volume would take is OwnerLimit.
func TestIntegrationRejectionsNameTheirTrueCauseAtTheOwnerLimit(t *testing.T) {
	c := newCluster(t)
	ctx := context.Background()
	for _, id := range []string{"v1", "v2", "v3", "v4"} {
		c.register(t, id, "acct-3")
	}
	for _, id := range []string{"v1", "v2", "v3"} {
		_, err := c.hf.Snapshot(ctx, id, "")
		require.NoError(t, err)
	}
	_, err := c.hf.Restore(ctx, "v4", starter.RestoreRequest{SnapshotID: "snap-op-missing", Mode: workflows.ModeInPlace,
		Confirm: "v4"})
	assert.Equal(t, workflows.ErrNotFound, typeOf(err), "restore of a missing snapshot: %v", err)
	_, err = c.hf.Backup(ctx, "v1", "")
	assert.Equal(t, workflows.ErrVolumeBusy, typeOf(err), "backup of a busy volume: %v", err)
	_, err = c.hf.Deregister(ctx, "v4", "not-its-name", 0)
	assert.Equal(t, workflows.ErrConfirmationMismatch, typeOf(err), "deregistration with a wrong name: %v", err)
	_, err = c.hf.Snapshot(ctx, "v4", "")
	assert.Equal(t, workflows.ErrOwnerLimit, typeOf(err), "a fourth operation: %v", err)
	c.hv.Gate.Open()
}

// Permits are asked for by the volumes with signals, never by Updates on the owner's workflow, so an owner's
// requests do not queue behind the server's ceiling of 10 Updates in flight per workflow.
func TestIntegrationOwnerPermitsTakeNoUpdates(t *testing.T) {
	c := newCluster(t)
	ctx := context.Background()
	const n = 24
	for i := range n {
		c.register(t, fmt.Sprintf("w%02d", i), "acct-9")
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { _, errs[i] = c.hf.Snapshot(ctx, fmt.Sprintf("w%02d", i), "") })
	}
	wg.Wait()
	assert.Equal(t, 3, countAccepted(t, errs, workflows.ErrOwnerLimit))
	iter := c.hf.Temporal().GetWorkflowHistory(ctx, workflows.OwnerWorkflowID("acct-9"), "", false,
		enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
	updates, signals := 0, 0
	for iter.HasNext() {
		ev, err := iter.Next()
		require.NoError(t, err)
		switch ev.GetEventType() {
		case enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
			updates++
		case enumspb.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
			signals++
		}
	}
	assert.Zero(t, updates, "permits taken by Update on the owner's workflow")
	assert.GreaterOrEqual(t, signals, n, "every request that passed its volume's checks asks by signal")
	c.hv.Gate.Open()
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
	c.Dev.Restart()
	// The server came back from its SQLite file: the volume is still locked by the same operation.
	waitFor(t, "state after restart", func() bool {
		v, err := c.hf.Volume(ctx, "vol1")
		return err == nil && v.Active != nil && v.Active.OperationID == op.OperationID
	})
	_, err = c.hf.Snapshot(ctx, "vol1", "")
	require.Error(t, err)
	assert.Equal(t, "Volume is busy with operation: backup", err.Error())
	c.hv.Gate.Open()
	final, err := c.hf.Watch(ctx, op.OperationID, 200*time.Millisecond, nil)
	require.NoError(t, err)
	assert.Equal(t, workflows.StatusAvailable, final.Status)
	v, err := c.hf.Volume(ctx, "vol1")
	require.NoError(t, err)
	require.Len(t, v.Backups, 1)
	assert.Equal(t, workflows.StatusAvailable, v.Backups[0].Status)
	assert.Equal(t, "nightly", v.Backups[0].Name)
	assert.Nil(t, v.Active)
	recordHistory(t, c.hf, workflows.VolumeWorkflowID("vol1"), "volume-backup-across-restart")
	recordHistory(t, c.hf, workflows.OperationWorkflowID(op.OperationID), "backup-across-restart")
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
	recordHistory(t, c.hf, workflows.VolumeWorkflowID("vol1"), "volume-abort")
	recordHistory(t, c.hf, workflows.OperationWorkflowID(op.OperationID), "backup-aborted")
	// The same, recorded after permit-activity (the owner asked through an activity, not a local one).
	recordHistory(t, c.hf, workflows.VolumeWorkflowID("vol1"), "volume-abort-permit-activity")
	_, err = c.hf.Abort(ctx, "vol1", "again")
	assert.Equal(t, workflows.ErrNoActiveOperation, typeOf(err))
	_, err = c.hf.Snapshot(ctx, "nope", "")
	assert.Equal(t, workflows.ErrNotFound, typeOf(err))
	_, err = c.hf.RegisterVolume(ctx, starter.RegisterRequest{VolumeID: "v9", Name: "v9", OwnerID: "a",
		HypervisorID: "hv1", Plan: "gold", Storage: activities.VolumeRef{Type: "file", Path: "/vols/v9.qcow2"}})
	assert.Equal(t, "plan: unknown plan \"gold\"", err.Error())
}

// recordHistory saves a workflow's history for the replay test (workers/testdata/histories) when
// HOLDFAST_RECORD_HISTORIES=1: re-record after an intentional, versioned change to workflow code.
func recordHistory(t *testing.T, hf *starter.Client, workflowID, name string) {
	if os.Getenv("HOLDFAST_RECORD_HISTORIES") != "1" {
		return
	}
	ctx := context.Background()
	iter := hf.Temporal().GetWorkflowHistory(ctx, workflowID, "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
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

// A request and an abort reaching the volume together: the operation ends aborted before its child workflow
// starts, and GET /v1/operations/{id} still finds it (through the volume's SearchOperations).
func TestIntegrationOperationAbortedBeforeItStartedIsFound(t *testing.T) {
	c := newCluster(t)
	ctx := context.Background()
	c.register(t, "vol1", "acct-1")
	startControl := c.StopControl(t)

	update := func(name, id string, arg any, out any) error {
		h, err := c.Temporal.UpdateWorkflow(ctx, client.UpdateWorkflowOptions{
			WorkflowID: workflows.VolumeWorkflowID("vol1"), UpdateName: name, UpdateID: id, Args: []any{arg},
			WaitForStage: client.WorkflowUpdateStageCompleted})
		if err != nil {
			return err
		}
		return h.Get(ctx, out)
	}
	var wg sync.WaitGroup
	var accepted, aborted workflows.Operation
	var requestErr, abortErr error
	wg.Go(func() {
		requestErr = update(workflows.UpdateRequest, "op-early",
			workflows.OperationRequest{Kind: workflows.KindSnapshot, OperationID: "op-early"}, &accepted)
	})
	// The request is admitted once the idle volume workflow has a workflow task pending; the abort goes after
	// it, and both reach the workflow in the one task a worker picks up once one polls.
	waitFor(t, "request admitted", func() bool {
		resp, err := c.Temporal.DescribeWorkflowExecution(ctx, workflows.VolumeWorkflowID("vol1"), "")
		return err == nil && resp.GetPendingWorkflowTask() != nil
	})
	wg.Go(func() { abortErr = update(workflows.UpdateAbort, "abort-early", "changed my mind", &aborted) })
	time.Sleep(2 * time.Second)
	startControl()
	wg.Wait()
	require.NoError(t, requestErr)
	require.NoError(t, abortErr)
	assert.Equal(t, workflows.StatusPending, accepted.Status)
	assert.Equal(t, "op-early", aborted.OperationID)

	_, err := c.Temporal.DescribeWorkflowExecution(ctx, workflows.OperationWorkflowID("op-early"), "")
	var nf *serviceerror.NotFound
	require.ErrorAs(t, err, &nf, "the operation was meant to end before its child started")
	op, err := c.hf.Operation(ctx, "op-early")
	require.NoError(t, err)
	assert.Equal(t, workflows.StatusAborted, op.Status)
	assert.Equal(t, "vol1", op.VolumeID)
	v, err := c.hf.Volume(ctx, "vol1")
	require.NoError(t, err)
	assert.Nil(t, v.Active)
	recordHistory(t, c.hf, workflows.VolumeWorkflowID("vol1"), "volume-aborted-before-start")

	for _, id := range []string{"op-never-existed", "op' OR HoldfastVolume = 'vol1"} {
		_, err = c.hf.Operation(ctx, id)
		assert.Equal(t, workflows.ErrNotFound, typeOf(err), id)
	}
}

// Two backups of a qcow2 volume: the second reads only what changed since the first's snapshot, which the
// volume kept as its base, and says so on the backup.
func TestIntegrationSecondBackupIsIncremental(t *testing.T) {
	c := newCluster(t)
	c.hv.Gate.Open()
	ctx := context.Background()
	c.register(t, "vol1", "acct-1")
	var ops []*workflows.Operation
	for _, name := range []string{"monday", "tuesday"} {
		op, err := c.hf.Backup(ctx, "vol1", name)
		require.NoError(t, err)
		final, err := c.hf.Watch(ctx, op.OperationID, 200*time.Millisecond, nil)
		require.NoError(t, err)
		require.Equal(t, workflows.StatusAvailable, final.Status, "%+v", final.Error)
		ops = append(ops, op)
	}
	v, err := c.hf.Volume(ctx, "vol1")
	require.NoError(t, err)
	require.Len(t, v.Backups, 2)
	assert.Equal(t, "first backup", v.Backups[0].FullReadReason)
	assert.False(t, v.Backups[0].Incremental)
	assert.True(t, v.Backups[1].Incremental, "read against the first backup's snapshot: %s", v.Backups[1].FullReadReason)
	assert.Equal(t, int64(4<<20), v.Backups[1].ReadBytes)
	recordHistory(t, c.hf, workflows.OperationWorkflowID(ops[1].OperationID), "backup-incremental")
	recordHistory(t, c.hf, workflows.VolumeWorkflowID("vol1"), "volume-incremental")
}
