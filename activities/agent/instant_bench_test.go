package agent_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/activities/agent"
	"github.com/holdfast/holdfast/activities/backup"
	"github.com/holdfast/holdfast/activities/backup/s3/s3test"
	"github.com/holdfast/holdfast/activities/volume"
	"github.com/holdfast/holdfast/activities/volume/file"
)

// BenchmarkInstantRestore (`make bench-instant`) measures an instant restore through the agent's own
// activities, on a backup in local MinIO (encrypted; per 4 MiB half random, a quarter zeros, a quarter a
// repeated byte), against a normal restore (RestoreBackup) of the same backup to a new qcow2 volume in the
// same run: from PrepareInstantRestore's call to the first read through the new volume (qemu-io, its process
// start included), random 4 KiB reads through the volume before hydration and after, and HydrateVolume's
// time against RestoreBackup's. The control plane's share (the request, the workflow, registering the
// volume) is not in these figures: the e2e test logs it (TestE2EInstantRestoreUnderARunningDomain, "usable
// … after the request"). Sizes: HOLDFAST_BENCH_INSTANT_MIB (default "1024,4096"). It never asserts timings.
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
	fmt.Printf("\ninstant restore through the agent (PrepareInstantRestore, HydrateVolume) from local MinIO (encrypted), vs RestoreBackup of the same backup to a new qcow2 volume (same run)\n")
	fmt.Printf("%-8s %12s %14s %14s %15s %15s %12s %12s %10s\n", "size", "first read s", "cold 4K p50 ms",
		"cold 4K p99 ms", "hydr. 4K p50 ms", "hydr. 4K p99 ms", "hydration s", "restore s", "rest/hydr")
	for _, mib := range sizes {
		r := instantRun(b, mib<<20)
		fmt.Printf("%-8s %12.2f %14.2f %14.2f %15.3f %15.3f %12.1f %12.1f %10.2f\n", fmt.Sprintf("%d MiB", mib),
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
	os.Remove(src)
	a := agent.New(agent.Config{HypervisorID: "hv1", VolumeRoots: []string{dir}, ExportDir: filepath.Join(dir, "exports"),
		Logger:  slog.New(slog.DiscardHandler),
		Drivers: map[string]volume.Driver{"file": file.New(file.NoLibvirt)}, Engines: map[string]*backup.Engine{"s3": e}})
	in := func(name string) activities.RestoreBackupInput {
		return activities.RestoreBackupInput{SourceVolumeID: "vol", BackupID: "b1", Storage: "s3", TargetVolumeID: name,
			Target: activities.VolumeRef{Type: "file", Path: filepath.Join(dir, name+".qcow2"), CreatedBy: "op-" + name},
			Create: true}
	}
	run := func(name string, arg any) {
		if err := runActivity(ctx, a, &heartbeatRecorder{}, name, arg, nil, nil); err != nil {
			b.Fatal(err)
		}
	}
	var res instantResult

	// Baseline: a normal restore of the same backup to a new qcow2 volume. Each timed copy starts with the
	// page cache written back (sync): the one timed second would otherwise pay for the first's dirty pages
	// (measured: either order, the second copy took 1.5–1.9× as long).
	syscall.Sync()
	t0 := time.Now()
	run(activities.RestoreBackupName, in("restored"))
	res.restore = time.Since(t0)
	os.Remove(in("restored").Target.Path)

	// Instant: the new volume over the export, and its first block read.
	inst := in("instant")
	t0 = time.Now()
	run(activities.PrepareInstantRestoreName, inst)
	qemu(b, "qemu-io", "-f", "qcow2", "-c", "read 0 4k", inst.Target.Path)
	res.first = time.Since(t0)

	// Random 4 KiB reads of regions no read has touched, then of the same regions hydrated.
	rng := rand.New(rand.NewPCG(7, 8))
	var cmds []string
	for range 200 {
		cmds = append(cmds, "-c", fmt.Sprintf("read %d 4k", 4096*rng.Int64N(size/4096)))
	}
	res.cold = readTimes(b, qemu(b, append(append([]string{"qemu-io", "-f", "qcow2"}, cmds...), inst.Target.Path)...))
	syscall.Sync()
	t0 = time.Now()
	run(activities.HydrateVolumeName, inst)
	res.hydrate = time.Since(t0)
	res.warm = readTimes(b, qemu(b, append(append([]string{"qemu-io", "-f", "qcow2"}, cmds...), inst.Target.Path)...))
	return res
}

// qemu runs a QEMU tool and returns its output.
func qemu(b *testing.B, args ...string) string {
	b.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		b.Fatalf("%v: %v: %s", args, err, out)
	}
	return string(out)
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
