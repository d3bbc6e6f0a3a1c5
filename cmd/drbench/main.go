// Command drbench measures the recovery time of a simulated site loss, in one run, and prints it next to the
// issue's goals and to a baseline measured in the same run. It is `make bench-dr`; it never runs under
// `go test`.
//
// The burned site is a bucket in local MinIO holding more than a thousand backups that the engine wrote with
// the labels Holdfast writes, all from hypervisor "hv-burned", which no configuration knows any more. The
// recovery site is a control plane started from nothing: a Temporal dev server with an empty database, the
// control worker, and the agent of hypervisor "hv2". The bench times the catalog rebuild (Client.Recover),
// then the restore of the big volumes onto hv2 (Client.Restore, all requested at once, run as many at a time
// as hv2's concurrency), against a plain parallel GET of the same chunk objects: the store's read rate,
// measured before the recovery site starts and again after the restores. The same restores through the
// engine alone, without control plane or agent, show how much of the gap is the engine's. Every restored
// volume must be byte-identical to its source, or the bench fails; the timings are reported, never asserted.
//
// It owns nothing but its scratch directory, a bucket it creates and removes, and the dev server it starts.
package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"golang.org/x/sync/errgroup"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/activities/backup"
	s3store "github.com/holdfast/holdfast/activities/backup/s3"
	"github.com/holdfast/holdfast/activities/backup/stores"
	"github.com/holdfast/holdfast/starter"
	"github.com/holdfast/holdfast/workers"
	"github.com/holdfast/holdfast/workers/config"
	"github.com/holdfast/holdfast/workflows"
)

// The recovery site's names.
const (
	storage    = "offsite"
	hypervisor = "hv2"
	// engineConcurrency is backup.Options' default chunks in flight, which the agent's engines use: the
	// baseline fetches as many objects at once per volume.
	engineConcurrency = 4
)

// The goals of the issue.
const (
	goalCatalogPer1000 = 60 * time.Second
	goalRestoreRatio   = 0.9
)

type options struct {
	endpoint    string
	dir         string
	temporalBin string
	seed        seedOptions
	// parallel is hv2's concurrency: how many restores (and baseline volumes) run at once.
	parallel int
}

func main() {
	var o options
	flag.StringVar(&o.endpoint, "endpoint", "http://127.0.0.1:9000", "S3 endpoint (local MinIO)")
	flag.StringVar(&o.dir, "dir", ".run/bench-dr", "scratch directory: source images, restores, dev server log")
	flag.StringVar(&o.temporalBin, "temporal", cmp.Or(os.Getenv("HOLDFAST_TEMPORAL_BIN"), "bin/temporal"),
		"Temporal CLI (make temporal)")
	flag.IntVar(&o.seed.volumes, "volumes", 64, "small volumes")
	flag.IntVar(&o.seed.backups, "backups", 16, "backups per small volume")
	flag.IntVar(&o.seed.big, "big", 4, "big volumes (one backup each), restored and timed")
	flag.Int64Var(&o.seed.bigSize, "big-size", 256<<20, "bytes of each big volume")
	flag.IntVar(&o.parallel, "parallel", 2, "hv2's concurrency: restores at once")
	flag.Parse()
	if err := run(context.Background(), o); err != nil {
		log.Fatal("drbench: ", err)
	}
}

func run(ctx context.Context, o options) error {
	if err := os.MkdirAll(o.dir, 0o755); err != nil {
		return err
	}
	// The storage's credentials come from the environment, as in production; make sets these.
	for k, v := range map[string]string{"HOLDFAST_TEST_S3_ACCESS_KEY": "holdfast",
		"HOLDFAST_TEST_S3_SECRET_KEY": "holdfast-secret"} {
		if os.Getenv(k) == "" {
			os.Setenv(k, v)
		}
	}
	keyFile := filepath.Join(o.dir, "backup.key")
	key := make([]byte, 32)
	_, _ = rand.NewChaCha8([32]byte{7}).Read(key)
	if err := os.WriteFile(keyFile, []byte(hex.EncodeToString(key)), 0o600); err != nil {
		return err
	}
	bucket := fmt.Sprintf("hf-bench-dr-%08x", rand.Uint32())
	// Recovered volumes keep the paths the seeded site gave them; restores go to a root of their own.
	restoreRoot, err := filepath.Abs(filepath.Join(o.dir, "restored"))
	if err != nil {
		return err
	}
	cfg, err := config.Parse(bytes.NewReader(fmt.Appendf(nil, `
backup_storages:
  %s:
    type: s3
    endpoint: %s
    bucket: %s
    path_style: true
    access_key_env: HOLDFAST_TEST_S3_ACCESS_KEY
    secret_key_env: HOLDFAST_TEST_S3_SECRET_KEY
    encryption_key_file: %s
hypervisor_groups: {recovery: {backup_storage: %s}}
hypervisors: {%s: {group: recovery, libvirt_uri: none, concurrency: %d, volume_roots: [/var/lib/holdfast/volumes, %q]}}
`, storage, o.endpoint, bucket, keyFile, storage, hypervisor, o.parallel, restoreRoot)))
	if err != nil {
		return err
	}

	// The burned site's store, written through the engine as the agents there wrote it.
	sc, err := workers.StoreConfig(cfg.Storages[storage])
	if err != nil {
		return err
	}
	st, err := s3store.New(ctx, sc.S3)
	if err != nil {
		return err
	}
	if err := st.EnsureBucket(ctx); err != nil {
		return err
	}
	defer removeBucket(st)
	eng, err := stores.OpenEngine(ctx, sc, backup.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	var t timings
	t0 := time.Now()
	seeded, err := seed(ctx, eng, o.dir, o.seed)
	if err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	t.seed = time.Since(t0)

	// The store's read rate, before the recovery site exists (so that it does not count in the RTO), and again
	// after the restores (the machine is shared: the mean of the two is compared, the drift is shown). MinIO
	// writes large objects around the page cache (O_DIRECT), so an untimed pass reads them into it first:
	// otherwise the first reader pays for the disk and every later one does not. Seeding's writes are flushed
	// first, so that no pass competes with their writeback.
	plain := func() (time.Duration, error) {
		return plainRestore(ctx, st, eng, seeded.big, filepath.Join(o.dir, "baseline"), o.parallel)
	}
	syscall.Sync()
	if _, err := plain(); err != nil {
		return fmt.Errorf("baseline: %w", err)
	}
	if t.baseline[0], err = plain(); err != nil {
		return fmt.Errorf("baseline: %w", err)
	}
	// The engine alone on the same restores: what the control plane and the agent add is the difference.
	if t.engineOnly, err = engineRestore(ctx, eng, seeded.big, filepath.Join(o.dir, "engine"), o.parallel); err != nil {
		return fmt.Errorf("engine-only restore: %w", err)
	}

	// The fire is out: an empty control plane at the recovery site.
	rtoStart := time.Now()
	site, err := startSite(ctx, cfg, o.temporalBin, hypervisor, filepath.Join(o.dir, "temporal.log"))
	if err != nil {
		return err
	}
	defer site.close()
	t.siteUp = time.Since(rtoStart)

	t0 = time.Now()
	rec, err := site.client.Recover(ctx, starter.RecoverOptions{Storage: storage, FallbackHypervisor: hypervisor})
	if err != nil {
		return fmt.Errorf("recover: %w", err)
	}
	t.catalog = time.Since(t0)
	// Volumes is not checked: one that straddles two catalog pages is counted on each.
	if rec.Manifests != seeded.manifests || rec.Registered != seeded.volumes || rec.Imported != seeded.manifests ||
		len(rec.Problems) > 0 {
		return fmt.Errorf("recover found %+v, want %d manifests of %d volumes, all registered and imported",
			*rec, seeded.manifests, seeded.volumes)
	}

	restoreDir, err := filepath.Abs(filepath.Join(o.dir, "restored"))
	if err != nil {
		return err
	}
	if err := os.RemoveAll(restoreDir); err != nil {
		return err
	}
	restoreStart := time.Now()
	if t.restore, t.restoreEach, err = restoreAll(ctx, site.client, seeded.big, restoreDir); err != nil {
		return err
	}
	t.rto = restoreStart.Sub(rtoStart) + t.restore
	for _, b := range seeded.big {
		if err := sameContent(b.source, restoredPath(restoreDir, b)); err != nil {
			return fmt.Errorf("volume %s restored wrong: %w", b.volumeID, err)
		}
	}
	_ = os.RemoveAll(restoreDir)
	if t.baseline[1], err = plain(); err != nil {
		return fmt.Errorf("baseline: %w", err)
	}

	report(o, seeded, t)
	return nil
}

func restoredPath(dir string, b bigVolume) string {
	return filepath.Join(dir, b.volumeID+"-restored.raw")
}

// restoreAll requests a new-volume restore of every big volume's backup on hv2, all at once (one goroutine
// each, as many operators or a script would), and waits for them all; hv2 runs as many at a time as its
// concurrency. The time is from the requests to the last operation's FinishedAt (the workflow's clock, on this
// host): polling's granularity does not count. For each restore it also returns how long the request took to
// be accepted and how long the operation ran, from its start to its end.
func restoreAll(ctx context.Context, c *starter.Client, big []bigVolume, dir string) (took time.Duration,
	each []restoreTiming, err error) {
	start := time.Now()
	each = make([]restoreTiming, len(big))
	finished := make([]time.Time, len(big))
	g, gctx := errgroup.WithContext(ctx)
	for i, b := range big {
		g.Go(func() error {
			started, err := c.Restore(gctx, b.volumeID, starter.RestoreRequest{BackupID: b.backupID,
				Mode: workflows.ModeNewVolume, NewVolumeID: b.volumeID + "-restored", HypervisorID: hypervisor,
				Storage: &activities.VolumeRef{Type: activities.VolumeFile, Path: restoredPath(dir, b)}})
			if err != nil {
				return fmt.Errorf("restore %s: %w", b.volumeID, err)
			}
			each[i].accepted = time.Since(start)
			op, err := c.Watch(gctx, started.OperationID, 500*time.Millisecond, nil) // as the CLI polls
			if err != nil {
				return err
			}
			if op.Error != nil {
				return fmt.Errorf("restore %s of volume %s: %s: %s", op.OperationID, b.volumeID, op.Error.Type,
					op.Error.Message)
			}
			finished[i], each[i].ran = *op.FinishedAt, op.FinishedAt.Sub(op.StartedAt)
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return 0, nil, err
	}
	for _, f := range finished {
		took = max(took, f.Sub(start))
	}
	return took, each, nil
}

// restoreTiming is one restore as its requester sees it.
type restoreTiming struct {
	accepted time.Duration // from the requests to this one's acceptance
	ran      time.Duration // the operation, from its start to its end (waiting for a slot on hv2 included)
}

// timings are what the bench measured.
type timings struct {
	seed, engineOnly, siteUp, catalog, restore, rto time.Duration
	restoreEach                                     []restoreTiming
	// baseline is the plain GETs' time before the recovery site started and after the restores.
	baseline [2]time.Duration
}

func report(o options, s *seeded, t timings) {
	var restored int64
	for _, b := range s.big {
		restored += b.size
	}
	mb := func(d time.Duration) float64 { return float64(restored) / 1e6 / d.Seconds() }
	baseline := (t.baseline[0] + t.baseline[1]) / 2
	per1000 := t.catalog.Seconds() * 1000 / float64(s.manifests)
	fmt.Printf("disaster-recovery benchmark: %d backups of %d volumes from hypervisor %s (%d objects, %.0f MiB, "+
		"encrypted) in %s, seeded in %.1f s\n", s.manifests, s.volumes, burnedHypervisor, s.objects,
		float64(s.stored)/(1<<20), o.endpoint, t.seed.Seconds())
	fmt.Printf("  restores: %d × %d MiB (3/4 random, 1/4 zeros), requested at once, %d at a time on %s, "+
		"%d chunks in flight each\n", len(s.big), o.seed.bigSize>>20, o.parallel, hypervisor, engineConcurrency)
	fmt.Printf("  baseline: the same chunk objects, plain GETs at the same concurrency, before / after: %.1f / %.1f MB/s\n",
		mb(t.baseline[0]), mb(t.baseline[1]))
	fmt.Printf("  each restore, accepted after / ran for, s:")
	for _, r := range t.restoreEach {
		fmt.Printf("  %.1f / %.1f", r.accepted.Seconds(), r.ran.Seconds())
	}
	fmt.Println()
	fmt.Printf("  %-46s %10s %10s %8s  %s\n", "measure", "holdfast", "baseline", "ratio", "goal")
	row := func(name string, v float64, base, ratio, goal string) {
		fmt.Printf("  %-46s %10.1f %10s %8s  %s\n", name, v, base, ratio, goal)
	}
	row("control plane start (dev server, workers), s", t.siteUp.Seconds(), "", "", "")
	row(fmt.Sprintf("catalog rebuild, %d manifests, s", s.manifests), t.catalog.Seconds(), "", "", "")
	row("catalog s per 1,000 manifests", per1000, "", "", fmt.Sprintf("< %.0f s", goalCatalogPer1000.Seconds()))
	row("restore MB/s ÷ plain parallel GET + write", mb(t.restore), fmt.Sprintf("%.1f", mb(baseline)),
		fmt.Sprintf("%.3f", baseline.Seconds()/t.restore.Seconds()), fmt.Sprintf("≥ %.1f", goalRestoreRatio))
	row("restore, engine alone (no control plane) ÷ same", mb(t.engineOnly), fmt.Sprintf("%.1f", mb(baseline)),
		fmt.Sprintf("%.3f", baseline.Seconds()/t.engineOnly.Seconds()), "")
	row("RTO: empty control plane → all restored, s", t.rto.Seconds(), "", "", "")
}

// removeBucket empties and removes the bench's bucket.
func removeBucket(st *s3store.Store) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	err := st.List(ctx, "", func(oi backup.ObjectInfo) error { return st.Delete(ctx, oi.Name) })
	if _, derr := st.Client().DeleteBucket(ctx, &s3.DeleteBucketInput{Bucket: aws.String(st.Bucket())}); err == nil {
		err = derr
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		log.Printf("drbench: bucket %s left behind: %v", st.Bucket(), err)
	}
}
