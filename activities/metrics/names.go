package metrics

import (
	"strings"
)

// Metric names emitted by workflows through the Temporal metrics handler. They
// are spelled in their final exposition form so that a reader grepping a
// dashboard query finds them here; the adapter's suffix rules leave them as
// they are.
const (
	operationsStartedName    = "holdfast_operations_started_total"
	operationsFinishedName   = "holdfast_operations_finished_total"
	operationDurationName    = "holdfast_operation_duration_seconds"
	operationsInFlightName   = "holdfast_operations_in_flight"
	ownerInFlightName        = "holdfast_owner_operations_in_flight"
	retainedBytesName        = "holdfast_retained_bytes"
	lastSuccessfulBackupName = "holdfast_last_successful_backup_timestamp_seconds"

	// ScheduledRunsName counts policy-scheduled runs by policy, result (accepted, rejected, failed) and
	// rejection type; emitted by ScheduledRunWorkflow so a rejected night is alerted, never silent.
	ScheduledRunsName = "holdfast_scheduled_runs_total"

	// replicatedBytesName counts stored (compressed, encrypted) bytes replication copied into a backup
	// storage, by destination storage; scrubDamagedName counts damaged backups scrubs found, by storage.
	// The agent records both directly in Prometheus (Metrics), not through workflows.
	replicatedBytesName = "holdfast_replicated_bytes_total"
	scrubDamagedName    = "holdfast_scrub_damaged_backups_total"

	// conflictsName counts instruments the adapter refused because their
	// exposed name is already used by a metric of another type. It is
	// emitted by the adapter itself, so a conflict is visible on /metrics
	// instead of failing the whole scrape.
	conflictsName = "holdfast_sdk_metric_conflicts_total"
)

// Label names. The spec fixes them as bare nouns (kind, result, hypervisor,
// owner, volume, type); they hold the IDs the rest of Holdfast calls
// hypervisor_id, owner_id and volume_id.
const (
	labelKind       = "kind"
	labelResult     = "result"
	labelHypervisor = "hypervisor"
	labelOwner      = "owner"
	labelVolume     = "volume"
	labelType       = "type"
	labelStorage    = "storage"
)

// Operation results, the values of the result label.
const (
	ResultCompleted = "completed"
	ResultFailed    = "failed"
	ResultAborted   = "aborted"
)

// operationDurationBuckets reach past two hours because a full backup of a
// large volume over a throttled link legitimately takes that long; the SDK's
// default buckets would put every such backup in +Inf.
var operationDurationBuckets = []float64{1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 28800}

// defaultTimerBuckets cover both the SDK's millisecond RPC and workflow-task
// latencies and its activity latencies, which for Holdfast's long-running
// copy activities are minutes to hours.
var defaultTimerBuckets = []float64{
	0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
	1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 7200,
}

// spec describes a metric Holdfast itself emits through the Temporal handler.
type spec struct {
	help string
	// labels is the complete label set. Tags outside it are dropped: the
	// handler a workflow gets from workflow.GetMetricsHandler already carries
	// the SDK's namespace, task_queue, workflow_type... tags, and keeping them
	// would split one gauge (say retained bytes of a volume) into one series
	// per workflow type that ever set it, each keeping a stale value.
	labels []string
	// upDown makes Counter(name) add to a gauge instead of a counter. The
	// MetricsHandler interface has no Add on gauges, and an in-flight count
	// is the sum of many workflows' +1/-1, which no single workflow knows.
	upDown  bool
	buckets []float64
}

var specs = map[string]spec{
	operationsStartedName: {
		help:   "Operations (snapshot, backup, restore, delete...) started, by kind.",
		labels: []string{labelKind},
	},
	operationsFinishedName: {
		help:   "Operations finished, by kind and result (completed, failed, aborted).",
		labels: []string{labelKind, labelResult},
	},
	operationDurationName: {
		help:    "Wall-clock duration of finished operations, by kind and result.",
		labels:  []string{labelKind, labelResult},
		buckets: operationDurationBuckets,
	},
	operationsInFlightName: {
		help:   "Operations running per hypervisor, as this worker saw them start. Sum across workers; never negative (an end this worker did not see start is not counted).",
		labels: []string{labelHypervisor},
		upDown: true,
	},
	ownerInFlightName: {
		help:   "Operations running per owner, as this worker saw them start. Sum across workers; never negative (an end this worker did not see start is not counted).",
		labels: []string{labelOwner},
		upDown: true,
	},
	retainedBytesName: {
		help:   "Bytes retained for a volume, by kind (snapshot, backup).",
		labels: []string{labelVolume, labelKind},
	},
	lastSuccessfulBackupName: {
		help:   "Unix time of the volume's last successful backup.",
		labels: []string{labelVolume},
	},
	conflictsName: {
		help:   "Temporal SDK instruments dropped because their Prometheus name is already used by a metric of another type.",
		labels: []string{"metric"},
	},
}

// sanitizeName maps name onto Prometheus' metric name rules
// ([a-zA-Z_:][a-zA-Z0-9_:]*) by replacing every other byte with '_'. The SDK
// only emits valid names today; this guards against tags-in-names from
// contrib code and against our own typos producing an unscrapable family.
func sanitizeName(name string) string {
	if name == "" {
		return "_"
	}
	var b strings.Builder
	b.Grow(len(name) + 1)
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '_', c == ':':
		case c >= '0' && c <= '9':
			if i == 0 {
				b.WriteByte('_')
			}
		default:
			c = '_'
		}
		b.WriteByte(c)
	}
	return b.String()
}

// sanitizeLabel maps a tag key onto Prometheus' label name rules: no ':'
// and no leading "__", which is reserved for Prometheus' own labels.
func sanitizeLabel(key string) string {
	l := strings.ReplaceAll(sanitizeName(key), ":", "_")
	for strings.HasPrefix(l, "__") {
		l = l[1:]
	}
	return l
}

// counterName gives counters the _total suffix exactly once, so helpers may
// pass the final name and SDK counters (which have no suffix) get one.
func counterName(name string) string {
	if strings.HasSuffix(name, "_total") {
		return name
	}
	return name + "_total"
}

// timerName names a timer's histogram in its unit, seconds.
func timerName(name string) string {
	if strings.HasSuffix(name, "_seconds") {
		return name
	}
	return name + "_seconds"
}
