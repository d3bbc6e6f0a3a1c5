package agent_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/activities/agent"
	"github.com/holdfast/holdfast/activities/backup"
	"github.com/holdfast/holdfast/activities/volume"
	"github.com/holdfast/holdfast/activities/volume/volumetest"
)

// chain is one volume's backups, each read from the snapshot of its name and kept as the next one's base,
// as BackupWorkflow does. acts is the agent that snapshots and uploads through drv; restores go through the
// fixture's file agent (the backup format is storage-neutral) to raw files read back independently.
type chain struct {
	f    *fixture
	acts *agent.Activities
	drv  *countingDriver
	vol  activities.VolumeRef
	prev string // the last backup, and the snapshot it was read from
	// object is the driver's change granularity where it is coarser than a write: RBD reports a whole 4 MiB
	// object changed when the write created it (a hole before). 0: it reports what was written (qcow2's
	// clusters are 64 KiB, the writes' alignment).
	object int64
}

func (c *chain) ref() volume.Ref {
	return volume.Ref{Type: volume.Type(c.vol.Type), Path: c.vol.Path, Pool: c.vol.Pool, Image: c.vol.Image}
}

func (c *chain) run(name string, in, out any) error {
	return runActivity(context.Background(), c.acts, c.f.hb, name, in, out, nil)
}

// create makes the volume with random data over the given extents and returns its contents.
func (c *chain) create(t *testing.T, size int64, data ...volume.Extent) []byte {
	w, err := c.drv.CreateVolume(context.Background(), c.ref(), size)
	require.NoError(t, err)
	model := make([]byte, size)
	c.f.writeInto(w, model, 1, data...)
	return model
}

// overwrite writes random data over the extents, as a guest would, and updates model.
func (c *chain) overwrite(t *testing.T, model []byte, seed uint64, data ...volume.Extent) {
	w, err := c.drv.OpenWriter(context.Background(), c.ref())
	require.NoError(t, err)
	c.f.writeInto(w, model, seed, data...)
}

// backup snapshots the volume as id and uploads it against the previous backup and base (the previous
// snapshot, unless the test names another), then drops the previous snapshot; it returns the upload's
// result, whose ReadBytes must be what the driver served.
func (c *chain) backup(t *testing.T, id, base string) activities.UploadBackupResult {
	t.Helper()
	require.NoError(t, c.run(activities.CreateSnapshotName,
		activities.SnapshotInput{VolumeID: "vol1", Volume: c.vol, SnapshotID: id}, nil))
	c.drv.read.Store(0)
	var up activities.UploadBackupResult
	require.NoError(t, c.run(activities.UploadBackupName, activities.UploadBackupInput{VolumeID: "vol1",
		Volume: c.vol, SnapshotID: id, BackupID: id, ParentBackupID: c.prev, BaseSnapshotID: base, Storage: storage}, &up))
	assert.Equal(t, c.drv.read.Load(), up.ReadBytes, "%s: the bytes read, as the driver served them", id)
	if c.prev != "" {
		require.NoError(t, c.run(activities.DeleteSnapshotName,
			activities.SnapshotRef{VolumeID: "vol1", Volume: c.vol, SnapshotID: c.prev}, nil))
	}
	c.prev = id
	return up
}

// restored restores backup id to a new raw file and returns its bytes.
func (c *chain) restored(t *testing.T, id string) []byte {
	t.Helper()
	target := c.f.ref(fmt.Sprintf("restore-%s-%s.raw", c.vol.Type, id))
	target.CreatedBy = "op-restore-" + id
	require.NoError(t, c.f.run(context.Background(), activities.RestoreBackupName, activities.RestoreBackupInput{
		SourceVolumeID: "vol1", BackupID: id, Storage: storage, TargetVolumeID: "vol-" + id, Target: target,
		Create: true}, nil, nil))
	return c.f.contents(target)
}

// fullRead checks that a backup read the whole volume, for reason, and restores to want.
func (c *chain) fullRead(t *testing.T, up activities.UploadBackupResult, id, reason string, want []byte) {
	t.Helper()
	assert.False(t, up.Incremental, id)
	assert.Equal(t, int64(len(want)), up.ReadBytes, id)
	assert.Equal(t, reason, up.FullReadReason, id)
	requireSame(t, want, c.restored(t, id), id)
}

// generations runs a volume through a first backup and ten incremental ones with writes between them, then
// through two fallback causes: its base snapshot deleted behind Holdfast's back, and its parent backup gone.
// Every backup restores byte-identical, alone; each incremental reads only the blocks its writes touched;
// each fallback reads everything and says why.
func (c *chain) generations(t *testing.T, model []byte) {
	size := int64(len(model))
	first := c.backup(t, "b00", "")
	assert.Equal(t, size, first.ReadBytes, "the first backup reads everything")
	assert.False(t, first.Incremental)
	assert.Equal(t, "no base snapshot", first.FullReadReason)
	assert.True(t, first.KeepSnapshot, "the driver tracks changes: the snapshot is the next base")
	requireSame(t, model, c.restored(t, "b00"), "b00")

	rng := rand.New(rand.NewPCG(7, 7))
	for g := 1; g <= 10; g++ {
		var writes []volume.Extent
		touched := map[int64]bool{} // objects, when the driver reports whole ones
		for range 3 {               // small writes anywhere, holes included
			off := rng.Int64N(size/(64<<10)) * (64 << 10)
			writes = append(writes, volume.Extent{Offset: off, Length: 64 << 10})
			if c.object > 0 {
				touched[off/c.object] = true
			}
		}
		c.overwrite(t, model, uint64(100+g), writes...)
		id := fmt.Sprintf("b%02d", g)
		up := c.backup(t, id, c.prev)
		assert.True(t, up.Incremental, "%s: %s", id, up.FullReadReason)
		assert.Empty(t, up.FullReadReason, id)
		assert.Greater(t, up.ReadBytes, int64(0), id)
		// The engine reads only what the driver reports, not the 4 MiB cells around it: the 64 KiB writes, or
		// the objects they touched.
		limit := int64(len(writes)) * (64 << 10)
		if c.object > 0 {
			limit = int64(len(touched)) * c.object
		}
		assert.LessOrEqual(t, up.ReadBytes, limit, "%s reads only what it wrote", id)
		requireSame(t, model, c.restored(t, id), id)
	}

	// The base snapshot deleted behind Holdfast's back.
	c.overwrite(t, model, 200, volume.Extent{Offset: 3 * MiB, Length: 4096})
	require.NoError(t, c.run(activities.DeleteSnapshotName,
		activities.SnapshotRef{VolumeID: "vol1", Volume: c.vol, SnapshotID: c.prev}, nil))
	c.fullRead(t, c.backup(t, "b11", "b10"), "b11", "base snapshot unusable", model)

	// The parent backup gone (retention deleted it).
	c.overwrite(t, model, 201, volume.Extent{Offset: 9 * MiB, Length: 4096})
	require.NoError(t, c.f.run(context.Background(), activities.DeleteBackupName,
		activities.BackupRef{VolumeID: "vol1", BackupID: "b11", Storage: storage}, nil, nil))
	c.fullRead(t, c.backup(t, "b12", "b11"), "b12", "parent backup unusable", model)
}

// qcow2 (cluster tables), then a resize: the next backup reads everything, of the new size.
func TestIncrementalBackupsOfAQCOW2Volume(t *testing.T) {
	const size = 64 * MiB
	f := newFixture(t, backup.Options{Concurrency: 2})
	c := &chain{f: f, acts: f.acts, drv: f.driver, vol: f.ref("vol.qcow2")}
	model := c.create(t, size, volume.Extent{Offset: 0, Length: 20 * MiB}, volume.Extent{Offset: 40 * MiB, Length: 8 * MiB})
	c.generations(t, model)

	out, err := exec.Command("qemu-img", "resize", c.vol.Path, fmt.Sprint(size+8*MiB)).CombinedOutput()
	require.NoError(t, err, "%s", out)
	grown := append(bytes.Clone(model), make([]byte, 8*MiB)...)
	c.overwrite(t, grown, 202, volume.Extent{Offset: size + MiB, Length: 4096})
	c.fullRead(t, c.backup(t, "b13", "b12"), "b13", "volume resized", grown)
}

// RBD (diff-iterate), on the test cluster.
func TestIncrementalBackupsOfAnRBDVolume(t *testing.T) {
	const size = 64 * MiB
	f := newFixture(t, backup.Options{Concurrency: 2})
	d, pool := cephDriver(t)
	drv := &countingDriver{Driver: d}
	c := &chain{f: f, drv: drv, object: 4 * MiB, vol: activities.VolumeRef{Type: "rbd", Pool: pool,
		Image: fmt.Sprintf("incr-%d-%d", os.Getpid(), rand.Uint32())},
		acts: agent.New(agent.Config{HypervisorID: "hv1", Drivers: map[string]volume.Driver{"rbd": drv},
			Engines: map[string]*backup.Engine{storage: f.engine}, RBDPools: []string{pool}})}
	t.Cleanup(func() {
		_ = d.DeleteSnapshot(context.Background(), c.ref(), c.prev)
		_ = d.DeleteVolume(context.Background(), c.ref())
	})
	model := c.create(t, size, volume.Extent{Offset: 0, Length: 20 * MiB}, volume.Extent{Offset: 40 * MiB, Length: 8 * MiB})
	c.generations(t, model)
}

// A raw file has no change tracking: its snapshot is not kept as a base, and a base given anyway is not
// diffed against (that would read two full copies): the backup reads everything, and says why.
func TestRawVolumeBackupKeepsNoBase(t *testing.T) {
	const size = 16 * MiB
	f := newFixture(t, backup.Options{Concurrency: 2})
	c := &chain{f: f, acts: f.acts, drv: f.driver, vol: f.ref("vol.raw")}
	model := c.create(t, size, volume.Extent{Offset: 0, Length: 4 * MiB})
	up := c.backup(t, "b00", "")
	assert.False(t, up.KeepSnapshot, "raw: no base kept")
	assert.Equal(t, size, up.ReadBytes)
	assert.Equal(t, "no change tracking on raw files", up.FullReadReason)
	requireSame(t, model, c.restored(t, "b00"), "raw b00")

	c.overwrite(t, model, 2, volume.Extent{Offset: MiB, Length: 4096})
	// The snapshot is read once, never two copies compared.
	c.fullRead(t, c.backup(t, "b01", "b00"), "b01", "no change tracking on raw files", model)
}

// A qcow2 volume a running (TCG) domain uses: the guest writes between backups, through QEMU's own block
// layer; each backup is taken live, reads only the chunks the guest touched, and restores byte-identical.
func TestIncrementalBackupsOfARunningDomain(t *testing.T) {
	const size = 64 * MiB
	f := newFixture(t, backup.Options{Concurrency: 2})
	c := &chain{f: f, acts: f.acts, drv: f.driver, vol: f.ref("live.qcow2")}
	model := c.create(t, size, volume.Extent{Offset: 0, Length: 16 * MiB})
	dom := volumetest.StartDomain(t, os.Getenv("HOLDFAST_LIBVIRT_URI"), fmt.Sprintf(`<disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/><source file='%s'/><target dev='vda' bus='virtio'/></disk>`, c.vol.Path))

	first := c.backup(t, "b00", "")
	assert.Equal(t, size, first.ReadBytes)
	requireSame(t, model, c.restored(t, "b00"), "b00")
	rng := rand.New(rand.NewPCG(9, 9))
	for g := 1; g <= 10; g++ {
		off := rng.Int64N(size/(64<<10)) * (64 << 10)
		value := byte(g)
		dom.Write(t, "vda", off, 64<<10, value)
		for i := off; i < off+64<<10; i++ {
			model[i] = value
		}
		id := fmt.Sprintf("b%02d", g)
		up := c.backup(t, id, c.prev)
		assert.True(t, up.Incremental, "%s: %s", id, up.FullReadReason)
		assert.Greater(t, up.ReadBytes, int64(0), id)
		assert.LessOrEqual(t, up.ReadBytes, 4*MiB, "%s reads only the chunk the guest wrote", id)
		requireSame(t, model, c.restored(t, id), id)
	}
}
