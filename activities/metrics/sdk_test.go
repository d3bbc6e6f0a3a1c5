package metrics

import (
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

// sdkRootTags are the tags the Temporal client puts on every metric
// (metrics.RootTags), so tests see what the real SDK hands the adapter.
var sdkRootTags = map[string]string{
	"namespace":     "default",
	"client_name":   "temporal_go",
	"worker_type":   "none",
	"workflow_type": "none",
	"activity_type": "none",
	"task_queue":    "none",
}

func TestSDKHandlerCountersAndGauges(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := NewSDKHandler(reg)

	// No tags: the suffix _total is added once.
	h.Counter("temporal_request").Inc(2)
	h.Counter("temporal_request").Inc(3)
	h.Counter("temporal_request").Inc(-7) // ignored: counters never go down
	h.Counter("already_total").Inc(1)

	// WithTags chains override earlier values and keep the rest.
	q := h.WithTags(map[string]string{"namespace": "default", "task_queue": "q1"}).
		WithTags(map[string]string{"namespace": "prod"})
	q.Counter("temporal_activity_execution_failed").Inc(1)
	// One name, a wider tag set: its own series in the same family.
	q.WithTags(map[string]string{"failure_reason": "timeout"}).Counter("temporal_activity_execution_failed").Inc(4)
	// An empty value is an absent label, so this is the first series again.
	q.WithTags(map[string]string{"failure_reason": ""}).Counter("temporal_activity_execution_failed").Inc(10)

	// Gauges keep the last value, with the name untouched.
	p := h.WithTags(map[string]string{"poller_type": "workflow_task"})
	p.Gauge("temporal_num_pollers").Update(3)
	p.Gauge("temporal_num_pollers").Update(5)

	// Names and label names are sanitized to Prometheus' rules.
	h.WithTags(map[string]string{"my.tag": "v", "__reserved": "r", "9lives": "x"}).Counter("weird-name.v1").Inc(1)

	// A gauge whose name is already a counter's would break the scrape: it
	// is dropped and counted.
	h.Gauge("temporal_request_total").Update(42)

	want := `
# HELP already_total Temporal SDK metric already_total.
# TYPE already_total counter
already_total 1
# HELP holdfast_sdk_metric_conflicts_total Temporal SDK instruments dropped because their Prometheus name is already used by a metric of another type.
# TYPE holdfast_sdk_metric_conflicts_total counter
holdfast_sdk_metric_conflicts_total{metric="temporal_request_total"} 1
# HELP temporal_activity_execution_failed_total Temporal SDK metric temporal_activity_execution_failed_total.
# TYPE temporal_activity_execution_failed_total counter
temporal_activity_execution_failed_total{namespace="prod",task_queue="q1"} 11
temporal_activity_execution_failed_total{failure_reason="timeout",namespace="prod",task_queue="q1"} 4
# HELP temporal_num_pollers Temporal SDK metric temporal_num_pollers.
# TYPE temporal_num_pollers gauge
temporal_num_pollers{poller_type="workflow_task"} 5
# HELP temporal_request_total Temporal SDK metric temporal_request_total.
# TYPE temporal_request_total counter
temporal_request_total 5
# HELP weird_name_v1_total Temporal SDK metric weird_name_v1_total.
# TYPE weird_name_v1_total counter
weird_name_v1_total{_9lives="x",_reserved="r",my_tag="v"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}

func TestSDKHandlerTimers(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := NewSDKHandler(reg).WithTags(sdkRootTags)

	wt := h.WithTags(map[string]string{"workflow_type": "Backup", "worker_type": "WorkflowWorker"})
	wt.Timer("temporal_workflow_task_execution_latency").Record(20 * time.Millisecond)
	wt.Timer("temporal_workflow_task_execution_latency").Record(2 * time.Second)
	// Already in seconds: no second suffix.
	h.Timer("custom_wait_seconds").Record(90 * time.Minute)

	fams := scrape(t, reg)

	wantLabels := map[string]string{
		"namespace": "default", "client_name": "temporal_go", "activity_type": "none",
		"task_queue": "none", "workflow_type": "Backup", "worker_type": "WorkflowWorker",
	}
	fam := fams["temporal_workflow_task_execution_latency_seconds"]
	if fam.GetType() != dto.MetricType_HISTOGRAM {
		t.Fatalf("type = %v, want histogram", fam.GetType())
	}
	m := sample(t, fams, "temporal_workflow_task_execution_latency_seconds", wantLabels)
	if got := m.GetHistogram().GetSampleCount(); got != 2 {
		t.Errorf("count = %d, want 2", got)
	}
	if got := m.GetHistogram().GetSampleSum(); math.Abs(got-2.02) > 1e-9 {
		t.Errorf("sum = %v, want 2.02", got)
	}
	b := bucketCounts(m)
	for le, want := range map[float64]uint64{0.01: 0, 0.025: 1, 1: 1, 2.5: 2, 7200: 2} {
		if b[le] != want {
			t.Errorf("bucket le=%v = %d, want %d", le, b[le], want)
		}
	}

	m = sample(t, fams, "custom_wait_seconds", sdkRootTags)
	if got := m.GetHistogram().GetSampleSum(); got != 5400 {
		t.Errorf("custom_wait_seconds sum = %v, want 5400", got)
	}
	if _, ok := fams["custom_wait_seconds_seconds"]; ok {
		t.Error("custom_wait_seconds got a second _seconds suffix")
	}
}

// TestSDKHandlerConcurrent is for -race: the SDK records from every poller
// and task goroutine while Prometheus scrapes.
func TestSDKHandlerConcurrent(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := NewSDKHandler(reg)
	const goroutines, n = 8, 500
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			tagged := h.WithTags(map[string]string{"g": string(rune('a' + g%2))})
			for range n {
				tagged.Counter("c").Inc(1)
				tagged.Timer("t").Record(time.Millisecond)
				tagged.Gauge("g").Update(1)
			}
		})
	}
	wg.Go(func() {
		for range 20 {
			if _, err := reg.Gather(); err != nil {
				t.Error(err)
			}
		}
	})
	wg.Wait()

	want := `
# HELP c_total Temporal SDK metric c_total.
# TYPE c_total counter
c_total{g="a"} 2000
c_total{g="b"} 2000
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "c_total"); err != nil {
		t.Fatal(err)
	}
	if got := testutil.CollectAndCount(h.c, "t_seconds"); got != 2 {
		t.Errorf("t_seconds series = %d, want 2", got)
	}
}
