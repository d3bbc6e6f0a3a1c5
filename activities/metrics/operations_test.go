package metrics

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"
)

var operationNames = []string{
	"holdfast_operations_started_total",
	"holdfast_operations_finished_total",
	"holdfast_operation_duration_seconds",
	"holdfast_operations_in_flight",
	"holdfast_owner_operations_in_flight",
	"holdfast_retained_bytes",
	"holdfast_last_successful_backup_timestamp_seconds",
}

// TestOperationHelpers records through a handler carrying the SDK's root
// and workflow tags, as workflow.GetMetricsHandler's does on a real worker,
// and expects exactly the documented names and labels.
func TestOperationHelpers(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := NewSDKHandler(reg).WithTags(sdkRootTags).
		WithTags(map[string]string{"workflow_type": "BackupWorkflow", "task_queue": "holdfast"})

	OperationStarted(h, "backup")
	OperationStarted(h, "backup")
	OperationStarted(h, "restore")
	InFlight(h, "hv1", "owner-a", 1)
	InFlight(h, "hv1", "owner-b", 1)
	InFlight(h, "hv2", "", 1)
	InFlight(h, "hv1", "owner-a", -1)
	OperationFinished(h, "backup", ResultCompleted, 90*time.Minute)
	OperationFinished(h, "backup", ResultFailed, 3*time.Second)
	Retained(h, "vol-1", "backup", 1<<30)
	Retained(h, "vol-1", "backup", 3<<30) // a gauge: last value wins
	Retained(h.WithTags(map[string]string{"workflow_type": "PruneWorkflow"}), "vol-1", "snapshot", 512)
	LastSuccessfulBackup(h, "vol-1", time.Unix(1_700_000_000, 500_000_000))

	want := `
# HELP holdfast_last_successful_backup_timestamp_seconds Unix time of the volume's last successful backup.
# TYPE holdfast_last_successful_backup_timestamp_seconds gauge
holdfast_last_successful_backup_timestamp_seconds{volume="vol-1"} 1.7000000005e+09
# HELP holdfast_operation_duration_seconds Wall-clock duration of finished operations, by kind and result.
# TYPE holdfast_operation_duration_seconds histogram
holdfast_operation_duration_seconds_bucket{kind="backup",result="completed",le="1"} 0
holdfast_operation_duration_seconds_bucket{kind="backup",result="completed",le="5"} 0
holdfast_operation_duration_seconds_bucket{kind="backup",result="completed",le="15"} 0
holdfast_operation_duration_seconds_bucket{kind="backup",result="completed",le="30"} 0
holdfast_operation_duration_seconds_bucket{kind="backup",result="completed",le="60"} 0
holdfast_operation_duration_seconds_bucket{kind="backup",result="completed",le="120"} 0
holdfast_operation_duration_seconds_bucket{kind="backup",result="completed",le="300"} 0
holdfast_operation_duration_seconds_bucket{kind="backup",result="completed",le="600"} 0
holdfast_operation_duration_seconds_bucket{kind="backup",result="completed",le="900"} 0
holdfast_operation_duration_seconds_bucket{kind="backup",result="completed",le="1800"} 0
holdfast_operation_duration_seconds_bucket{kind="backup",result="completed",le="3600"} 0
holdfast_operation_duration_seconds_bucket{kind="backup",result="completed",le="7200"} 1
holdfast_operation_duration_seconds_bucket{kind="backup",result="completed",le="14400"} 1
holdfast_operation_duration_seconds_bucket{kind="backup",result="completed",le="28800"} 1
holdfast_operation_duration_seconds_bucket{kind="backup",result="completed",le="+Inf"} 1
holdfast_operation_duration_seconds_sum{kind="backup",result="completed"} 5400
holdfast_operation_duration_seconds_count{kind="backup",result="completed"} 1
holdfast_operation_duration_seconds_bucket{kind="backup",result="failed",le="1"} 0
holdfast_operation_duration_seconds_bucket{kind="backup",result="failed",le="5"} 1
holdfast_operation_duration_seconds_bucket{kind="backup",result="failed",le="15"} 1
holdfast_operation_duration_seconds_bucket{kind="backup",result="failed",le="30"} 1
holdfast_operation_duration_seconds_bucket{kind="backup",result="failed",le="60"} 1
holdfast_operation_duration_seconds_bucket{kind="backup",result="failed",le="120"} 1
holdfast_operation_duration_seconds_bucket{kind="backup",result="failed",le="300"} 1
holdfast_operation_duration_seconds_bucket{kind="backup",result="failed",le="600"} 1
holdfast_operation_duration_seconds_bucket{kind="backup",result="failed",le="900"} 1
holdfast_operation_duration_seconds_bucket{kind="backup",result="failed",le="1800"} 1
holdfast_operation_duration_seconds_bucket{kind="backup",result="failed",le="3600"} 1
holdfast_operation_duration_seconds_bucket{kind="backup",result="failed",le="7200"} 1
holdfast_operation_duration_seconds_bucket{kind="backup",result="failed",le="14400"} 1
holdfast_operation_duration_seconds_bucket{kind="backup",result="failed",le="28800"} 1
holdfast_operation_duration_seconds_bucket{kind="backup",result="failed",le="+Inf"} 1
holdfast_operation_duration_seconds_sum{kind="backup",result="failed"} 3
holdfast_operation_duration_seconds_count{kind="backup",result="failed"} 1
# HELP holdfast_operations_finished_total Operations finished, by kind and result (completed, failed, aborted).
# TYPE holdfast_operations_finished_total counter
holdfast_operations_finished_total{kind="backup",result="completed"} 1
holdfast_operations_finished_total{kind="backup",result="failed"} 1
# HELP holdfast_operations_in_flight Operations running per hypervisor, as this worker saw them start. Sum across workers; never negative (an end this worker did not see start is not counted).
# TYPE holdfast_operations_in_flight gauge
holdfast_operations_in_flight{hypervisor="hv1"} 1
holdfast_operations_in_flight{hypervisor="hv2"} 1
# HELP holdfast_operations_started_total Operations (snapshot, backup, restore, delete...) started, by kind.
# TYPE holdfast_operations_started_total counter
holdfast_operations_started_total{kind="backup"} 2
holdfast_operations_started_total{kind="restore"} 1
# HELP holdfast_owner_operations_in_flight Operations running per owner, as this worker saw them start. Sum across workers; never negative (an end this worker did not see start is not counted).
# TYPE holdfast_owner_operations_in_flight gauge
holdfast_owner_operations_in_flight{owner="owner-a"} 0
holdfast_owner_operations_in_flight{owner="owner-b"} 1
# HELP holdfast_retained_bytes Bytes retained for a volume, by kind (snapshot, backup).
# TYPE holdfast_retained_bytes gauge
holdfast_retained_bytes{kind="backup",volume="vol-1"} 3.221225472e+09
holdfast_retained_bytes{kind="snapshot",volume="vol-1"} 512
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), operationNames...); err != nil {
		t.Fatal(err)
	}
}

// TestWorkflowRecordsThroughGetMetricsHandler runs the path workflows use:
// the worker's handler is an SDKHandler, and the workflow reaches it only
// through workflow.GetMetricsHandler. The agent-side Metrics share the
// registry, as they do in `make run`, and the scrape must stay consistent.
func TestWorkflowRecordsThroughGetMetricsHandler(t *testing.T) {
	reg := NewRegistry()
	agent := New(reg)
	agent.BackupRead("hv1", 4096)

	var suite testsuite.WorkflowTestSuite
	suite.SetMetricsHandler(NewSDKHandler(reg))
	env := suite.NewTestWorkflowEnvironment()
	start := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	env.SetStartTime(start)

	backup := func(ctx workflow.Context, volumeID string) error {
		h := workflow.GetMetricsHandler(ctx)
		began := workflow.Now(ctx)
		OperationStarted(h, "backup")
		InFlight(h, "hv1", "owner-a", 1)
		// The copy itself; the test clock skips ahead.
		if err := workflow.Sleep(ctx, 75*time.Minute); err != nil {
			return err
		}
		Retained(h, volumeID, "backup", 10<<20)
		LastSuccessfulBackup(h, volumeID, workflow.Now(ctx))
		InFlight(h, "hv1", "owner-a", -1)
		OperationFinished(h, "backup", ResultCompleted, workflow.Now(ctx).Sub(began))
		return nil
	}
	env.RegisterWorkflowWithOptions(backup, workflow.RegisterOptions{Name: "BackupWorkflow"})
	env.ExecuteWorkflow("BackupWorkflow", "vol-1")
	if !env.IsWorkflowCompleted() {
		t.Fatal("workflow did not complete")
	}
	if err := env.GetWorkflowError(); err != nil {
		t.Fatal(err)
	}

	fams := scrape(t, reg)
	check := func(name string, labels map[string]string, got, want float64) {
		t.Helper()
		if got != want {
			t.Errorf("%s%s = %v, want %v", name, labelString(labels), got, want)
		}
	}
	l := map[string]string{"kind": "backup"}
	check("holdfast_operations_started_total", l,
		sample(t, fams, "holdfast_operations_started_total", l).GetCounter().GetValue(), 1)
	l = map[string]string{"kind": "backup", "result": "completed"}
	check("holdfast_operations_finished_total", l,
		sample(t, fams, "holdfast_operations_finished_total", l).GetCounter().GetValue(), 1)
	d := sample(t, fams, "holdfast_operation_duration_seconds", l).GetHistogram()
	check("holdfast_operation_duration_seconds_count", l, float64(d.GetSampleCount()), 1)
	check("holdfast_operation_duration_seconds_sum", l, d.GetSampleSum(), 75*60)
	l = map[string]string{"hypervisor": "hv1"}
	check("holdfast_operations_in_flight", l,
		sample(t, fams, "holdfast_operations_in_flight", l).GetGauge().GetValue(), 0)
	l = map[string]string{"owner": "owner-a"}
	check("holdfast_owner_operations_in_flight", l,
		sample(t, fams, "holdfast_owner_operations_in_flight", l).GetGauge().GetValue(), 0)
	l = map[string]string{"volume": "vol-1", "kind": "backup"}
	check("holdfast_retained_bytes", l,
		sample(t, fams, "holdfast_retained_bytes", l).GetGauge().GetValue(), 10<<20)
	l = map[string]string{"volume": "vol-1"}
	check("holdfast_last_successful_backup_timestamp_seconds", l,
		sample(t, fams, "holdfast_last_successful_backup_timestamp_seconds", l).GetGauge().GetValue(),
		float64(start.Add(75*time.Minute).Unix()))
	l = map[string]string{"hypervisor": "hv1"}
	check("holdfast_backup_bytes_read_total", l,
		sample(t, fams, "holdfast_backup_bytes_read_total", l).GetCounter().GetValue(), 4096)
	if _, ok := fams["go_goroutines"]; !ok {
		t.Error("go_goroutines missing: NewRegistry should register the Go collector")
	}
}
