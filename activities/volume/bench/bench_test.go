// Package bench measures the volume drivers' point-in-time read speed against the platform's own baseline
// measured in the same run (dd of the image file, rbd export), the cost of an incremental read (1 %
// changed) against a full one, and the same for whole backups through the engine (a full backup of the
// first snapshot, then an incremental of the second with the driver's changed extents, to a local
// directory). Run with `make bench-drivers`; it prints tables and never asserts timings.
package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/holdfast/holdfast/activities/backup"
	fsstore "github.com/holdfast/holdfast/activities/backup/fs"
	"github.com/holdfast/holdfast/activities/volume"
	"github.com/holdfast/holdfast/activities/volume/file"
	"github.com/holdfast/holdfast/activities/volume/rbd"
	"github.com/holdfast/holdfast/activities/volume/volumetest"
)

const mib = int64(1) << 20

func size() int64 {
	if v, err := strconv.Atoi(os.Getenv("HOLDFAST_BENCH_SIZE_MIB")); err == nil && v > 0 {
		return int64(v) * mib
	}
	return 1024 * mib
}

// fill writes the whole volume (so that every byte is allocated) with data that differs from cell to cell
// and does not compress (a full backup then does all its work: nothing deduplicates), snapshots it as s1,
// rewrites 1 % of it in 64 KiB pieces of new data spread over the volume, and snapshots s2.
func fill(b *testing.B, d volume.Driver, vol volume.Ref) {
	ctx := context.Background()
	w, err := d.CreateVolume(ctx, vol, size())
	if err != nil {
		b.Fatal(err)
	}
	rng := rand.NewChaCha8([32]byte{1})
	buf := make([]byte, 4*mib)
	for off := int64(0); off < size(); off += int64(len(buf)) {
		_, _ = rng.Read(buf)
		if _, err := w.WriteAt(buf, off); err != nil {
			b.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		b.Fatal(err)
	}
	if _, err := d.CreateSnapshot(ctx, vol, "s1"); err != nil {
		b.Fatal(err)
	}
	w, err = d.OpenWriter(ctx, vol)
	if err != nil {
		b.Fatal(err)
	}
	piece := make([]byte, 64<<10)
	pieces := size() / 100 / int64(len(piece))
	stride := size() / pieces
	for k := int64(0); k < pieces; k++ {
		_, _ = rng.Read(piece)
		if _, err := w.WriteAt(piece, k*stride); err != nil {
			b.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		b.Fatal(err)
	}
	if _, err := d.CreateSnapshot(ctx, vol, "s2"); err != nil {
		b.Fatal(err)
	}
}

// readExtents reads exts of the snapshot in 4 MiB requests and returns the bytes read.
func readExtents(b *testing.B, r volume.Reader, exts []volume.Extent) int64 {
	buf := make([]byte, 4*mib)
	var total int64
	for _, e := range exts {
		for off := e.Offset; off < e.End(); off += int64(len(buf)) {
			n := min(int64(len(buf)), e.End()-off)
			if _, err := r.ReadAt(buf[:n], off); err != nil {
				b.Fatal(err)
			}
			total += n
		}
	}
	return total
}

type result struct {
	driver                 string
	readMBs, baseMBs       float64
	fullSec, changedSec    float64
	changedBytes, baseline string
	backups                backupResult
}

// backupResult is a full backup of s1 and an incremental of s2 on top of it, through the engine.
type backupResult struct {
	fullSec, incSec    float64
	diffSec            float64 // of incSec, asking the driver for the changed extents
	commitSec          float64 // of incSec, the commit (chunks confirmed, manifest written)
	incRead, incStored int64   // bytes the incremental read from the volume and added to the store
}

// countingReader counts the bytes read through it.
type countingReader struct {
	io.ReaderAt
	n atomic.Int64
}

func (c *countingReader) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.ReaderAt.ReadAt(p, off)
	c.n.Add(int64(n))
	return n, err
}

// storedBytes sums the sizes of the objects under prefix.
func storedBytes(b *testing.B, st backup.Store, prefix string) int64 {
	var n int64
	if err := st.List(context.Background(), prefix, func(oi backup.ObjectInfo) error { n += oi.Size; return nil }); err != nil {
		b.Fatal(err)
	}
	return n
}

// backups backs up s1 in full and s2 as an incremental of it into a fresh local store under dir, as the
// agent does: with the driver's changed extents when hint (qcow2, RBD), else reading s2 whole (a raw file:
// the engine compares each cell with its parent's).
func backups(b *testing.B, d volume.Driver, vol volume.Ref, s2 volume.Reader, dir string, hint bool) backupResult {
	ctx := context.Background()
	storeDir := filepath.Join(dir, "store")
	_ = os.RemoveAll(storeDir)
	defer os.RemoveAll(storeDir)
	st, err := fsstore.New(fsstore.Config{Path: storeDir})
	if err != nil {
		b.Fatal(err)
	}
	e, err := backup.New(st, backup.Options{Logger: slog.New(slog.DiscardHandler), Concurrency: benchConcurrency()})
	if err != nil {
		b.Fatal(err)
	}
	s1, err := d.OpenSnapshot(ctx, vol, "s1")
	if err != nil {
		b.Fatal(err)
	}
	defer s1.Close()
	// Each timed backup starts with nothing dirty in the page cache: what the fill or the backup before it
	// wrote is written back first, instead of in the middle of the next measurement.
	syscall.Sync()
	t0 := time.Now()
	if _, err := e.Backup(ctx, backup.BackupRequest{VolumeID: "bench", BackupID: "b1", Source: s1, Size: s1.Size()}); err != nil {
		b.Fatal(err)
	}
	full := time.Since(t0)
	before := storedBytes(b, st, "volumes/bench/chunks/")

	syscall.Sync()
	t0 = time.Now()
	var changed []backup.Extent
	if hint {
		exts, err := s2.Changed(ctx, "s1")
		if err != nil {
			b.Fatal(err)
		}
		changed = make([]backup.Extent, len(exts))
		for i, x := range exts {
			changed[i] = backup.Extent{Offset: x.Offset, Length: x.Length}
		}
	}
	diff := time.Since(t0)
	src := &countingReader{ReaderAt: s2}
	var commitAt time.Time
	progress := func(p backup.Progress) {
		if p.Phase == backup.PhaseCommit && commitAt.IsZero() {
			commitAt = time.Now()
		}
	}
	if _, err := e.Backup(ctx, backup.BackupRequest{VolumeID: "bench", BackupID: "b2", Source: src, Size: s2.Size(),
		Parent: "b1", Changed: changed, Progress: progress}); err != nil {
		b.Fatal(err)
	}
	return backupResult{fullSec: full.Seconds(), incSec: time.Since(t0).Seconds(), diffSec: diff.Seconds(),
		commitSec: time.Since(commitAt).Seconds(), incRead: src.n.Load(),
		incStored: storedBytes(b, st, "volumes/bench/chunks/") - before}
}

func measure(b *testing.B, name string, d volume.Driver, vol volume.Ref, dir string, baseline []string) result {
	ctx := context.Background()
	fill(b, d, vol)
	r, err := d.OpenSnapshot(ctx, vol, "s2")
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	whole := []volume.Extent{{Offset: 0, Length: r.Size()}}
	readExtents(b, r, whole) // warm the same caches the baseline will find warm

	t0 := time.Now()
	alloc, err := r.Allocated(ctx)
	if err != nil {
		b.Fatal(err)
	}
	n := readExtents(b, r, alloc)
	full := time.Since(t0)

	t0 = time.Now()
	changed, err := r.Changed(ctx, "s1")
	if err != nil {
		b.Fatal(err)
	}
	cn := readExtents(b, r, changed)
	inc := time.Since(t0)

	exec.Command(baseline[0], baseline[1:]...).Run() // warm-up, as for the driver
	t0 = time.Now()
	if out, err := exec.Command(baseline[0], baseline[1:]...).CombinedOutput(); err != nil {
		b.Fatalf("%v: %v: %s", baseline, err, out)
	}
	base := time.Since(t0)
	bk := backups(b, d, vol, r, dir, vol.Format != volume.FormatRaw)
	return result{
		backups:      bk,
		driver:       name,
		readMBs:      float64(n) / float64(mib) / full.Seconds(),
		baseMBs:      float64(size()) / float64(mib) / base.Seconds(),
		fullSec:      full.Seconds(),
		changedSec:   inc.Seconds(),
		changedBytes: fmt.Sprintf("%d MiB", cn/mib),
		baseline:     baseline[0] + " " + baseline[len(baseline)-1],
	}
}

func BenchmarkDrivers(b *testing.B) {
	var results []result
	uri := os.Getenv("HOLDFAST_LIBVIRT_URI")
	volumetest.RequireLibvirt(b, uri)
	dir := filepath.Join(os.Getenv("HOLDFAST_RUN_DIR"), "bench")
	if os.Getenv("HOLDFAST_RUN_DIR") == "" {
		dir = b.TempDir()
	}
	os.MkdirAll(dir, 0o755)
	fd := file.New(uri)
	for _, f := range []volume.Format{volume.FormatQCOW2, volume.FormatRaw} {
		vol := volume.Ref{Type: volume.TypeFile, Format: f, Path: filepath.Join(dir, "bench."+string(f))}
		_ = fd.DeleteVolume(context.Background(), vol)
		defer fd.DeleteVolume(context.Background(), vol)
		// dd of the image file itself: the fastest a host can read those bytes.
		results = append(results, measure(b, "file/"+string(f), fd, vol, dir,
			[]string{"dd", "if=" + vol.Path, "of=/dev/null", "bs=4M"}))
	}

	conf, pool := os.Getenv("HOLDFAST_CEPH_CONF"), os.Getenv("HOLDFAST_CEPH_POOL")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	rd, err := rbd.New(ctx, rbd.Config{CephConf: conf, LibvirtURI: uri})
	cancel()
	volumetest.RequireService(b, err, "ceph", "services-up-ceph")
	defer rd.Close()
	vol := volume.Ref{Type: volume.TypeRBD, Pool: pool, Image: fmt.Sprintf("bench-%d", os.Getpid())}
	defer rd.DeleteVolume(context.Background(), vol)
	results = append(results, measure(b, "rbd", rd, vol, dir, []string{"sh", "-c",
		fmt.Sprintf("rbd -c %s export %s/%s@s2 - >/dev/null", conf, pool, vol.Image)}))

	fmt.Printf("\n%d MiB volume, point-in-time snapshot reads in 4 MiB requests (warm caches, same run)\n", size()/mib)
	fmt.Printf("%-12s %12s %14s %8s %12s %14s %10s\n", "driver", "read MiB/s", "baseline MiB/s", "ratio",
		"full read s", "1% changed s", "changed/full")
	for _, r := range results {
		fmt.Printf("%-12s %12.0f %14.0f %8.2f %12.2f %14.3f %10.3f   (baseline: %s; changed extents read: %s)\n",
			r.driver, r.readMBs, r.baseMBs, r.readMBs/r.baseMBs, r.fullSec, r.changedSec, r.changedSec/r.fullSec,
			r.baseline, r.changedBytes)
	}
	fmt.Printf("\nbackups through the engine to a local directory: full backup of s1, then an incremental of s2 (1 %% rewritten in 64 KiB pieces): qcow2 and rbd with the driver's changed extents, raw read whole and compared\n")
	fmt.Printf("%-12s %14s %16s %12s %14s %10s %18s %12s %16s\n", "driver", "full backup s", "incremental s",
		"of it diff s", "of it commit s", "inc/full", "incremental read", "read/volume", "added to store")
	for _, r := range results {
		k := r.backups
		fmt.Printf("%-12s %14.2f %16.3f %12.3f %14.3f %10.3f %14d MiB %11.2f%% %12.1f MiB\n", r.driver, k.fullSec,
			k.incSec, k.diffSec, k.commitSec, k.incSec/k.fullSec, k.incRead/mib, 100*float64(k.incRead)/float64(size()), float64(k.incStored)/float64(mib))
	}
}

func benchConcurrency() int {
	n, _ := strconv.Atoi(os.Getenv("HOLDFAST_BENCH_CONCURRENCY"))
	return n
}
