// Command drbench measures the recovery time of a simulated site loss, in one run, and prints it next to the
// issue's goals (in brackets) and a baseline measured in the same run. It is `make bench-dr`; it never runs
// under `go test`.
//
// The burned site is a bucket in local MinIO holding more than a thousand backups that the engine wrote with
// the labels Holdfast writes, all from hypervisor "hv-burned", which no configuration knows any more. The
// recovery site is a control plane started from nothing: a Temporal dev server with an empty database, the
// control worker, and the agent of hypervisor "hv2". The bench times the catalog rebuild (Client.Recover),
// then the restore of the big volumes onto hv2 (Client.Restore, all requested at once, run as many at a time
// as hv2's concurrency), against a plain parallel GET of the same chunk objects: the store's read rate.
// Every restored volume must be byte-identical to its source, or the bench fails; the timings are reported,
// never asserted.
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
	for k, v := range map[string]string{"HOLDFAST_TEST_S3_ACCESS_KEY": "holdfast", "HOLDFAST_TEST_S3_SECRET_KEY": "holdfast-secret"} {
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
hypervisors: {%s: {group: recovery, libvirt_uri: none, concurrency: %d}}
`, storage, o.endpoint, bucket, keyFile, storage, hypervisor, o.parallel)))
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
	t0 := time.Now()
	seeded, err := seed(ctx, eng, o.dir, o.seed)
	if err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	seedTook := time.Since(t0)

	// The store's read rate, before the recovery site exists (so that it does not count in the RTO).
	baseline, err := plainRestore(ctx, st, eng, seeded.big, filepath.Join(o.dir, "baseline"), o.parallel)
	if err != nil {
		return fmt.Errorf("baseline: %w", err)
	}

	// The fire is out: an empty control plane at the recovery site.
	rtoStart := time.Now()
	site, err := startSite(ctx, cfg, o.temporalBin, hypervisor, filepath.Join(o.dir, "temporal.log"))
	if err != nil {
		return err
	}
	defer site.close()
	siteUp := time.Since(rtoStart)

	t0 = time.Now()
	rec, err := site.client.Recover(ctx, starter.RecoverOptions{Storage: storage, FallbackHypervisor: hypervisor})
	if err != nil {
		return fmt.Errorf("recover: %w", err)
	}
	catalog := time.Since(t0)
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
	restoreTook, err := restoreAll(ctx, site.client, seeded.big, restoreDir)
	if err != nil {
		return err
	}
	rto := restoreStart.Sub(rtoStart) + restoreTook
	for _, b := range seeded.big {
		if err := sameContent(b.source, restoredPath(restoreDir, b)); err != nil {
			return fmt.Errorf("volume %s restored wrong: %w", b.volumeID, err)
		}
	}
	_ = os.RemoveAll(restoreDir)

	report(o, seeded, seedTook, baseline, siteUp, catalog, restoreTook, rto)
	return nil
}

func restoredPath(dir string, b bigVolume) string {
	return filepath.Join(dir, b.volumeID+"-restored.raw")
}

// restoreAll requests a new-volume restore of every big volume's backup on hv2 at once and waits for them
// all; hv2 runs as many at a time as its concurrency. The time is from the first request to the last
// operation's FinishedAt (the workflow's clock, on this host): polling's granularity does not count.
func restoreAll(ctx context.Context, c *starter.Client, big []bigVolume, dir string) (time.Duration, error) {
	start := time.Now()
	ops := make([]string, len(big))
	for i, b := range big {
		op, err := c.Restore(ctx, b.volumeID, starter.RestoreRequest{BackupID: b.backupID, Mode: workflows.ModeNewVolume,
			NewVolumeID: b.volumeID + "-restored", HypervisorID: hypervisor,
			Storage: &activities.VolumeRef{Type: "file", Path: restoredPath(dir, b)}})
		if err != nil {
			return 0, fmt.Errorf("restore %s: %w", b.volumeID, err)
		}
		ops[i] = op.OperationID
	}
	finished := make([]time.Time, len(ops))
	g, gctx := errgroup.WithContext(ctx)
	for i, id := range ops {
		g.Go(func() error {
			op, err := c.Watch(gctx, id, 250*time.Millisecond, nil)
			if err != nil {
				return err
			}
			if op.Error != nil {
				return fmt.Errorf("restore %s of volume %s: %s: %s", id, op.VolumeID, op.Error.Type, op.Error.Message)
			}
			finished[i] = *op.FinishedAt
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return 0, err
	}
	var took time.Duration
	for _, f := range finished {
		took = max(took, f.Sub(start))
	}
	return took, nil
}

func report(o options, s *seeded, seedTook, baseline, siteUp, catalog, restore, rto time.Duration) {
	var restored int64
	for _, b := range s.big {
		restored += b.size
	}
	mb := func(d time.Duration) float64 { return float64(restored) / 1e6 / d.Seconds() }
	per1000 := catalog.Seconds() * 1000 / float64(s.manifests)
	fmt.Printf("disaster-recovery benchmark: %d backups of %d volumes from hypervisor %s (%d objects, %.0f MiB, "+
		"encrypted) in %s, seeded in %.1f s\n", s.manifests, s.volumes, burnedHypervisor, s.objects,
		float64(s.stored)/(1<<20), o.endpoint, seedTook.Seconds())
	fmt.Printf("  restores: %d × %d MiB (3/4 random, 1/4 zeros), requested at once, %d at a time on %s, "+
		"%d chunks in flight each\n", len(s.big), o.seed.bigSize>>20, o.parallel, hypervisor, engineConcurrency)
	fmt.Printf("  %-46s %10s %10s %8s  %s\n", "measure", "holdfast", "baseline", "ratio", "goal")
	row := func(name string, v float64, base, ratio, goal string) {
		fmt.Printf("  %-46s %10.1f %10s %8s  %s\n", name, v, base, ratio, goal)
	}
	row("control plane start (dev server, workers), s", siteUp.Seconds(), "", "", "")
	row(fmt.Sprintf("catalog rebuild, %d manifests, s", s.manifests), catalog.Seconds(), "", "", "")
	row("catalog s per 1,000 manifests", per1000, "", "", fmt.Sprintf("< %.0f s", goalCatalogPer1000.Seconds()))
	row("restore MB/s ÷ plain parallel GET + write", mb(restore), fmt.Sprintf("%.1f", mb(baseline)),
		fmt.Sprintf("%.3f", baseline.Seconds()/restore.Seconds()), fmt.Sprintf("≥ %.1f", goalRestoreRatio))
	row("RTO: empty control plane → all restored, s", rto.Seconds(), "", "", "")
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
