package starter_test

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/activities/billing"
	"github.com/holdfast/holdfast/activities/billing/contract"
	"github.com/holdfast/holdfast/starter"
	"github.com/holdfast/holdfast/starter/startertest"
	"github.com/holdfast/holdfast/workers"
	"github.com/holdfast/holdfast/workflows"
)

// billingConfig is the integration tests' config with priced plans.
const billingConfig = testConfig + `plans: {standard: {max_snapshots: 5, max_backups: 5, snapshot_credit_value: 7.2, backup_credit_value: 14.4}}
`

// billingQueue keeps the test's billing worker apart from the cluster's control worker (which does not
// register BillingWorkflow until it is wired).
const billingQueue = "holdfast-billing-test"

func startBillingWorker(t *testing.T, c *startertest.Cluster, ledger string) {
	acts, err := billing.New(c.Temporal, workers.QueryVolumeUsage(c.Temporal), billing.SinkConfig{LedgerPath: ledger})
	require.NoError(t, err)
	w := worker.New(c.Temporal, billingQueue, worker.Options{})
	w.RegisterWorkflow(workflows.BillingWorkflow)
	w.RegisterActivity(acts)
	require.NoError(t, w.Start())
	t.Cleanup(func() { w.Stop(); _ = acts.Close() })
}

func ledgerItems(t *testing.T, path string) map[string]contract.LineItem {
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	out := map[string]contract.LineItem{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var it contract.LineItem
		require.NoError(t, json.Unmarshal(sc.Bytes(), &it))
		_, dup := out[it.IdempotencyKey]
		require.False(t, dup, "key %s twice", it.IdempotencyKey)
		out[it.IdempotencyKey] = it
	}
	return out
}

func waitAvailable(t *testing.T, hf *starter.Client, volumeID string, kind workflows.Kind, n int) {
	startertest.WaitFor(t, volumeID+" "+string(kind)+" available", func() bool {
		v, err := hf.Volume(context.Background(), volumeID)
		if err != nil {
			return false
		}
		items := v.Snapshots
		if kind == workflows.KindBackup {
			items = v.Backups
		}
		count := 0
		for _, it := range items {
			if it.Status == workflows.StatusAvailable {
				count++
			}
		}
		return count == n && v.Active == nil
	})
}

func TestIntegrationBillingBillsAvailableItemsOncePerHour(t *testing.T) {
	hv := startertest.NewGatedHypervisor()
	hv.Gate.Open()
	c := startertest.NewCluster(t, billingConfig, map[string]activities.Hypervisor{"hv1": hv})
	ctx := context.Background()
	c.Register(t, "vol1", "acct-1")
	c.Register(t, "vol2", "acct-2")
	_, err := c.Client.Snapshot(ctx, "vol1", "s1")
	require.NoError(t, err)
	waitAvailable(t, c.Client, "vol1", workflows.KindSnapshot, 1)
	_, err = c.Client.Backup(ctx, "vol1", "b1")
	require.NoError(t, err)
	waitAvailable(t, c.Client, "vol1", workflows.KindBackup, 1)
	_, err = c.Client.Snapshot(ctx, "vol2", "s1")
	require.NoError(t, err)
	waitAvailable(t, c.Client, "vol2", workflows.KindSnapshot, 1)
	startertest.WaitFor(t, "both volumes visible", func() bool {
		resp, err := c.Temporal.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{
			Query: `WorkflowType = "VolumeWorkflow" AND ExecutionStatus = "Running"`})
		return err == nil && len(resp.GetExecutions()) == 2
	})

	ledger := filepath.Join(t.TempDir(), "ledger.jsonl")
	startBillingWorker(t, c, ledger)
	// The hour the items exist in (an hour bills what existed in it: a past hour would bill nothing here).
	hour := time.Now().UTC().Truncate(time.Hour)
	h := hour.Format("2006-01-02T15")
	bill := func(workflowID string) workflows.BillingResult {
		run, err := c.Temporal.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: workflowID, TaskQueue: billingQueue},
			workflows.BillingWorkflow, workflows.BillingInput{Hour: hour, PageSize: 1})
		require.NoError(t, err)
		var res workflows.BillingResult
		require.NoError(t, run.Get(ctx, &res))
		return res
	}
	first := bill("billing-test-1")
	assert.Equal(t, 2, first.Volumes)
	assert.Equal(t, 3, first.LedgerWritten)
	got := ledgerItems(t, ledger)
	require.Len(t, got, 3)
	snap := got["vol1/snapshot/"+h]
	assert.Equal(t, "acct-1", snap.OwnerID)
	assert.Equal(t, "standard", snap.PlanID)
	assert.InDelta(t, 1.0/1024, snap.GB, 1e-12, "GatedHypervisor snapshots are 1 MiB")
	hours := float64(workflows.HoursInMonth(hour))
	assert.InDelta(t, 1.0/1024*7.2/hours, snap.Credits, 1e-15)
	backup := got["vol1/backup/"+h]
	assert.InDelta(t, 1.0/64, backup.GB, 1e-12, "backups bill their 16 MiB stored, not 64 MiB size")
	assert.InDelta(t, 1.0/64*14.4/hours, backup.Credits, 1e-15)
	assert.Contains(t, got, "vol2/snapshot/"+h)
	before, err := os.ReadFile(ledger)
	require.NoError(t, err)

	second := bill("billing-test-2")
	assert.Equal(t, 3, second.LineItems)
	assert.Zero(t, second.LedgerWritten)
	after, err := os.ReadFile(ledger)
	require.NoError(t, err)
	assert.Equal(t, string(before), string(after), "re-running an hour adds nothing")
}

func TestIntegrationBillingScheduleIsHourlyBufferedAndBillsThePreviousHour(t *testing.T) {
	c := startertest.NewCluster(t, billingConfig, map[string]activities.Hypervisor{"hv1": startertest.NewGatedHypervisor()})
	ctx := context.Background()
	ledger := filepath.Join(t.TempDir(), "ledger.jsonl")
	startBillingWorker(t, c, ledger)
	opts := workers.BillingScheduleOptions{TaskQueue: billingQueue, Paused: true}
	require.NoError(t, workers.EnsureBillingSchedule(ctx, c.Temporal, opts))
	opts.CatchupWindow = 48 * time.Hour
	require.NoError(t, workers.EnsureBillingSchedule(ctx, c.Temporal, opts), "a second call updates")

	h := c.Temporal.ScheduleClient().GetHandle(ctx, workers.BillingScheduleID)
	desc, err := h.Describe(ctx)
	require.NoError(t, err)
	assert.Equal(t, enumspb.SCHEDULE_OVERLAP_POLICY_BUFFER_ALL, desc.Schedule.Policy.Overlap)
	assert.Equal(t, 48*time.Hour, desc.Schedule.Policy.CatchupWindow)
	require.Len(t, desc.Schedule.Spec.Intervals, 1)
	assert.Equal(t, time.Hour, desc.Schedule.Spec.Intervals[0].Every)
	action, ok := desc.Schedule.Action.(*client.ScheduleWorkflowAction)
	require.True(t, ok)
	assert.Equal(t, "BillingWorkflow", action.Workflow)

	// A backfilled action's nominal time is a past hour boundary: the run must bill the hour before it, read
	// from TemporalScheduledStartTime (the workflow's clock would give a different hour).
	nominal := time.Now().UTC().Truncate(time.Hour).Add(-30 * time.Hour)
	require.NoError(t, h.Backfill(ctx, client.ScheduleBackfillOptions{Backfill: []client.ScheduleBackfill{{
		Start: nominal.Add(-30 * time.Minute), End: nominal.Add(30 * time.Minute),
		Overlap: enumspb.SCHEDULE_OVERLAP_POLICY_BUFFER_ALL}}}))
	var runID, workflowID string
	startertest.WaitFor(t, "the scheduled run", func() bool {
		d, err := h.Describe(ctx)
		if err != nil || len(d.Info.RecentActions) == 0 {
			return false
		}
		r := d.Info.RecentActions[0].StartWorkflowResult
		workflowID, runID = r.WorkflowID, r.FirstExecutionRunID
		return true
	})
	var res workflows.BillingResult
	require.NoError(t, c.Temporal.GetWorkflow(ctx, workflowID, runID).Get(ctx, &res))
	assert.Equal(t, nominal.Add(-time.Hour), res.Hour)
}
