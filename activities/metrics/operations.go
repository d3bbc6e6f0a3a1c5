package metrics

import (
	"time"

	"go.temporal.io/sdk/client"
)

// The helpers below are how workflows record Holdfast's operation metrics:
// workflow code must not touch Prometheus (it would count again on every
// replay), so it passes workflow.GetMetricsHandler(ctx), which drops records
// made while replaying, and SDKHandler exposes them under the names and
// labels documented on each helper. Any other client.MetricsHandler works
// too, with that handler's naming rules. Times and durations must come from
// workflow.Now, never time.Now.

// OperationStarted counts holdfast_operations_started_total{kind}.
func OperationStarted(h client.MetricsHandler, kind string) {
	h.WithTags(map[string]string{labelKind: kind}).Counter(operationsStartedName).Inc(1)
}

// OperationFinished counts holdfast_operations_finished_total{kind,result}
// and observes d in holdfast_operation_duration_seconds{kind,result}. result
// is ResultCompleted, ResultFailed or ResultAborted.
func OperationFinished(h client.MetricsHandler, kind, result string, d time.Duration) {
	t := h.WithTags(map[string]string{labelKind: kind, labelResult: result})
	t.Counter(operationsFinishedName).Inc(1)
	t.Timer(operationDurationName).Record(d)
}

// InFlight adds delta (+1 when an operation starts, -1 when it ends) to
// holdfast_operations_in_flight{hypervisor} and
// holdfast_owner_operations_in_flight{owner}. An empty hypervisor or owner
// skips that gauge, for operations that have none.
//
// Each worker process counts what it saw live; a workflow that moved to
// another worker ends there without having started there, so only the sum
// across workers is meaningful.
func InFlight(h client.MetricsHandler, hypervisor, owner string, delta int64) {
	if hypervisor != "" {
		h.WithTags(map[string]string{labelHypervisor: hypervisor}).Counter(operationsInFlightName).Inc(delta)
	}
	if owner != "" {
		h.WithTags(map[string]string{labelOwner: owner}).Counter(ownerInFlightName).Inc(delta)
	}
}

// Retained sets holdfast_retained_bytes{volume,kind} to bytes, the total a
// volume keeps as kind (snapshot or backup) after the operation.
func Retained(h client.MetricsHandler, volume, kind string, bytes int64) {
	h.WithTags(map[string]string{labelVolume: volume, labelKind: kind}).Gauge(retainedBytesName).Update(float64(bytes))
}

// LastSuccessfulBackup sets
// holdfast_last_successful_backup_timestamp_seconds{volume} to at, so an
// alert can fire on time() minus it.
func LastSuccessfulBackup(h client.MetricsHandler, volume string, at time.Time) {
	h.WithTags(map[string]string{labelVolume: volume}).Gauge(lastSuccessfulBackupName).
		Update(float64(at.UnixNano()) / 1e9)
}
