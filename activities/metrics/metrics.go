// Package metrics owns what Holdfast exposes on /metrics: the Temporal SDK's
// own metrics through SDKHandler, Holdfast's operation metrics that
// workflows record through that same handler (OperationStarted and friends),
// the agent and API metrics recorded directly in Prometheus (Metrics), and
// the HTTP endpoint serving them.
//
// It must never import workflows/ or activities/ (they import it), and
// workflow code must never call Metrics or Prometheus: only the helpers that
// take workflow.GetMetricsHandler(ctx) are replay-safe.
package metrics

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics records what the agent and the API observe directly: bytes moved,
// throughput, throttling and guard-rail rejections. Operation-level metrics
// are not here because they are owned by workflows (see OperationStarted);
// registering them twice would make the scrape fail.
//
// A nil *Metrics records nothing, so components and tests can run without one.
type Metrics struct {
	bytesRead          *prometheus.CounterVec
	bytesStored        *prometheus.CounterVec
	bytesDeduplicated  *prometheus.CounterVec
	restoreBytes       *prometheus.CounterVec
	throughput         *prometheus.GaugeVec
	guardRailRejection *prometheus.CounterVec
	throttleWait       *prometheus.CounterVec
	replicatedBytes    *prometheus.CounterVec
	scrubDamaged       *prometheus.CounterVec
	instantExports     *prometheus.GaugeVec
	hydrations         *prometheus.GaugeVec
}

// New registers Holdfast's agent and API metrics in reg. Calling it twice on
// one registry returns metrics sharing the first call's collectors, because
// `make run` starts the API and the agent in one process with one registry.
// A nil reg gives working but unexposed metrics.
func New(reg prometheus.Registerer) *Metrics {
	return &Metrics{
		bytesRead: counterVec(reg, "holdfast_backup_bytes_read_total",
			"Bytes read from volumes by backups, by hypervisor.", labelHypervisor),
		bytesStored: counterVec(reg, "holdfast_backup_bytes_stored_total",
			"Bytes backups wrote to backup storage (new chunks only), by hypervisor.", labelHypervisor),
		bytesDeduplicated: counterVec(reg, "holdfast_backup_bytes_deduplicated_total",
			"Bytes backups did not store because the storage already held them, by hypervisor.", labelHypervisor),
		restoreBytes: counterVec(reg, "holdfast_restore_bytes_written_total",
			"Bytes restores wrote to volumes, by hypervisor.", labelHypervisor),
		throughput: register(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "holdfast_throughput_bytes_per_second",
			Help: "Last observed data rate of a running copy, by hypervisor and kind (backup, restore).",
		}, []string{labelHypervisor, labelKind})),
		guardRailRejection: counterVec(reg, "holdfast_guard_rail_rejections_total",
			"Requests refused by a guard rail, by error type (VolumeBusy, Cooldown, SnapshotLimit...).", labelType),
		throttleWait: counterVec(reg, "holdfast_throttle_wait_seconds_total",
			"Time copies spent waiting on a hypervisor's rate or concurrency limit.", labelHypervisor),
		replicatedBytes: counterVec(reg, replicatedBytesName,
			"Stored bytes replication copied into a backup storage, by destination storage.", labelStorage),
		scrubDamaged: counterVec(reg, scrubDamagedName,
			"Damaged backups (chunks missing or corrupt, manifest unusable) found by scrubs, by storage.", labelStorage),
		instantExports: register(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: InstantExportsName,
			Help: "Backups an agent serves as the backing of instantly restored volumes, by hypervisor.",
		}, []string{labelHypervisor})),
		hydrations: register(reg, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: HydrationsName,
			Help: "Instantly restored volumes being hydrated now, by hypervisor.",
		}, []string{labelHypervisor})),
	}
}

// Instant restore gauges (dashboards/holdfast.json reads them).
const (
	InstantExportsName = "holdfast_instant_exports"
	HydrationsName     = "holdfast_hydrations_in_flight"
)

// InstantExports sets the number of backups hypervisor's agent serves to instantly restored volumes.
func (m *Metrics) InstantExports(hypervisor string, n int) {
	if m != nil {
		m.instantExports.WithLabelValues(hypervisor).Set(float64(n))
	}
}

// Hydrations adds delta to the hydrations in flight on hypervisor.
func (m *Metrics) Hydrations(hypervisor string, delta int) {
	if m != nil {
		m.hydrations.WithLabelValues(hypervisor).Add(float64(delta))
	}
}

func counterVec(reg prometheus.Registerer, name, help string, labels ...string) *prometheus.CounterVec {
	return register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels))
}

// register registers c, or returns the collector already registered under
// the same descriptors.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if reg == nil {
		return c
	}
	if err := reg.Register(c); err != nil {
		if are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err); ok {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		// Same name with other labels or help: a programming error that
		// would otherwise surface as a failing scrape in production.
		panic(err)
	}
	return c
}

// BackupRead counts bytes a backup read from a volume on hypervisor.
func (m *Metrics) BackupRead(hypervisor string, bytes int64) {
	if m != nil {
		addBytes(m.bytesRead, hypervisor, bytes)
	}
}

// BackupStored counts bytes a backup wrote to backup storage.
func (m *Metrics) BackupStored(hypervisor string, bytes int64) {
	if m != nil {
		addBytes(m.bytesStored, hypervisor, bytes)
	}
}

// BackupDeduplicated counts bytes a backup skipped because the storage
// already had them.
func (m *Metrics) BackupDeduplicated(hypervisor string, bytes int64) {
	if m != nil {
		addBytes(m.bytesDeduplicated, hypervisor, bytes)
	}
}

// RestoreWritten counts bytes a restore wrote to a volume on hypervisor.
func (m *Metrics) RestoreWritten(hypervisor string, bytes int64) {
	if m != nil {
		addBytes(m.restoreBytes, hypervisor, bytes)
	}
}

// addBytes ignores negative counts, which prometheus.Counter.Add would
// panic on; a miscounted progress report must not kill the agent.
func addBytes(v *prometheus.CounterVec, labelValue string, bytes int64) {
	if bytes > 0 {
		v.WithLabelValues(labelValue).Add(float64(bytes))
	}
}

// Throughput sets the last observed rate of a kind (backup, restore) of copy
// on hypervisor.
func (m *Metrics) Throughput(hypervisor, kind string, bytesPerSecond float64) {
	if m != nil {
		m.throughput.WithLabelValues(hypervisor, kind).Set(bytesPerSecond)
	}
}

// GuardRailRejected counts a request refused with the error type typ
// (the ApplicationError type, e.g. VolumeBusy).
func (m *Metrics) GuardRailRejected(typ string) {
	if m != nil {
		m.guardRailRejection.WithLabelValues(typ).Inc()
	}
}

// ThrottleWaited adds d to the time copies on hypervisor spent throttled.
func (m *Metrics) ThrottleWaited(hypervisor string, d time.Duration) {
	if m != nil && d > 0 {
		m.throttleWait.WithLabelValues(hypervisor).Add(d.Seconds())
	}
}

// Replicated counts stored bytes a replication copied into storage.
func (m *Metrics) Replicated(storage string, bytes int64) {
	if m != nil {
		addBytes(m.replicatedBytes, storage, bytes)
	}
}

// ScrubDamaged counts the damaged backups a scrub of storage found. It is called for every scrub, so the
// series exists (at 0) before the first damage and an alert can use increase() on it.
func (m *Metrics) ScrubDamaged(storage string, backups int) {
	if m != nil && backups >= 0 {
		m.scrubDamaged.WithLabelValues(storage).Add(float64(backups))
	}
}
