package workflows

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"

	"github.com/holdfast/holdfast/activities"
)

type ownerHarness struct {
	t   *testing.T
	env *testsuite.TestWorkflowEnvironment
}

func newOwnerHarness(t *testing.T) *ownerHarness {
	var suite testsuite.WorkflowTestSuite
	env := suite.NewTestWorkflowEnvironment()
	env.RegisterWorkflow(OwnerWorkflow)
	env.SetTestTimeout(30 * time.Second)
	return &ownerHarness{t: t, env: env}
}

func (h *ownerHarness) acquire(leaseID, volumeID string) *reply {
	o := &reply{}
	h.env.UpdateWorkflow(UpdateAcquire, leaseID, &testsuite.TestUpdateCallback{
		OnAccept: func() {},
		OnReject: func(err error) { o.done, o.err = true, err },
		OnComplete: func(_ any, err error) {
			o.done, o.err = true, err
		},
	}, AcquireRequest{LeaseID: leaseID, VolumeID: volumeID, Limit: 3})
	return o
}

func (h *ownerHarness) permits() []Lease {
	v, err := h.env.QueryWorkflow(QueryPermits)
	require.NoError(h.t, err)
	var leases []Lease
	require.NoError(h.t, v.Get(&leases))
	return leases
}

func leaseIDs(leases []Lease) []string {
	ids := []string{}
	for _, l := range leases {
		ids = append(ids, l.LeaseID)
	}
	return ids
}

func TestOwnerLimitFourthConcurrentRequestRejected(t *testing.T) {
	h := newOwnerHarness(t)
	var a, b, c, d, again, afterRelease *reply
	var held []Lease
	h.env.RegisterDelayedCallback(func() {
		a, b, c = h.acquire("op-a", "vol-a"), h.acquire("op-b", "vol-b"), h.acquire("op-c", "vol-c")
	}, time.Second)
	h.env.RegisterDelayedCallback(func() {
		for _, id := range []string{"op-a", "op-b", "op-c"} {
			h.env.SignalWorkflow(SignalClaim, ClaimSignal{LeaseID: id, VolumeID: "vol-" + id[3:], TTL: 3 * time.Hour})
		}
	}, 2*time.Second)
	h.env.RegisterDelayedCallback(func() {
		d = h.acquire("op-d", "vol-d")
		again = h.acquire("op-a", "vol-a") // a retried acquire of a held permit is idempotent
	}, 3*time.Second)
	// Claimed permits outlive the one-minute claim window; the operation on vol-b ends and releases.
	h.env.RegisterDelayedCallback(func() {
		held = h.permits()
		h.env.SignalWorkflow(SignalRelease, ReleaseSignal{LeaseID: "op-b"})
	}, 10*time.Minute)
	h.env.RegisterDelayedCallback(func() { afterRelease = h.acquire("op-e", "vol-d") }, 11*time.Minute)
	h.env.RegisterDelayedCallback(func() { h.env.CancelWorkflow() }, time.Hour)
	h.env.ExecuteWorkflow(OwnerWorkflow, OwnerInput{OwnerID: "acct-42"})

	for _, r := range []*reply{a, b, c, again, afterRelease} {
		require.True(t, r.done)
		require.NoError(t, r.err)
	}
	requireRejected(t, d, ErrOwnerLimit,
		"Too many operations in flight for this account (limit 3). Try again when one finishes.")
	assert.Equal(t, []string{"op-a", "op-b", "op-c"}, leaseIDs(held))
}

func TestUnclaimedPermitComesBackAfterAMinute(t *testing.T) {
	h := newOwnerHarness(t)
	var early, late *reply
	var before, after []Lease
	h.env.RegisterDelayedCallback(func() {
		h.acquire("op-a", "vol-a")
		h.acquire("op-b", "vol-b")
		h.acquire("op-c", "vol-c")
	}, time.Second)
	h.env.RegisterDelayedCallback(func() { early = h.acquire("op-d", "vol-d"); before = h.permits() }, 30*time.Second)
	h.env.RegisterDelayedCallback(func() { after = h.permits(); late = h.acquire("op-e", "vol-e") }, 2*time.Minute)
	h.env.RegisterDelayedCallback(func() { h.env.CancelWorkflow() }, time.Hour)
	h.env.ExecuteWorkflow(OwnerWorkflow, OwnerInput{OwnerID: "acct-42"})

	requireRejected(t, early, ErrOwnerLimit, "")
	assert.Len(t, before, 3)
	assert.Empty(t, after, "never-claimed permits expired")
	require.True(t, late.done)
	require.NoError(t, late.err)
}

func TestClaimedPermitExpiresAfterItsTTL(t *testing.T) {
	// A volume that never releases (terminated by an operator, say) must not hold the permit forever.
	h := newOwnerHarness(t)
	var at2h, at4h []Lease
	h.env.RegisterDelayedCallback(func() { h.acquire("op-a", "vol-a") }, time.Second)
	h.env.RegisterDelayedCallback(func() {
		h.env.SignalWorkflow(SignalClaim, ClaimSignal{LeaseID: "op-a", VolumeID: "vol-a", TTL: 3 * time.Hour})
	}, 2*time.Second)
	h.env.RegisterDelayedCallback(func() { at2h = h.permits() }, 2*time.Hour)
	h.env.RegisterDelayedCallback(func() { at4h = h.permits() }, 4*time.Hour)
	h.env.RegisterDelayedCallback(func() { h.env.CancelWorkflow() }, 5*time.Hour)
	h.env.ExecuteWorkflow(OwnerWorkflow, OwnerInput{OwnerID: "acct-42"})
	require.Len(t, at2h, 1)
	assert.True(t, at2h[0].Claimed)
	assert.Empty(t, at4h)
}

// continueAsNewInput decodes the input a workflow continued-as-new with.
func continueAsNewInput(t *testing.T, err error, into any) {
	t.Helper()
	var can *workflow.ContinueAsNewError
	require.True(t, errors.As(err, &can), "want continue-as-new, got %v", err)
	require.NoError(t, converter.GetDefaultDataConverter().FromPayloads(can.Input, into))
}

func TestVolumeContinueAsNewKeepsStateAndQueuedRequest(t *testing.T) {
	// A run whose history is past its limit, holding an accepted request not yet started (as an update
	// accepted just before the decision would leave it), continues-as-new carrying both.
	spec := testSpec()
	queued := OperationRequest{OperationID: "op-queued", Kind: KindSnapshot, Name: "carried", OwnerLease: "op-queued"}
	start := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	st := &VolumeState{Registered: true, Spec: spec,
		Active:    &Operation{OperationID: "op-queued", VolumeID: "vol1", Kind: KindSnapshot, ItemKind: KindSnapshot, ItemID: "snap-op-queued", Status: StatusPending, StartedAt: start},
		Snapshots: []Item{{ItemID: "snap-old", Name: "old", Status: StatusAvailable, SizeBytes: 7}, {ItemID: "snap-op-queued", Name: "carried", Status: StatusPending}},
		Recent:    []Operation{{OperationID: "op-old", Kind: KindSnapshot, Status: StatusAvailable}},
		Queued:    &queued}

	h := newHarness(t)
	h.mockHypervisor()
	h.env.SetContinueAsNewSuggested(true)
	h.env.ExecuteWorkflow(VolumeWorkflow, VolumeInput{VolumeID: "vol1", State: st})
	require.True(t, h.env.IsWorkflowCompleted())
	var next VolumeInput
	continueAsNewInput(t, h.env.GetWorkflowError(), &next)
	require.NotNil(t, next.State)
	assert.Equal(t, spec, next.State.Spec)
	require.NotNil(t, next.State.Queued, "the queued request is carried")
	assert.Equal(t, queued, *next.State.Queued)
	assert.Len(t, next.State.Snapshots, 2)
	assert.Len(t, next.State.Recent, 1)

	// The next run (history fresh) starts the carried request and completes it.
	h2 := newHarness(t)
	h2.mockHypervisor()
	var after VolumeState
	h2.at(time.Minute, func() { after = h2.state() })
	h2.run(time.Hour, next)
	assert.Nil(t, after.Active)
	assert.Equal(t, StatusAvailable, findItem(after.Snapshots, "snap-op-queued").Status)
	assert.Equal(t, StatusAvailable, findItem(after.Snapshots, "snap-old").Status)
	assert.Len(t, after.Recent, 2)
}

func TestVolumeContinuesAsNewAfterTheRunningOperation(t *testing.T) {
	h := newHarness(t)
	// Suggested while the operation runs: the workflow waits for it to end before it continues-as-new.
	h.env.OnActivity(activities.CreateSnapshotName, mock.Anything, mock.Anything).After(time.Minute).
		Return(activities.SnapshotResult{SizeBytes: 1}, nil).Once()
	h.mockHypervisor()
	var o *reply
	var during VolumeState
	h.at(time.Second, func() { h.register(testSpec()) })
	h.at(2*time.Second, func() { o = h.request(OperationRequest{Kind: KindSnapshot, Name: "before"}) })
	h.at(30*time.Second, func() { h.env.SetContinueAsNewSuggested(true) })
	h.at(40*time.Second, func() { during = h.state() })
	h.env.ExecuteWorkflow(VolumeWorkflow, VolumeInput{VolumeID: "vol1"})
	require.True(t, h.env.IsWorkflowCompleted())
	requireAccepted(t, o)
	require.NotNil(t, during.Active, "still running after the suggestion")
	var next VolumeInput
	continueAsNewInput(t, h.env.GetWorkflowError(), &next)
	require.NotNil(t, next.State)
	assert.True(t, next.State.Registered)
	assert.Nil(t, next.State.Active, "never continued-as-new with a running child")
	assert.Equal(t, StatusAvailable, findItem(next.State.Snapshots, o.op.ItemID).Status)
	assert.False(t, next.State.CooldownUntil.IsZero(), "the cooldown travels with the state")
}

func TestOwnerContinueAsNewKeepsLeases(t *testing.T) {
	h := newOwnerHarness(t)
	leases := []Lease{{LeaseID: "op-a", VolumeID: "vol-a", Claimed: true, ExpiresAt: time.Now().Add(time.Hour)}}
	h.env.SetContinueAsNewSuggested(true)
	h.env.ExecuteWorkflow(OwnerWorkflow, OwnerInput{OwnerID: "acct-42", Leases: leases})
	var next OwnerInput
	continueAsNewInput(t, h.env.GetWorkflowError(), &next)
	assert.Equal(t, "acct-42", next.OwnerID)
	require.Len(t, next.Leases, 1)
	assert.Equal(t, "op-a", next.Leases[0].LeaseID)
	assert.True(t, next.Leases[0].Claimed)
}

// permitAnswers records the owner's answers to volumes (SignalPermit), by volume.
func (h *ownerHarness) permitAnswers() map[string][]PermitReply {
	answers := map[string][]PermitReply{}
	h.env.OnSignalExternalWorkflow(mock.Anything, mock.Anything, "", SignalPermit, mock.Anything).
		Run(func(args mock.Arguments) {
			answers[args.String(1)] = append(answers[args.String(1)], args.Get(4).(PermitReply))
		}).Return(nil)
	return answers
}

func (h *ownerHarness) ask(leaseID, volumeID string) {
	h.env.SignalWorkflow(SignalPermitRequest, PermitRequest{LeaseID: leaseID, VolumeID: volumeID, Limit: 3,
		TTL: 3 * time.Hour})
}

// A volume asks by signal and is answered by signal: granted (claimed at once) up to the limit, refused past
// it, granted again when it asks again for a permit it holds, and granted once a release frees a permit.
func TestOwnerAnswersPermitRequestsBySignal(t *testing.T) {
	h := newOwnerHarness(t)
	answers := h.permitAnswers()
	var held []Lease
	h.env.RegisterDelayedCallback(func() {
		for _, v := range []string{"a", "b", "c", "d"} {
			h.ask("op-"+v, "vol-"+v)
		}
		h.ask("op-a", "vol-a") // asked again (a retried activity)
	}, time.Second)
	// Asked permits are claimed: they outlive the one-minute claim window of acquired ones.
	h.env.RegisterDelayedCallback(func() { held = h.permits() }, 10*time.Minute)
	h.env.RegisterDelayedCallback(func() { h.env.SignalWorkflow(SignalRelease, ReleaseSignal{LeaseID: "op-b"}) },
		11*time.Minute)
	h.env.RegisterDelayedCallback(func() { h.ask("op-e", "vol-d") }, 12*time.Minute)
	h.env.RegisterDelayedCallback(func() { h.env.CancelWorkflow() }, time.Hour)
	h.env.ExecuteWorkflow(OwnerWorkflow, OwnerInput{OwnerID: "acct-42"})

	granted := PermitReply{Granted: true, Limit: 3}
	with := func(r PermitReply, lease string) PermitReply { r.LeaseID = lease; return r }
	assert.Equal(t, []PermitReply{with(granted, "op-a"), with(granted, "op-a")}, answers[VolumeWorkflowID("vol-a")])
	assert.Equal(t, []PermitReply{with(granted, "op-b")}, answers[VolumeWorkflowID("vol-b")])
	assert.Equal(t, []PermitReply{with(granted, "op-c")}, answers[VolumeWorkflowID("vol-c")])
	assert.Equal(t, []PermitReply{{LeaseID: "op-d", Limit: 3}, with(granted, "op-e")}, answers[VolumeWorkflowID("vol-d")])
	require.Len(t, held, 3)
	for _, l := range held {
		assert.True(t, l.Claimed, l.LeaseID)
	}
}

// A permit whose answer cannot be delivered (the volume's workflow is gone) is given back at once.
func TestOwnerTakesBackAPermitItCouldNotAnswer(t *testing.T) {
	h := newOwnerHarness(t)
	h.env.OnSignalExternalWorkflow(mock.Anything, VolumeWorkflowID("vol-gone"), "", SignalPermit, mock.Anything).
		Return(errors.New("workflow not found"))
	var after []Lease
	h.env.RegisterDelayedCallback(func() { h.ask("op-a", "vol-gone") }, time.Second)
	h.env.RegisterDelayedCallback(func() { after = h.permits() }, time.Minute)
	h.env.RegisterDelayedCallback(func() { h.env.CancelWorkflow() }, time.Hour)
	h.env.ExecuteWorkflow(OwnerWorkflow, OwnerInput{OwnerID: "acct-42"})
	assert.Empty(t, after)
}

// Scheduled runs refused at the limit queue at the owner, once each; each permit that frees (released or
// expired) is kept for the first run still waiting, which is told its turn: no other request takes it, the
// run's own does, and one the run does not take within turnTTL goes to the next. A run that can no longer be
// told (gone) is skipped for the next.
func TestOwnerTellsWaitingScheduledRunsTheirTurnInOrder(t *testing.T) {
	h := newOwnerHarness(t)
	answers := h.permitAnswers()
	var turns []string
	var toldAt []time.Duration
	start := h.env.Now()
	h.env.OnSignalExternalWorkflow(mock.Anything, "run-gone", "", SignalTurn, mock.Anything).
		Return(errors.New("workflow not found"))
	h.env.OnSignalExternalWorkflow(mock.Anything, mock.Anything, "", SignalTurn, mock.Anything).
		Run(func(args mock.Arguments) {
			turns = append(turns, args.String(1))
			toldAt = append(toldAt, h.env.Now().Sub(start))
		}).Return(nil)
	waiting := func(leaseID, volumeID, run string) {
		h.env.SignalWorkflow(SignalPermitRequest, PermitRequest{LeaseID: leaseID, VolumeID: volumeID, Limit: 3,
			TTL: 3 * time.Hour, Waiter: run})
	}
	at := func(d time.Duration, fn func()) { h.env.RegisterDelayedCallback(fn, d) }
	at(time.Second, func() {
		waiting("op-a", "vol-a", "run-a")
		waiting("op-b", "vol-b", "run-b")
		waiting("op-c", "vol-c", "run-c")
		waiting("op-d", "vol-d", "run-d")
		waiting("op-x", "vol-x", "run-gone")
		waiting("op-e", "vol-e", "run-e")
		waiting("op-d2", "vol-d", "run-d") // refused again: keeps its place
		h.ask("op-f", "vol-f")             // a manual request does not queue
	})
	at(10*time.Minute, func() { h.env.SignalWorkflow(SignalRelease, ReleaseSignal{LeaseID: "op-a"}) })
	at(10*time.Minute+5*time.Second, func() { h.ask("op-g", "vol-g") }) // the freed permit is run-d's
	at(10*time.Minute+10*time.Second, func() { waiting("op-d3", "vol-d", "run-d") })
	at(10*time.Minute+20*time.Second, func() { h.env.SignalWorkflow(SignalRelease, ReleaseSignal{LeaseID: "op-b"}) })
	at(10*time.Minute+25*time.Second, func() { h.env.SignalWorkflow(SignalRelease, ReleaseSignal{LeaseID: "op-b"}) })
	// run-e never asks: its permit is free again after turnTTL.
	at(12*time.Minute, func() { h.ask("op-h", "vol-h") })
	at(time.Hour, func() { h.env.CancelWorkflow() })
	h.env.ExecuteWorkflow(OwnerWorkflow, OwnerInput{OwnerID: "acct-42"})

	assert.Equal(t, []string{"run-d", "run-e"}, turns, "run-gone skipped; a release twice frees one permit")
	require.Len(t, toldAt, 2)
	assert.Less(t, toldAt[0], 10*time.Minute+5*time.Second)
	assert.Less(t, toldAt[1], 10*time.Minute+25*time.Second)
	granted := func(lease string) PermitReply { return PermitReply{LeaseID: lease, Granted: true, Limit: 3} }
	refused := func(lease string) PermitReply { return PermitReply{LeaseID: lease, Limit: 3} }
	assert.Equal(t, []PermitReply{refused("op-d"), refused("op-d2"), granted("op-d3")}, answers[VolumeWorkflowID("vol-d")])
	assert.Equal(t, []PermitReply{refused("op-f")}, answers[VolumeWorkflowID("vol-f")])
	assert.Equal(t, []PermitReply{refused("op-g")}, answers[VolumeWorkflowID("vol-g")], "kept for the run told its turn")
	assert.Equal(t, []PermitReply{granted("op-h")}, answers[VolumeWorkflowID("vol-h")], "a turn not taken frees its permit")
}

// Waiters outlive a continue-as-new, in order, and the next run tells them their turn.
func TestOwnerContinueAsNewKeepsItsWaiters(t *testing.T) {
	since := time.Now()
	waiters := []Waiter{{WorkflowID: "run-b", Since: since}, {WorkflowID: "run-c", Since: since}}
	lease := Lease{LeaseID: "op-a", VolumeID: "vol-a", Claimed: true, ExpiresAt: since.Add(time.Hour)}

	h := newOwnerHarness(t)
	h.env.SetContinueAsNewSuggested(true)
	h.env.ExecuteWorkflow(OwnerWorkflow, OwnerInput{OwnerID: "acct-42", Leases: []Lease{lease}, Waiters: waiters})
	var next OwnerInput
	continueAsNewInput(t, h.env.GetWorkflowError(), &next)
	require.Len(t, next.Waiters, 2)
	assert.Equal(t, "run-b", next.Waiters[0].WorkflowID)
	assert.Equal(t, "run-c", next.Waiters[1].WorkflowID)

	h = newOwnerHarness(t)
	var turns []string
	h.env.OnSignalExternalWorkflow(mock.Anything, mock.Anything, "", SignalTurn, mock.Anything).
		Run(func(args mock.Arguments) { turns = append(turns, args.String(1)) }).Return(nil)
	next.Leases[0].ExpiresAt = h.env.Now().Add(time.Hour)
	next.Waiters[0].Since, next.Waiters[1].Since = h.env.Now(), h.env.Now()
	h.env.RegisterDelayedCallback(func() { h.env.SignalWorkflow(SignalRelease, ReleaseSignal{LeaseID: "op-a"}) },
		time.Minute)
	h.env.RegisterDelayedCallback(func() { h.env.CancelWorkflow() }, 2*time.Minute)
	h.env.ExecuteWorkflow(OwnerWorkflow, next)
	assert.Equal(t, []string{"run-b", "run-c"}, turns, "run-b does not ask: after turnTTL it is run-c's turn")
}

// A volume continues-as-new at its own bound on history length, far below the server's suggestion (4 Ki
// events): a volume pushed out of the worker's cache is replayed from its whole history at its next task, and
// in a fleet larger than the cache most volumes are. It still waits for the running operation to end.
func TestVolumeBoundsItsHistoryItself(t *testing.T) {
	h := newHarness(t)
	h.env.OnActivity(activities.CreateSnapshotName, mock.Anything, mock.Anything).After(time.Minute).
		Return(activities.SnapshotResult{SizeBytes: 1}, nil).Once()
	h.mockHypervisor()
	var o *reply
	var during VolumeState
	h.at(time.Second, func() { h.register(testSpec()) })
	h.at(2*time.Second, func() { o = h.request(OperationRequest{Kind: KindSnapshot, Name: "before"}) })
	h.at(30*time.Second, func() { h.env.SetCurrentHistoryLength(volumeHistoryBound) })
	h.at(40*time.Second, func() { during = h.state() })
	h.at(time.Hour, func() { h.env.CancelWorkflow() }) // what a volume that never continues-as-new gets
	h.env.ExecuteWorkflow(VolumeWorkflow, VolumeInput{VolumeID: "vol1"})
	require.True(t, h.env.IsWorkflowCompleted())
	requireAccepted(t, o)
	require.NotNil(t, during.Active, "still running past the bound")
	var next VolumeInput
	continueAsNewInput(t, h.env.GetWorkflowError(), &next)
	require.NotNil(t, next.State)
	assert.Nil(t, next.State.Active)
	assert.Equal(t, StatusAvailable, findItem(next.State.Snapshots, o.op.ItemID).Status)
}
