package metrics

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	// The API and the agent share one registry under `make run`: a second
	// New must not panic and must feed the same series.
	again := New(reg)

	m.BackupRead("hv1", 1000)
	again.BackupRead("hv1", 24)
	m.BackupRead("hv1", -5) // ignored instead of panicking
	m.BackupStored("hv1", 600)
	m.BackupDeduplicated("hv1", 400)
	m.RestoreWritten("hv2", 2048)
	m.Throughput("hv1", "backup", 1e6)
	m.Throughput("hv1", "backup", 2.5e6)
	m.GuardRailRejected("VolumeBusy")
	m.GuardRailRejected("VolumeBusy")
	m.GuardRailRejected("Cooldown")
	m.ThrottleWaited("hv1", 1500*time.Millisecond)
	m.ThrottleWaited("hv1", 500*time.Millisecond)

	var none *Metrics // components run without metrics in tests
	none.BackupRead("hv1", 1)
	none.GuardRailRejected("VolumeBusy")
	none.ThrottleWaited("hv1", time.Second)

	want := `
# HELP holdfast_backup_bytes_deduplicated_total Bytes backups did not store because the storage already held them, by hypervisor.
# TYPE holdfast_backup_bytes_deduplicated_total counter
holdfast_backup_bytes_deduplicated_total{hypervisor="hv1"} 400
# HELP holdfast_backup_bytes_read_total Bytes read from volumes by backups, by hypervisor.
# TYPE holdfast_backup_bytes_read_total counter
holdfast_backup_bytes_read_total{hypervisor="hv1"} 1024
# HELP holdfast_backup_bytes_stored_total Bytes backups wrote to backup storage (new chunks only), by hypervisor.
# TYPE holdfast_backup_bytes_stored_total counter
holdfast_backup_bytes_stored_total{hypervisor="hv1"} 600
# HELP holdfast_guard_rail_rejections_total Requests refused by a guard rail, by error type (VolumeBusy, Cooldown, SnapshotLimit...).
# TYPE holdfast_guard_rail_rejections_total counter
holdfast_guard_rail_rejections_total{type="Cooldown"} 1
holdfast_guard_rail_rejections_total{type="VolumeBusy"} 2
# HELP holdfast_restore_bytes_written_total Bytes restores wrote to volumes, by hypervisor.
# TYPE holdfast_restore_bytes_written_total counter
holdfast_restore_bytes_written_total{hypervisor="hv2"} 2048
# HELP holdfast_throttle_wait_seconds_total Time copies spent waiting on a hypervisor's rate or concurrency limit.
# TYPE holdfast_throttle_wait_seconds_total counter
holdfast_throttle_wait_seconds_total{hypervisor="hv1"} 2
# HELP holdfast_throughput_bytes_per_second Last observed data rate of a running copy, by hypervisor and kind (backup, restore).
# TYPE holdfast_throughput_bytes_per_second gauge
holdfast_throughput_bytes_per_second{hypervisor="hv1",kind="backup"} 2.5e+06
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}

func TestNewWithoutRegistry(t *testing.T) {
	m := New(nil)
	m.GuardRailRejected("VolumeBusy")
	if got := testutil.ToFloat64(m.guardRailRejection.WithLabelValues("VolumeBusy")); got != 1 {
		t.Fatalf("rejections = %v, want 1", got)
	}
}

func TestHandlerServesRuntimeAndScrapeMetrics(t *testing.T) {
	reg := NewRegistry()
	// Handler twice on one registry (worker and agent in one process).
	_ = Handler(reg)
	fams := scrape(t, reg)
	for _, name := range []string{"go_goroutines", "process_start_time_seconds"} {
		if _, ok := fams[name]; !ok {
			t.Errorf("%s missing from /metrics", name)
		}
	}
	l := map[string]string{"code": "200"}
	if got := sample(t, scrape(t, reg), "promhttp_metric_handler_requests_total", l).GetCounter().GetValue(); got < 1 {
		t.Errorf("promhttp_metric_handler_requests_total{code=200} = %v, want >= 1", got)
	}
}

func TestServe(t *testing.T) {
	addr := freeAddr(t)
	reg := NewRegistry()
	New(reg).GuardRailRejected("SnapshotLimit")

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, addr, reg) }()

	var body string
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics endpoint never came up: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(body, `holdfast_guard_rail_rejections_total{type="SnapshotLimit"} 1`) {
		t.Errorf("/metrics lacks the rejection:\n%s", body)
	}

	// The port is taken: a second Serve fails at once instead of serving
	// nothing.
	if err := Serve(t.Context(), addr, reg); err == nil {
		t.Error("Serve on a taken address returned nil")
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve after cancel = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after ctx ended")
	}
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Error("still listening after Serve returned")
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		t.Fatal(err)
	}
	return addr
}

func TestStorageMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New(reg)
	m.Replicated("offsite", 4096)
	m.Replicated("offsite", 0) // an idempotent re-run copies nothing
	m.ScrubDamaged("local", 0)
	m.ScrubDamaged("offsite", 2)
	var none *Metrics
	none.Replicated("offsite", 1)
	none.ScrubDamaged("offsite", 1)
	want := `
# HELP holdfast_replicated_bytes_total Stored bytes replication copied into a backup storage, by destination storage.
# TYPE holdfast_replicated_bytes_total counter
holdfast_replicated_bytes_total{storage="offsite"} 4096
# HELP holdfast_scrub_damaged_backups_total Damaged backups (chunks missing or corrupt, manifest unusable) found by scrubs, by storage.
# TYPE holdfast_scrub_damaged_backups_total counter
holdfast_scrub_damaged_backups_total{storage="local"} 0
holdfast_scrub_damaged_backups_total{storage="offsite"} 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), replicatedBytesName, scrubDamagedName); err != nil {
		t.Fatal(err)
	}
}
