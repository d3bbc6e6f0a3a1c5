// Command fleetbench measures a fleet's night, in one run, and prints it as percentiles and as a ratio to a
// baseline measured in the same run. It is `make bench-fleet`; it never runs under `go test`.
//
// The fleet is N small file volumes (1 MiB sparse raw files) of 50 owners on one hypervisor, registered
// through the HTTP API by the panel. The night is, in turn: a burst of snapshot requests for every volume, as
// a scheduler client sends them (a bounded number in flight, refusals that mean "not now" retried after their
// Retry-After), each operation followed until it ends (its workflow awaited, then read once through the API);
// the same for backups (to an fs store in the scratch directory); and a night run by Holdfast itself, through
// a backup (-night) policy's ScheduledRunWorkflow per volume, started at once as the schedules would start
// them at the window's opening, the window closing 10 minutes (-window) later. The baseline is a trivial
// workflow of a snapshot's shape (one update accepted, one activity) on its own task queue in this process,
// with the control worker's options, started for every volume the same way. -phases picks the phases after
// registration. For each phase it reads the dev server's persistence requests (its Prometheus endpoint) and
// the CPU both processes used; at the end, the volume workflows' history sizes and the resident memory of
// the Temporal dev server and of this process, which hosts every worker.
//
// Limits are the spec's, except the cooldown, which is off: each phase requests one operation per volume,
// and a 5-minute cooldown between phases would only make the run longer. Timings are reported, never
// asserted; a phase that cannot set up (a refused registration, a policy the API does not take) fails the run.
//
// It owns nothing but its scratch directory (volumes, backups, the dev server's log) and the dev server it
// starts.
package main

import (
	"bytes"
	"cmp"
	"context"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/holdfast/holdfast/workers/config"
)

// The fleet's names, and the bench's fixed settings.
const (
	hypervisor = "hv1"
	storage    = "local"
	plan       = "standard"
	panelToken = "fleetbench-panel"
	volumeSize = 1 << 20
	// hvConcurrency is the agent's activities at once: above the default 2, since one hypervisor carries the
	// whole fleet here, and within what 2 cores take.
	hvConcurrency = 8
	// phaseTimeout bounds each phase, so that a stuck one ends the run instead of hanging it: 6 minutes, or
	// 400 ms per volume for large fleets (a 5,000-volume backup burst outran 150 ms per volume here).
	phaseTimeout    = 6 * time.Minute
	perVolumeBudget = 400 * time.Millisecond
)

type options struct {
	volumes, owners, concurrency int
	dir, temporalBin             string
	// window is how long the scheduled night's window stays open after the runs start; nightKind is what its
	// policy takes (snapshot or backup).
	window    time.Duration
	nightKind string
	// phases are the phases to run after registration, of baseline, snapshots, backups, night.
	phases map[string]bool
}

func (o options) phaseTimeout() time.Duration {
	return max(phaseTimeout, time.Duration(o.volumes)*perVolumeBudget)
}

// allPhases are the phases after registration, in the order they run.
var allPhases = []string{"baseline", "snapshots", "backups", "night"}

func main() {
	var o options
	flag.IntVar(&o.volumes, "n", 1000, "volumes")
	flag.IntVar(&o.owners, "owners", 50, "owners the volumes are spread over")
	flag.IntVar(&o.concurrency, "concurrency", 32, "requests in flight")
	flag.StringVar(&o.dir, "dir", ".run/bench-fleet", "scratch directory: volumes, backups, dev server log")
	flag.StringVar(&o.temporalBin, "temporal", cmp.Or(os.Getenv("HOLDFAST_TEMPORAL_BIN"), "bin/temporal"),
		"Temporal CLI (make temporal)")
	flag.DurationVar(&o.window, "window", 10*time.Minute, "the scheduled night's window, from the runs' start")
	flag.StringVar(&o.nightKind, "night", "backup", "what the scheduled night's policy takes: snapshot or backup")
	phases := flag.String("phases", strings.Join(allPhases, ","), "phases to run after registration, comma-separated")
	flag.Parse()
	o.phases = map[string]bool{}
	for _, ph := range strings.Split(*phases, ",") {
		if !slices.Contains(allPhases, ph) {
			log.Fatalf("fleetbench: unknown phase %q (of %s)", ph, strings.Join(allPhases, ", "))
		}
		o.phases[ph] = true
	}
	if err := run(context.Background(), o); err != nil {
		log.Fatal("fleetbench: ", err)
	}
}

// results are what the bench measured.
type results struct {
	registered   latencies
	registerTook time.Duration
	baseline     *baselineResult
	snapshots    *burst
	backups      *burst
	night        *night
	temporal     memory
	workers      memory
	total        time.Duration
	// persistence is the dev server's persistence requests in each phase (registration included); cpu the
	// CPU seconds the dev server and this process used in it.
	persistence map[string]persistence
	cpu         map[string][2]float64
	histories   histories
}

func run(ctx context.Context, o options) error {
	begin := time.Now()
	dir, err := filepath.Abs(o.dir)
	if err != nil {
		return err
	}
	// A previous run's volumes and backups would be refused or counted: start clean.
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	volumeRoot := filepath.Join(dir, "volumes")
	if err := os.MkdirAll(volumeRoot, 0o755); err != nil {
		return err
	}
	cfg, err := config.Parse(bytes.NewReader(fmt.Appendf(nil, `
limits: {cooldown: 0s}
backup_storages: {%s: {type: fs, path: %q}}
hypervisor_groups: {fleet: {backup_storage: %s}}
hypervisors: {%s: {group: fleet, libvirt_uri: none, concurrency: %d, volume_roots: [%q]}}
plans: {%s: {}}
`, storage, filepath.Join(dir, "backups"), storage, hypervisor, hvConcurrency, volumeRoot, plan)))
	if err != nil {
		return err
	}
	volumeIDs := make([]string, o.volumes)
	for i := range volumeIDs {
		volumeIDs[i] = fmt.Sprintf("vol-%05d", i)
		f, err := os.Create(filepath.Join(volumeRoot, volumeIDs[i]+".raw"))
		if err == nil {
			err = f.Truncate(volumeSize)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			return err
		}
	}

	s, err := startSite(ctx, cfg, o.temporalBin, filepath.Join(dir, "temporal.log"), panelToken)
	if err != nil {
		return err
	}
	defer s.close()
	p := newPanel(s.apiURL, panelToken, o.concurrency)
	var r results

	r.persistence, r.cpu = map[string]persistence{}, map[string][2]float64{}
	serverPID, err := childNamed("temporal")
	if err != nil {
		return err
	}
	cpu := func() (c [2]float64, err error) {
		if c[0], err = cpuSeconds(serverPID); err == nil {
			c[1], err = cpuSeconds(os.Getpid())
		}
		return c, err
	}
	// phase runs one phase and records the dev server's persistence requests and both processes' CPU during it.
	phase := func(name string, fn func() error) error {
		before, err := serverCounters(ctx, s.metricsURL)
		if err != nil {
			return fmt.Errorf("dev server metrics: %w", err)
		}
		cpuBefore, err := cpu()
		if err != nil {
			return err
		}
		log.Printf("fleetbench: %s", name)
		if err := fn(); err != nil {
			return err
		}
		after, err := serverCounters(ctx, s.metricsURL)
		if err != nil {
			return fmt.Errorf("dev server metrics: %w", err)
		}
		r.persistence[name] = since(before, after)
		cpuAfter, err := cpu()
		if err != nil {
			return err
		}
		r.cpu[name] = [2]float64{cpuAfter[0] - cpuBefore[0], cpuAfter[1] - cpuBefore[1]}
		return nil
	}
	if err := phase("registrations", func() error {
		start := time.Now()
		r.registered, err = register(ctx, p, volumeIDs, volumeRoot, o)
		r.registerTook = time.Since(start)
		return err
	}); err != nil {
		return err
	}
	if o.phases["baseline"] {
		if err := phase("baseline", func() error {
			r.baseline, err = runBaseline(ctx, s.server.Client(), volumeIDs, o.concurrency)
			return err
		}); err != nil {
			return fmt.Errorf("baseline: %w", err)
		}
	}
	for _, kind := range []string{"snapshots", "backups"} {
		if !o.phases[kind] {
			continue
		}
		if err := phase(kind, func() error {
			pctx, cancel := context.WithTimeout(ctx, o.phaseTimeout())
			defer cancel()
			b := runBurst(pctx, p, s.server.Client(), volumeIDs, kind)
			if kind == "snapshots" {
				r.snapshots = b
			} else {
				r.backups = b
			}
			return nil
		}); err != nil {
			return err
		}
	}
	if o.phases["night"] {
		if err := phase("night", func() error {
			// The night's runs may wait until the window closes; their operations end after it.
			pctx, cancel := context.WithTimeout(ctx, o.window+o.phaseTimeout())
			defer cancel()
			r.night, err = runNight(pctx, p, s.server.Client(), volumeIDs, o.nightKind, o.window, o.concurrency)
			return err
		}); err != nil {
			return fmt.Errorf("scheduled night: %w", err)
		}
	}

	if r.histories, err = readHistories(ctx, s.server.Client(), volumeIDs, o.concurrency); err != nil {
		return fmt.Errorf("volume histories: %w", err)
	}
	r.temporal, err = readMemory(serverPID)
	if err != nil {
		return fmt.Errorf("dev server memory: %w", err)
	}
	if r.workers, err = readMemory(os.Getpid()); err != nil {
		return err
	}
	r.total = time.Since(begin)
	report(o, r)
	return nil
}

// register PUTs every volume, owners taking turns, concurrency at a time; every registration must succeed.
func register(ctx context.Context, p *panel, volumeIDs []string, root string, o options) (latencies, error) {
	var l latencies
	var mu sync.Mutex
	err := forEach(indexes(len(volumeIDs)), o.concurrency, func(i int) error {
		id := volumeIDs[i]
		a, err := p.call(ctx, http.MethodPut, "/v1/volumes/"+id, map[string]any{"name": id,
			"owner_id": fmt.Sprintf("owner-%02d", i%o.owners), "hypervisor_id": hypervisor, "plan": plan,
			"storage": map[string]string{"type": "file", "path": filepath.Join(root, id+".raw")}})
		if err != nil {
			return err
		}
		if a.status != http.StatusOK {
			return fmt.Errorf("register %s: %d %s", id, a.status, a.body)
		}
		mu.Lock()
		l = append(l, a.took)
		mu.Unlock()
		return nil
	})
	return l, err
}

func report(o options, r results) {
	perSec := func(n int, d time.Duration) float64 { return float64(n) / max(d.Seconds(), 1e-9) }
	fmt.Printf("fleet benchmark: %d volumes (%d MiB sparse raw files) of %d owners on one hypervisor "+
		"(concurrency %d), %d requests in flight, owner limit %d, cooldown off; %.0f s in all\n",
		o.volumes, volumeSize>>20, o.owners, hvConcurrency, o.concurrency, config.DefaultOwnerLimit, r.total.Seconds())
	fmt.Printf("  latencies are p50 / p95 / p99 / max, ms, of each HTTP call (retries are calls of their own)\n\n")
	fmt.Printf("  %-40s %12s  %s\n", "measure", "value", "latency p50 / p95 / p99 / max, ms")
	row := func(name, value, lat string) { fmt.Printf("  %-40s %12s  %s\n", name, value, lat) }
	row("registrations/s", fmt.Sprintf("%.1f", perSec(len(r.registered), r.registerTook)), r.registered.summary())
	for _, b := range []*burst{r.snapshots, r.backups} {
		if b == nil {
			continue
		}
		row(b.kind+": calls (incl. retries)", fmt.Sprint(len(b.latency)), b.latency.summary())
		row(b.kind+": accepted / completed", fmt.Sprintf("%d / %d", b.accepted, b.completed), "")
		row(b.kind+": last accepted after, s", fmt.Sprintf("%.1f", b.lastAccept.Seconds()), "")
		row(b.kind+": burst (to last finished_at), s", fmt.Sprintf("%.1f", b.took().Seconds()), "")
		row(b.kind+": operations completed/s", fmt.Sprintf("%.2f", perSec(b.completed, b.took())), "")
		row(b.kind+": 5xx answers", fmt.Sprint(b.serverErrs), "")
		row(b.kind+": refusals by type", counts(b.rejections), "")
		if len(b.gaveUp) > 0 {
			row(b.kind+": never accepted, by last refusal", counts(b.gaveUp), "")
		}
		if len(b.failed) > 0 {
			row(b.kind+": operations that failed", counts(b.failed), "")
		}
	}
	if n := r.night; n != nil {
		row("night: policy attach/s", fmt.Sprintf("%.1f", perSec(len(n.attach), n.attachTook)), n.attach.summary())
		row("night: window closed after, s", fmt.Sprintf("%.0f", n.closesIn.Seconds()), "")
		row("night: runs accepted / missed", fmt.Sprintf("%d / %d", n.accepted, n.missed), "")
		if n.missed > 0 {
			row("night: missed by refusal", counts(n.missedBy), "")
		}
		row("night: attempts per accepted run p50/p95/max", fmt.Sprintf("%d / %d / %d", percentile(n.attempts, 50),
			percentile(n.attempts, 95), percentile(n.attempts, 100)), "")
		row("night: all runs returned after, s", fmt.Sprintf("%.1f", n.runsTook.Seconds()), "")
		row("night: all operations ended after, s", fmt.Sprintf("%.1f", n.lastEnd.Seconds()), "")
		row("night: operations completed", fmt.Sprint(n.completed), "")
		if len(n.failed) > 0 {
			row("night: operations that failed", counts(n.failed), "")
		}
	}
	if b := r.baseline; b != nil {
		row("baseline: burst (to last workflow end), s", fmt.Sprintf("%.1f", b.took.Seconds()),
			b.latency.summary()+" (update-with-start)")
		ratio := func(name string, d time.Duration) {
			row(name+" ÷ baseline", fmt.Sprintf("%.1f", d.Seconds()/b.took.Seconds()), "")
		}
		if r.snapshots != nil {
			ratio("snapshot burst", r.snapshots.took())
		}
		if r.backups != nil {
			ratio("backup burst", r.backups.took())
		}
		if r.night != nil {
			ratio("night", r.night.lastEnd)
		}
	}
	for _, ph := range append([]string{"registrations"}, allPhases...) {
		if pr, ok := r.persistence[ph]; ok {
			row(ph+": dev server persistence requests per volume", fmt.Sprintf("%.0f", pr.total()/float64(o.volumes)),
				pr.top(6))
		}
		if c, ok := r.cpu[ph]; ok {
			row(ph+": CPU s, dev server / workers + API", fmt.Sprintf("%.0f / %.0f", c[0], c[1]), "")
		}
	}
	row("volume workflow history p50 / max", "", r.histories.summary())
	mib := func(kib int64) string { return fmt.Sprintf("%.0f", float64(kib)/1024) }
	row("Temporal dev server RSS / peak, MiB", mib(r.temporal.rss)+" / "+mib(r.temporal.peak), "")
	row("workers + API (this process) RSS / peak, MiB", mib(r.workers.rss)+" / "+mib(r.workers.peak), "")
}

// counts is "Type=n Type=n", sorted by type, or "none".
func counts(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%d", k, m[k])
	}
	return strings.Join(parts, " ")
}
