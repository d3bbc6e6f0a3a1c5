package export_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/activities/backup"
	"github.com/holdfast/holdfast/activities/backup/s3/s3test"
	"github.com/holdfast/holdfast/activities/export"
	"github.com/holdfast/holdfast/activities/export/nbd"
)

// BenchmarkInstantRestore (`make bench-instant`) measures the instant-restore mechanism on a backup in local
// MinIO (encrypted; half random, a quarter zeros, a quarter repeated), against a normal restore of the same
// backup to a file in the same run: the time from opening the backup to the first read through a new qcow2
// volume backed by its NBD export (process starts included), the latency of random 4 KiB reads through that
// volume before hydration and after, and the hydration's throughput (qemu-img rebase onto no backing)
// divided by the normal restore's. Sizes: HOLDFAST_BENCH_INSTANT_MIB (default "1024,4096"). It prints and
// never asserts timings.
func BenchmarkInstantRestore(b *testing.B) {
	sizes := []int64{1024, 4096}
	if v := os.Getenv("HOLDFAST_BENCH_INSTANT_MIB"); v != "" {
		sizes = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.ParseInt(f, 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			sizes = append(sizes, n)
		}
	}
	fmt.Printf("\ninstant restore from local MinIO (encrypted), qcow2 overlay on the backup's NBD export, vs a normal restore to a file (same run)\n")
	fmt.Printf("%-8s %12s %14s %14s %14s %14s %12s %12s %10s\n", "size", "first read s", "cold 4K p50 ms",
		"cold 4K p99 ms", "hydr. 4K p50 ms", "hydr. 4K p99 ms", "hydration s", "restore s", "hydr/rest")
	for _, mib := range sizes {
		r := instantRun(b, mib<<20)
		fmt.Printf("%-8s %12.2f %14.2f %14.2f %14.3f %14.3f %12.1f %12.1f %10.2f\n", fmt.Sprintf("%d MiB", mib),
			r.first.Seconds(), ms(r.cold, 50), ms(r.cold, 99), ms(r.warm, 50), ms(r.warm, 99),
			r.hydrate.Seconds(), r.restore.Seconds(), r.restore.Seconds()/r.hydrate.Seconds())
	}
}

type instantResult struct {
	first, hydrate, restore time.Duration
	cold, warm              []time.Duration
}

func ms(ds []time.Duration, pct int) float64 {
	s := slices.Clone(ds)
	slices.Sort(s)
	return float64(s[min(len(s)-1, len(s)*pct/100)].Microseconds()) / 1000
}

func instantRun(b *testing.B, size int64) instantResult {
	ctx := context.Background()
	dir := b.TempDir()
	st := s3test.NewStore(b, s3test.Servers()[0])
	e, err := backup.New(st, backup.Options{Key: bytes.Repeat([]byte{5}, 32), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	src := filepath.Join(dir, "src.raw")
	writeImage(b, src, size)
	f, err := os.Open(src)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := e.Backup(ctx, backup.BackupRequest{VolumeID: "vol", BackupID: "b1", Source: f, Size: size, SourceType: "raw"}); err != nil {
		b.Fatal(err)
	}
	f.Close()
	var res instantResult

	// Baseline: a normal restore of the same backup to a file.
	tgt, err := os.Create(filepath.Join(dir, "restored.raw"))
	if err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	if _, err := e.Restore(ctx, backup.RestoreRequest{VolumeID: "vol", BackupID: "b1", Target: tgt, Flush: tgt.Sync}); err != nil {
		b.Fatal(err)
	}
	res.restore = time.Since(t0)
	tgt.Close()
	os.Remove(tgt.Name())

	// Instant: open, export, create the overlay, read its first block.
	sockDir, err := os.MkdirTemp("", "instant")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	sock := filepath.Join(sockDir, "nbd.sock")
	overlay := filepath.Join(dir, "new.qcow2")
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	t0 = time.Now()
	r, err := e.OpenBackup(ctx, "vol", "b1", backup.ReaderOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	srv, err := nbd.New(nbd.Options{}, export.Backup("vol", r))
	if err != nil {
		b.Fatal(err)
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	go func() { _ = srv.Serve(sctx, l) }()
	qemu(b, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", "nbd+unix:///vol?socket="+sock, overlay)
	qemu(b, "qemu-io", "-f", "qcow2", "-c", "read 0 4k", overlay)
	res.first = time.Since(t0)

	// Random 4 KiB reads of regions no read has touched, then of the same regions hydrated.
	rng := rand.New(rand.NewPCG(7, 8))
	var cmds []string
	for range 200 {
		cmds = append(cmds, "-c", fmt.Sprintf("read %d 4k", 4096*rng.Int64N(size/4096)))
	}
	res.cold = readTimes(b, qemu(b, append(append([]string{"qemu-io", "-f", "qcow2"}, cmds...), overlay)...))
	t0 = time.Now()
	qemu(b, "qemu-img", "rebase", "-f", "qcow2", "-b", "", overlay)
	res.hydrate = time.Since(t0)
	res.warm = readTimes(b, qemu(b, append(append([]string{"qemu-io", "-f", "qcow2"}, cmds...), overlay)...))
	return res
}

// writeImage writes size bytes to path: per 4 MiB, half random, a quarter zeros, a quarter a repeated byte.
func writeImage(b *testing.B, path string, size int64) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	rng := rand.New(rand.NewPCG(1, 1))
	cell := make([]byte, 4<<20)
	for off := int64(0); off < size; off += int64(len(cell)) {
		for i := 0; i < len(cell)/2; i += 8 {
			v := rng.Uint64()
			for k := range 8 {
				cell[i+k] = byte(v >> (8 * k))
			}
		}
		clear(cell[len(cell)/2 : 3*len(cell)/4])
		for i := 3 * len(cell) / 4; i < len(cell); i++ {
			cell[i] = byte(off >> 22)
		}
		if _, err := f.WriteAt(cell, off); err != nil {
			b.Fatal(err)
		}
	}
}

// readTimes parses qemu-io's "… (x MiB/sec and y ops/sec)" per one-op read: the read took 1/y seconds
// (its "sec" figure is printed to the hundredth only).
func readTimes(b *testing.B, out string) []time.Duration {
	var ds []time.Duration
	for _, m := range regexp.MustCompile(`and ([0-9.]+) ops/sec`).FindAllStringSubmatch(out, -1) {
		ops, err := strconv.ParseFloat(m[1], 64)
		if err != nil || ops <= 0 {
			b.Fatalf("qemu-io ops/sec %q: %v", m[1], err)
		}
		ds = append(ds, time.Duration(float64(time.Second)/ops))
	}
	if len(ds) == 0 {
		b.Fatalf("no timings in qemu-io's output: %.200s", out)
	}
	return ds
}
