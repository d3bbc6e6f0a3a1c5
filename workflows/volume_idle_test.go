package workflows

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"

	"github.com/holdfast/holdfast/activities"
)

// Scheduled runs refused VolumeBusy are told their turn once, when the operation holding the volume ends:
// a run asking twice is told once, a run asking while the volume is free is told at once, an empty or
// oversized ID is ignored, and the volume keeps at most maxIdleWaiters.
func TestVolumeTellsWaitingRunsWhenFree(t *testing.T) {
	h := newHarness(t)
	h.env.OnActivity(activities.CreateSnapshotName, mock.Anything, mock.Anything).After(10*time.Minute).
		Return(activities.SnapshotResult{SizeBytes: 4096, Consistency: activities.ConsistencyCrash}, nil).Once()
	told := map[string][]time.Duration{}
	start := h.env.Now()
	h.env.OnSignalExternalWorkflow(mock.Anything, mock.Anything, "", SignalTurn, mock.Anything).
		Return(func(_, workflowID, _, _ string, _ any) error {
			told[workflowID] = append(told[workflowID], h.env.Now().Sub(start).Round(time.Minute))
			return nil
		})
	h.mockHypervisor()
	var during, after VolumeState
	var snap *reply
	h.at(time.Second, func() { h.register(testSpec()) })
	h.at(2*time.Second, func() { snap = h.request(OperationRequest{Kind: KindSnapshot}) })
	h.at(time.Minute, func() {
		h.env.SignalWorkflow(SignalWaitIdle, "run-a")
		h.env.SignalWorkflow(SignalWaitIdle, "run-b")
		h.env.SignalWorkflow(SignalWaitIdle, "run-a") // asked again (a retried activity): told once
		h.env.SignalWorkflow(SignalWaitIdle, "")
		h.env.SignalWorkflow(SignalWaitIdle, strings.Repeat("x", maxWaiterLength+1))
		for i := range maxIdleWaiters {
			h.env.SignalWorkflow(SignalWaitIdle, fmt.Sprintf("run-%02d", i))
		}
	})
	h.at(2*time.Minute, func() { during = h.state() })
	h.at(20*time.Minute, func() {
		after = h.state()
		h.env.SignalWorkflow(SignalWaitIdle, "run-late") // the volume is free: told at once
	})
	h.run(time.Hour, VolumeInput{})

	requireAccepted(t, snap)
	require.Len(t, during.IdleWaiters, maxIdleWaiters, "bounded")
	assert.Equal(t, []string{"run-a", "run-b"}, during.IdleWaiters[:2], "first come, first kept")
	assert.Empty(t, after.IdleWaiters, "told and forgotten")
	assert.Equal(t, []time.Duration{10 * time.Minute}, told["run-a"], "told once, when the snapshot ended")
	assert.Equal(t, []time.Duration{10 * time.Minute}, told["run-b"])
	assert.Equal(t, []time.Duration{20 * time.Minute}, told["run-late"])
	assert.Len(t, told, maxIdleWaiters+1, "the kept runs and the late one; nothing for the ignored IDs")
	assert.NotContains(t, told, fmt.Sprintf("run-%02d", maxIdleWaiters-2), "past the bound: not kept")
}
