// Command bench measures the backup engine against a plain S3 client on the same bytes, in one run, and
// prints ratios (issue 3's goals in brackets). It is `make bench-backup`; it never runs under `go test`.
//
// It owns nothing but its scratch directory and a bucket it creates and removes.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/s3/manager"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/holdfast/holdfast/activities/backup"
	s3store "github.com/holdfast/holdfast/activities/backup/s3"
)

func main() {
	endpoint := flag.String("endpoint", "http://127.0.0.1:9000", "S3 endpoint (local MinIO)")
	dir := flag.String("dir", ".run/bench-backup", "scratch directory for the image and restores")
	size := flag.Int64("size", 2<<30, "image size in bytes")
	throttle := flag.Float64("rate", 50e6, "throttled run: bytes/s")
	throttleSize := flag.Int64("throttle-size", 512<<20, "bytes read in the throttled run")
	conc := flag.Int("concurrency", 8, "engine chunks in flight")
	flag.Parse()
	ctx := context.Background()
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		log.Fatal(err)
	}
	img := filepath.Join(*dir, "image.raw")
	if err := makeImage(img, *size); err != nil {
		log.Fatal(err)
	}
	src, err := os.Open(img)
	if err != nil {
		log.Fatal(err)
	}
	defer src.Close()

	cfg := s3store.Config{Endpoint: *endpoint, Bucket: fmt.Sprintf("hf-bench-%08x", rand.Uint32()), PathStyle: true,
		AccessKey: env("HOLDFAST_TEST_S3_ACCESS_KEY", "holdfast"), SecretKey: env("HOLDFAST_TEST_S3_SECRET_KEY", "holdfast-secret")}
	st, err := s3store.New(ctx, cfg)
	if err != nil {
		log.Fatal(err)
	}
	if err := st.EnsureBucket(ctx); err != nil {
		log.Fatal(err)
	}
	defer cleanup(st)
	quiet := slog.New(slog.DiscardHandler)
	eng, err := backup.New(st, backup.Options{Concurrency: *conc, Logger: quiet})
	if err != nil {
		log.Fatal(err)
	}
	mb := func(n int64, d time.Duration) float64 { return float64(n) / 1e6 / d.Seconds() }

	// Baseline: one plain concurrent multipart PUT of the image (16 MiB parts, 4 in flight), then GET + write.
	up := manager.NewUploader(st.Client(), func(u *manager.Uploader) {
		u.PartSize, u.Concurrency = 16<<20, 4
		u.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
	})
	t0 := time.Now()
	if _, err := up.Upload(ctx, &s3.PutObjectInput{Bucket: aws.String(cfg.Bucket), Key: aws.String("baseline/image"),
		Body: io.NewSectionReader(src, 0, *size)}); err != nil {
		log.Fatal(err)
	}
	basePut := time.Since(t0)
	t0 = time.Now()
	if err := plainGet(ctx, st, cfg.Bucket, filepath.Join(*dir, "baseline.out")); err != nil {
		log.Fatal(err)
	}
	baseGet := time.Since(t0)

	// Engine: first backup, unchanged second backup (with and without a changed-extent hint), restore.
	resetPeak()
	t0 = time.Now()
	m1, err := eng.Backup(ctx, backup.BackupRequest{VolumeID: "bench", BackupID: "b1", Source: src, Size: *size})
	if err != nil {
		log.Fatal(err)
	}
	first := time.Since(t0)
	backupPeak := readPeak()
	t0 = time.Now()
	if _, err := eng.Backup(ctx, backup.BackupRequest{VolumeID: "bench", BackupID: "b2", Source: src, Size: *size, Parent: "b1"}); err != nil {
		log.Fatal(err)
	}
	second := time.Since(t0)
	t0 = time.Now()
	if _, err := eng.Backup(ctx, backup.BackupRequest{VolumeID: "bench", BackupID: "b3", Source: src, Size: *size, Parent: "b2",
		Changed: []backup.Extent{}}); err != nil {
		log.Fatal(err)
	}
	secondHint := time.Since(t0)

	out := filepath.Join(*dir, "restore.out")
	_ = os.Remove(out)
	f, err := os.Create(out)
	if err != nil {
		log.Fatal(err)
	}
	resetPeak()
	t0 = time.Now()
	if _, err := eng.Restore(ctx, backup.RestoreRequest{VolumeID: "bench", BackupID: "b1", Target: f, TargetZeroed: true}); err != nil {
		log.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		log.Fatal(err)
	}
	restore := time.Since(t0)
	restorePeak := readPeak()
	f.Close()
	if err := sameFile(img, out); err != nil {
		log.Fatalf("restore differs: %v", err)
	}
	_ = os.Remove(out)
	_ = os.Remove(filepath.Join(*dir, "baseline.out"))

	// Throttled: a fresh volume (so chunks are really uploaded), limited to -rate bytes/s.
	teng, err := backup.New(st, backup.Options{Concurrency: *conc, Logger: quiet, Limiter: backup.NewLimiter(*throttle)})
	if err != nil {
		log.Fatal(err)
	}
	tsize := min(*throttleSize, *size)
	t0 = time.Now()
	if _, err := teng.Backup(ctx, backup.BackupRequest{VolumeID: "bench-throttled", BackupID: "b1", Source: src, Size: tsize}); err != nil {
		log.Fatal(err)
	}
	throttled := mb(tsize, time.Since(t0)) * 1e6

	fmt.Printf("backup engine benchmark: %.2f GiB image (1/2 random, 1/4 zero, 1/4 repeated), %s, %d chunks in flight\n",
		float64(*size)/(1<<30), *endpoint, *conc)
	fmt.Printf("  stored: %d chunks, %.0f MiB\n", len(m1.Chunks), float64(m1.StoredBytes)/(1<<20))
	fmt.Printf("  %-46s %10s %10s %8s  %s\n", "measure", "engine", "baseline", "ratio", "goal")
	row := func(name string, a, b float64, unit, goal string) {
		fmt.Printf("  %-46s %10.1f %10.1f %8.3f  %s %s\n", name, a, b, a/b, goal, unit)
	}
	row("backup MB/s ÷ plain multipart PUT", mb(*size, first), mb(*size, basePut), "MB/s", "≥ 0.9")
	row("restore MB/s ÷ plain GET + write", mb(*size, restore), mb(*size, baseGet), "MB/s", "≥ 0.9")
	row("unchanged 2nd backup time ÷ 1st (full read)", second.Seconds(), first.Seconds(), "s", "≤ 0.1")
	row("unchanged 2nd backup time ÷ 1st (CBT hint)", secondHint.Seconds(), first.Seconds(), "s", "≤ 0.1")
	row("throttled achieved ÷ configured", throttled/1e6, *throttle/1e6, "MB/s", "0.9–1.05")
	fmt.Printf("  %-46s %10.1f %10s %8s  < 256 MiB\n", "peak RSS, first backup (MiB)", float64(backupPeak)/(1<<20), "", "")
	fmt.Printf("  %-46s %10.1f %10s %8s  < 256 MiB\n", "peak RSS, restore (MiB)", float64(restorePeak)/(1<<20), "", "")
}

func env(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// makeImage writes (once) an image of 4 MiB blocks in the pattern random, random, zero, repeated.
func makeImage(path string, size int64) error {
	if fi, err := os.Stat(path); err == nil && fi.Size() == size {
		return nil
	}
	f, err := os.Create(path + ".tmp")
	if err != nil {
		return err
	}
	defer f.Close()
	const cs = backup.DefaultChunkSize
	rng := rand.NewChaCha8([32]byte{42})
	block := make([]byte, cs)
	repeated := bytes.Repeat([]byte("holdfast repeated block "), cs/24+1)[:cs]
	for i := int64(0); i*cs < size; i++ {
		n := min(cs, size-i*cs)
		switch i % 4 {
		case 0, 1:
			_, _ = rng.Read(block)
			if _, err := f.WriteAt(block[:n], i*cs); err != nil {
				return err
			}
		case 2: // a hole
		case 3:
			if _, err := f.WriteAt(repeated[:n], i*cs); err != nil {
				return err
			}
		}
	}
	if err := f.Truncate(size); err != nil {
		return err
	}
	return os.Rename(path+".tmp", path)
}

func plainGet(ctx context.Context, st *s3store.Store, bucket, path string) error {
	out, err := st.Client().GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String("baseline/image")})
	if err != nil {
		return err
	}
	defer out.Body.Close()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := io.CopyBuffer(f, out.Body, make([]byte, 4<<20)); err != nil {
		return err
	}
	return f.Sync()
}

func sameFile(a, b string) error {
	fa, err := os.Open(a)
	if err != nil {
		return err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return err
	}
	defer fb.Close()
	ba, bb := make([]byte, 4<<20), make([]byte, 4<<20)
	for off := int64(0); ; off += int64(len(ba)) {
		na, ea := io.ReadFull(fa, ba)
		nb, _ := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			return fmt.Errorf("differs near offset %d", off)
		}
		if ea != nil {
			return nil
		}
	}
}

// resetPeak resets the kernel's peak-RSS counter (VmHWM) for this process, after handing freed heap back
// to the OS so the previous phase's garbage does not count against the next.
func resetPeak() {
	debug.FreeOSMemory()
	_ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
}

// readPeak returns VmHWM in bytes.
func readPeak() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func cleanup(st *s3store.Store) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	_ = st.List(ctx, "", func(oi backup.ObjectInfo) error { return st.Delete(ctx, oi.Name) })
	_, _ = st.Client().DeleteBucket(ctx, &s3.DeleteBucketInput{Bucket: aws.String(st.Bucket())})
}
