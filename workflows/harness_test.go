package workflows

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/holdfast/holdfast/activities"
)

// fakeHypervisor only gives the test environment the activities' names and signatures: every test mocks
// the calls it makes (mockHypervisor), so unexpected calls fail loudly.
type fakeHypervisor struct{}

var _ activities.Hypervisor = fakeHypervisor{}

func (fakeHypervisor) Attachment(context.Context, activities.AttachmentInput) (activities.AttachmentResult, error) {
	panic("mock me")
}
func (fakeHypervisor) CreateSnapshot(context.Context, activities.SnapshotInput) (activities.SnapshotResult, error) {
	panic("mock me")
}
func (fakeHypervisor) DeleteSnapshot(context.Context, activities.SnapshotRef) error { panic("mock me") }
func (fakeHypervisor) RollbackSnapshot(context.Context, activities.SnapshotRef) error {
	panic("mock me")
}
func (fakeHypervisor) UploadBackup(context.Context, activities.UploadBackupInput) (activities.UploadBackupResult, error) {
	panic("mock me")
}
func (fakeHypervisor) DeleteBackup(context.Context, activities.BackupRef) error { panic("mock me") }
func (fakeHypervisor) RestoreBackup(context.Context, activities.RestoreBackupInput) (activities.RestoreResult, error) {
	panic("mock me")
}
func (fakeHypervisor) PrepareInstantRestore(context.Context, activities.RestoreBackupInput) (activities.InstantRestoreResult, error) {
	panic("mock me")
}
func (fakeHypervisor) HydrateVolume(context.Context, activities.RestoreBackupInput) (activities.RestoreResult, error) {
	panic("mock me")
}
func (fakeHypervisor) AbandonInstantRestore(context.Context, activities.RestoreBackupInput) error {
	panic("mock me")
}
func (fakeHypervisor) CloneSnapshot(context.Context, activities.CloneSnapshotInput) (activities.RestoreResult, error) {
	panic("mock me")
}
func (fakeHypervisor) InspectVolume(context.Context, activities.AttachmentInput) (activities.InspectResult, error) {
	panic("mock me")
}
func (fakeHypervisor) DeleteVolume(context.Context, activities.DeleteVolumeInput) error {
	panic("mock me")
}

// fakeStorage gives the test environment the storage activities' names and signatures (tests mock them).
type fakeStorage struct{}

var _ activities.Storage = fakeStorage{}

func (fakeStorage) ListCatalog(context.Context, activities.CatalogInput) (activities.CatalogPage, error) {
	panic("mock me")
}
func (fakeStorage) ReplicateBackup(context.Context, activities.ReplicateInput) (activities.ReplicateResult, error) {
	panic("mock me")
}
func (fakeStorage) ScrubStorage(context.Context, activities.ScrubInput) (activities.ScrubResult, error) {
	panic("mock me")
}
func (fakeStorage) CollectGarbage(context.Context, activities.GCInput) (activities.GCResult, error) {
	panic("mock me")
}
func (fakeStorage) DeleteBackup(context.Context, activities.BackupRef) error  { panic("mock me") }
func (fakeStorage) AbandonBackup(context.Context, activities.BackupRef) error { panic("mock me") }

func testSpec() VolumeSpec {
	return VolumeSpec{VolumeID: "vol1", Name: "web-data", OwnerID: "acct-42", HypervisorID: "hv1",
		Plan:    Plan{PlanID: "standard", MaxSnapshots: 5, MaxBackups: 10},
		Storage: activities.VolumeRef{Type: "file", Path: "/var/lib/holdfast/volumes/web-data.qcow2"},
		// Size comes from the hypervisor on the first snapshot.
		BackupStorage: "local", OwnerLimit: 3, Cooldown: 5 * time.Minute, Deadline: 2 * time.Hour}
}

// harness drives one VolumeWorkflow in the time-skipping test environment: steps run at given offsets on
// the test clock, updates record their outcome.
type harness struct {
	t         *testing.T
	env       *testsuite.TestWorkflowEnvironment
	ops       int
	registers []*reply
	// ownerBusy counts permits held by the owner's other volumes; an ownerSilent owner never answers.
	ownerBusy      int
	ownerSilent    bool
	permitRequests []AcquirePermitInput
}

func newHarness(t *testing.T, setup ...func(*testsuite.WorkflowTestSuite)) *harness {
	var suite testsuite.WorkflowTestSuite
	for _, s := range setup {
		s(&suite)
	}
	env := suite.NewTestWorkflowEnvironment()
	env.RegisterWorkflow(VolumeWorkflow)
	env.RegisterWorkflow(SnapshotWorkflow)
	env.RegisterWorkflow(BackupWorkflow)
	env.RegisterWorkflow(RestoreWorkflow)
	env.RegisterWorkflow(DeleteWorkflow)
	env.RegisterWorkflow(DeregisterWorkflow)
	env.RegisterWorkflow(CleanupWorkflow)
	env.RegisterActivity(&fakeHypervisor{})
	// DeleteBackup is both a hypervisor and a storage activity: one registration serves both names.
	env.RegisterActivityWithOptions(fakeStorage{}.ListCatalog, activity.RegisterOptions{Name: activities.ListCatalogName})
	env.RegisterActivityWithOptions(fakeStorage{}.ReplicateBackup, activity.RegisterOptions{Name: activities.ReplicateBackupName})
	env.RegisterActivityWithOptions(fakeStorage{}.ScrubStorage, activity.RegisterOptions{Name: activities.ScrubStorageName})
	env.RegisterActivityWithOptions(fakeStorage{}.CollectGarbage, activity.RegisterOptions{Name: activities.CollectGarbageName})
	env.RegisterActivityWithOptions(fakeStorage{}.AbandonBackup, activity.RegisterOptions{Name: activities.AbandonBackupName})
	env.RegisterWorkflow(ReplicateWorkflow)
	env.RegisterActivityWithOptions(func(context.Context, VolumeSpec) error { return nil },
		activity.RegisterOptions{Name: RegisterVolumeActivity})
	env.RegisterActivityWithOptions(func(context.Context, ReleasePlacementInput) error { return nil },
		activity.RegisterOptions{Name: ReleasePlacementActivity})
	env.RegisterActivityWithOptions(func(context.Context, HydrationEnd) error { return nil },
		activity.RegisterOptions{Name: EndHydrationActivity})
	h := &harness{t: t, env: env}
	// The owner's workflow, played by the harness: it grants up to the request's limit and answers by signal.
	env.RegisterActivityWithOptions(func(_ context.Context, in AcquirePermitInput) error {
		h.permitRequests = append(h.permitRequests, in)
		if h.ownerSilent {
			return nil
		}
		r := in.Request
		// One volume holds at most one permit at a time: the limit is reached by the owner's other volumes.
		reply := PermitReply{LeaseID: r.LeaseID, Limit: r.Limit, Granted: h.ownerBusy < r.Limit}
		env.RegisterDelayedCallback(func() { env.SignalWorkflow(SignalPermit, reply) }, 0)
		return nil
	}, activity.RegisterOptions{Name: AcquirePermitActivity})
	env.SetTestTimeout(30 * time.Second)
	return h
}

// mockHypervisor makes every hypervisor activity succeed at once unless a test mocked it before.
func (h *harness) mockHypervisor() {
	e := h.env
	e.OnActivity(activities.AttachmentName, mock.Anything, mock.Anything).Return(activities.AttachmentResult{}, nil).Maybe()
	e.OnActivity(activities.CreateSnapshotName, mock.Anything, mock.Anything).
		Return(activities.SnapshotResult{SizeBytes: 1 << 30, Consistency: activities.ConsistencyCrash}, nil).Maybe()
	e.OnActivity(activities.DeleteSnapshotName, mock.Anything, mock.Anything).Return(nil).Maybe()
	e.OnActivity(activities.RollbackSnapshotName, mock.Anything, mock.Anything).Return(nil).Maybe()
	e.OnActivity(activities.UploadBackupName, mock.Anything, mock.Anything).
		Return(activities.UploadBackupResult{SizeBytes: 1 << 30, StoredBytes: 1 << 28}, nil).Maybe()
	e.OnActivity(activities.DeleteBackupName, mock.Anything, mock.Anything).Return(nil).Maybe()
	e.OnActivity(activities.AbandonBackupName, mock.Anything, mock.Anything).Return(nil).Maybe()
	e.OnActivity(activities.RestoreBackupName, mock.Anything, mock.Anything).
		Return(activities.RestoreResult{SizeBytes: 1 << 30}, nil).Maybe()
	e.OnActivity(activities.CloneSnapshotName, mock.Anything, mock.Anything).
		Return(activities.RestoreResult{SizeBytes: 1 << 30}, nil).Maybe()
	e.OnActivity(activities.DeleteVolumeName, mock.Anything, mock.Anything).Return(nil).Maybe()
	e.OnActivity(ReleasePlacementActivity, mock.Anything, mock.Anything).Return(nil).Maybe()
	e.OnActivity(activities.CollectGarbageName, mock.Anything, mock.Anything).Return(activities.GCResult{}, nil).Maybe()
	e.OnActivity(activities.ReplicateBackupName, mock.Anything, mock.Anything).
		Return(activities.ReplicateResult{ChunksCopied: 64, BytesCopied: 1 << 28, Verified: true}, nil).Maybe()
	e.OnSignalExternalWorkflow(mock.Anything, mock.Anything, mock.Anything, mock.Anything, mock.Anything).
		Return(nil).Maybe()
}

// at runs fn when the test clock reaches offset d from the start.
func (h *harness) at(d time.Duration, fn func()) { h.env.RegisterDelayedCallback(fn, d) }

// reply to one update: err is the validator's rejection or the handler's error.
type reply struct {
	done bool
	op   Operation
	err  error
}

func (h *harness) update(name string, arg any) *reply {
	o := &reply{}
	h.ops++
	h.env.UpdateWorkflow(name, "", &testsuite.TestUpdateCallback{
		OnAccept: func() {},
		OnReject: func(err error) { o.done, o.err = true, err },
		OnComplete: func(res any, err error) {
			o.done, o.err = true, err
			if op, ok := res.(Operation); ok {
				o.op = op
			}
		},
	}, arg)
	return o
}

// register registers (or updates) the volume; run checks it succeeded.
func (h *harness) register(spec VolumeSpec) {
	h.registers = append(h.registers, h.update(UpdateRegister, spec))
}

// ownerAnswersAfter has the owner answer the next permit request only after d (granted or refused).
func (h *harness) ownerAnswersAfter(d time.Duration, granted bool) {
	h.env.OnActivity(AcquirePermitActivity, mock.Anything, mock.Anything).After(d).
		Return(func(_ context.Context, in AcquirePermitInput) error {
			h.env.RegisterDelayedCallback(func() {
				h.env.SignalWorkflow(SignalPermit, PermitReply{LeaseID: in.Request.LeaseID, Granted: granted, Limit: 3})
			}, 0)
			return nil
		}).Once()
}

// expectRelease expects the permit leaseID to be given back to the test spec's owner, once.
func (h *harness) expectRelease(leaseID string) {
	h.env.OnSignalExternalWorkflow(mock.Anything, OwnerWorkflowID("acct-42"), "", SignalRelease,
		ReleaseSignal{LeaseID: leaseID}).Return(nil).Once()
}

// request sends an operation request with a fresh operation id, as a client does: without a lease (the
// volume takes the owner's permit itself) unless the test sets one, as a client of an earlier version did.
func (h *harness) request(req OperationRequest) *reply {
	if req.OperationID == "" {
		req.OperationID = fmt.Sprintf("op%d", h.ops)
	}
	return h.update(UpdateRequest, req)
}

func (h *harness) state() VolumeState {
	v, err := h.env.QueryWorkflow(QueryState)
	require.NoError(h.t, err)
	var st VolumeState
	require.NoError(h.t, v.Get(&st))
	return st
}

// run starts the volume workflow and ends it at the given offset (it is an entity: it never ends itself).
func (h *harness) run(end time.Duration, in VolumeInput) {
	h.at(end, func() { h.env.CancelWorkflow() })
	if in.VolumeID == "" {
		in.VolumeID = "vol1"
	}
	h.env.ExecuteWorkflow(VolumeWorkflow, in)
	require.True(h.t, h.env.IsWorkflowCompleted())
	for _, r := range h.registers {
		require.True(h.t, r.done, "registration did not finish")
		require.NoError(h.t, r.err, "registration")
	}
}

// errType returns the application error type and message of an update's error.
func errType(t *testing.T, err error) (string, string) {
	t.Helper()
	var app *temporal.ApplicationError
	require.True(t, errors.As(err, &app), "want an application error, got %v", err)
	return app.Type(), app.Message()
}

func requireRejected(t *testing.T, o *reply, wantType, wantMessage string) {
	t.Helper()
	require.True(t, o.done, "update did not finish")
	require.Error(t, o.err, "want %s rejection", wantType)
	typ, msg := errType(t, o.err)
	require.Equal(t, wantType, typ)
	if wantMessage != "" {
		require.Equal(t, wantMessage, msg)
	}
}

func requireAccepted(t *testing.T, o *reply) {
	t.Helper()
	require.True(t, o.done, "update did not finish")
	require.NoError(t, o.err)
	require.Equal(t, StatusPending, o.op.Status)
}

func findItem(items []Item, itemID string) *Item {
	for i := range items {
		if items[i].ItemID == itemID {
			return &items[i]
		}
	}
	return nil
}
