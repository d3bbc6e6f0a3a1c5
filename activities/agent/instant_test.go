package agent_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/activities/agent"
	"github.com/holdfast/holdfast/activities/backup"
	"github.com/holdfast/holdfast/activities/volume"
	"github.com/holdfast/holdfast/activities/volume/file"
)

// instantAgent is an agent on the fixture's roots and store, with the plain file driver (the fixture's
// counting wrapper hides the driver's Hydrator) and an export directory.
func instantAgent(f *fixture, exportDir string) *agent.Activities {
	return agent.New(agent.Config{HypervisorID: "hv1", VolumeRoots: []string{f.dir}, ExportDir: exportDir,
		Drivers: map[string]volume.Driver{"file": file.New(os.Getenv("HOLDFAST_LIBVIRT_URI"))},
		Engines: map[string]*backup.Engine{storage: f.engine}})
}

// qemuWrite writes n bytes of value at off into a qcow2 volume through QEMU's block layer, as a guest would.
func qemuWrite(t *testing.T, path string, off, n int64, value byte) {
	t.Helper()
	out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P 0x%x %d %d", value, off, n), path).CombinedOutput()
	require.NoError(t, err, "%s", out)
}

// An instant restore through the agent: the new volume is created over the agent's export of an encrypted
// backup and reads the backup at once; it takes writes; an agent that restarted (a new process, the old
// socket left behind) serves the export again for the hydration, which heartbeats its progress and ends
// with the volume standing alone — the backup plus the write, byte for byte — and the export gone.
func TestInstantRestoreThroughTheAgent(t *testing.T) {
	const size = 48 * MiB
	f := newFixture(t, backup.Options{Concurrency: 2, Key: bytes.Repeat([]byte{7}, 32)})
	c := &chain{f: f, acts: f.acts, drv: f.driver, vol: f.ref("src.qcow2")}
	model := c.create(t, size, volume.Extent{Offset: 0, Length: 12 * MiB}, volume.Extent{Offset: 30 * MiB, Length: 6 * MiB})
	c.backup(t, "b00", "")

	exportDir := filepath.Join(t.TempDir(), "exports")
	first := instantAgent(f, exportDir)
	target := f.ref("instant.qcow2")
	target.CreatedBy = "op-instant"
	in := activities.RestoreBackupInput{SourceVolumeID: "vol1", BackupID: "b00", Storage: storage,
		TargetVolumeID: "vol-new", Target: target, Create: true}
	var ready activities.InstantRestoreResult
	require.NoError(t, runActivity(context.Background(), first, f.hb, activities.PrepareInstantRestoreName, in, &ready, nil))
	require.True(t, ready.Instant, ready.FallbackReason)
	assert.Equal(t, size, ready.SizeBytes)
	requireSame(t, model, f.contents(target), "the new volume, before any hydration")
	socket := socketIn(t, exportDir)
	require.NoError(t, runActivity(context.Background(), first, f.hb, activities.PrepareInstantRestoreName, in, &ready, nil),
		"a retry finds its volume and export")

	qemuWrite(t, target.Path, 11*MiB, 2*MiB, 0x3c)
	want := bytes.Clone(model)
	for i := 11 * MiB; i < 13*MiB; i++ {
		want[i] = 0x3c
	}

	second := instantAgent(f, exportDir) // the agent restarted: its socket file is still there
	f.hb.take()
	var res activities.RestoreResult
	require.NoError(t, runActivity(context.Background(), second, f.hb, activities.HydrateVolumeName, in, &res, nil))
	assert.Equal(t, size, res.SizeBytes)
	// The backup holds data in its 4 MiB cells 0–12 and 28–36 MiB, zeros elsewhere (never copied); the
	// write already covers 11–12 MiB of it.
	assert.Equal(t, 19*MiB, res.BytesWritten, "the backup's data less what the write covered")
	beats := f.hb.take()
	require.NotEmpty(t, beats)
	lastBeat := beats[len(beats)-1]
	assert.Equal(t, agent.PhaseHydrating, lastBeat.Phase)
	assert.Equal(t, lastBeat.BytesTotal, lastBeat.BytesDone)
	_, err := os.Lstat(socket)
	assert.True(t, errors.Is(err, os.ErrNotExist), "the export ended with the hydration")

	n, err := file.New(file.NoLibvirt).Size(context.Background(), volume.Ref{Type: volume.TypeFile, Path: target.Path})
	require.NoError(t, err, "the volume stands alone")
	assert.Equal(t, size, n)
	requireSame(t, want, f.contents(target), "hydrated")
	require.NoError(t, runActivity(context.Background(), second, f.hb, activities.HydrateVolumeName, in, &res, nil),
		"hydrating a hydrated volume is done")
}

// A restore given up (aborted, past its deadline) deletes its new volume while it hydrates: the export ends
// with it. A raw target cannot read through a backing: the agent says so and makes nothing.
func TestInstantRestoreGivenUpAndFallback(t *testing.T) {
	f := newFixture(t, backup.Options{Concurrency: 2})
	c := &chain{f: f, acts: f.acts, drv: f.driver, vol: f.ref("src.qcow2")}
	c.create(t, 8*MiB, volume.Extent{Offset: 0, Length: 4 * MiB})
	c.backup(t, "b00", "")
	exportDir := filepath.Join(t.TempDir(), "exports")
	a := instantAgent(f, exportDir)

	target := f.ref("given-up.qcow2")
	target.CreatedBy = "op-given-up"
	in := activities.RestoreBackupInput{SourceVolumeID: "vol1", BackupID: "b00", Storage: storage,
		TargetVolumeID: "vol-given-up", Target: target, Create: true}
	var ready activities.InstantRestoreResult
	require.NoError(t, runActivity(context.Background(), a, f.hb, activities.PrepareInstantRestoreName, in, &ready, nil))
	require.True(t, ready.Instant)
	socket := socketIn(t, exportDir)
	require.NoError(t, runActivity(context.Background(), a, f.hb, activities.DeleteVolumeName,
		activities.DeleteVolumeInput{VolumeID: "vol-given-up", Volume: target}, nil, nil))
	for _, p := range []string{target.Path, socket} {
		_, err := os.Lstat(p)
		assert.True(t, errors.Is(err, os.ErrNotExist), "%s removed", p)
	}

	raw := f.ref("new.raw")
	raw.CreatedBy = "op-raw"
	in.TargetVolumeID, in.Target = "vol-raw", raw
	require.NoError(t, runActivity(context.Background(), a, f.hb, activities.PrepareInstantRestoreName, in, &ready, nil))
	assert.False(t, ready.Instant)
	assert.Equal(t, "instant restore needs a qcow2 file volume or an RBD image; restored in full", ready.FallbackReason)
	_, err := os.Lstat(raw.Path)
	assert.True(t, errors.Is(err, os.ErrNotExist), "nothing made")
	assert.Empty(t, socketsIn(t, exportDir))

	// No export directory configured: the same fallback's sibling, nothing made either.
	none := instantAgent(f, "")
	target.CreatedBy, in.TargetVolumeID, in.Target = "op-none", "vol-none", target
	require.NoError(t, runActivity(context.Background(), none, f.hb, activities.PrepareInstantRestoreName, in, &ready, nil))
	assert.False(t, ready.Instant)
	assert.Equal(t, "instant restore is not set up on this hypervisor; restored in full", ready.FallbackReason)
}

func socketsIn(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*.sock"))
	require.NoError(t, err)
	return m
}

func socketIn(t *testing.T, dir string) string {
	t.Helper()
	m := socketsIn(t, dir)
	require.Len(t, m, 1)
	return m[0]
}

// An instant restore onto RBD through the agent: the new image is an import of the agent's HTTP export of
// an encrypted backup (Ceph's import-only live migration), readable at once by any client of the cluster;
// a restarted agent serves the export again at the same URL, and HydrateVolume has Ceph copy the rest and
// commit: the image stands alone, byte-identical, and the export is gone. Abandoned mid-import, the image
// is removed by the compensation's delete.
func TestInstantRestoreOntoRBD(t *testing.T) {
	const size = 24 * MiB
	f := newFixture(t, backup.Options{Concurrency: 2, Key: bytes.Repeat([]byte{9}, 32)})
	c := &chain{f: f, acts: f.acts, drv: f.driver, vol: f.ref("src.qcow2")}
	model := c.create(t, size, volume.Extent{Offset: 0, Length: 10 * MiB}, volume.Extent{Offset: 16 * MiB, Length: 4 * MiB})
	c.backup(t, "b00", "")
	d, pool := cephDriver(t)
	addr := freeAddress(t)
	rbdAgent := func() *agent.Activities {
		return agent.New(agent.Config{HypervisorID: "hv-ceph", RBDPools: []string{pool}, ExportHTTP: addr,
			Drivers: map[string]volume.Driver{"rbd": d}, Engines: map[string]*backup.Engine{storage: f.engine}})
	}
	image := fmt.Sprintf("instant-%d-%d", os.Getpid(), rand.Uint32())
	target := activities.VolumeRef{Type: "rbd", Pool: pool, Image: image, CreatedBy: "op-instant"}
	t.Cleanup(func() {
		_ = d.DeleteVolume(context.Background(), volume.Ref{Type: volume.TypeRBD, Pool: pool, Image: image})
	})
	in := activities.RestoreBackupInput{SourceVolumeID: "vol1", BackupID: "b00", Storage: storage,
		TargetVolumeID: "vol-rbd", Target: target, Create: true}
	first := rbdAgent()
	var ready activities.InstantRestoreResult
	require.NoError(t, runActivity(context.Background(), first, f.hb, activities.PrepareInstantRestoreName, in, &ready, nil))
	require.True(t, ready.Instant, ready.FallbackReason)
	conf := os.Getenv("HOLDFAST_CEPH_CONF")
	read := func() []byte {
		out, err := exec.Command("rbd", "-c", conf, "export", pool+"/"+image, "-").Output()
		require.NoError(t, err)
		return out
	}
	requireSame(t, model, read(), "the new image, before any hydration")

	agent.StopExports(first) // the agent died: its HTTP export went with it
	second := rbdAgent()
	var res activities.RestoreResult
	require.NoError(t, runActivity(context.Background(), second, f.hb, activities.HydrateVolumeName, in, &res, nil))
	assert.Equal(t, size, res.SizeBytes)
	agent.StopExports(second)
	requireSame(t, model, read(), "hydrated, standing alone")
	done, err := d.Imported(context.Background(), volume.Ref{Type: volume.TypeRBD, Pool: pool, Image: image})
	require.NoError(t, err)
	assert.True(t, done)

	// Abandoned mid-import by a restarted agent (the export died with the first): the compensation serves
	// the backup again, for librbd opens the image through it even to delete it, and removes the image.
	gone := target
	gone.Image, gone.CreatedBy = image+"-gone", "op-gone"
	in2 := in
	in2.TargetVolumeID, in2.Target = "vol-gone", gone
	a := rbdAgent()
	require.NoError(t, runActivity(context.Background(), a, f.hb, activities.PrepareInstantRestoreName, in2, &ready, nil))
	require.True(t, ready.Instant)
	agent.StopExports(a)
	b := rbdAgent()
	require.Error(t, runActivity(context.Background(), b, f.hb, activities.DeleteVolumeName,
		activities.DeleteVolumeInput{VolumeID: "vol-gone", Volume: gone}, nil, nil),
		"a plain delete cannot open it without its source")
	require.NoError(t, runActivity(context.Background(), b, f.hb, activities.AbandonInstantRestoreName, in2, nil, nil))
	_, err = d.Size(context.Background(), volume.Ref{Type: volume.TypeRBD, Pool: pool, Image: gone.Image})
	assert.True(t, errors.Is(err, volume.ErrNotFound), "removed: %v", err)
	assert.Zero(t, agent.ExportCount(b), "the export served for the delete ended with it")
	agent.StopExports(b)
}

// freeAddress is a loopback address no one listens on now.
func freeAddress(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().String()
}
