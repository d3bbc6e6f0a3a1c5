package agent_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/activities/agent"
	"github.com/holdfast/holdfast/activities/backup"
	"github.com/holdfast/holdfast/activities/volume"
	"github.com/holdfast/holdfast/activities/volume/rbd"
	"github.com/holdfast/holdfast/activities/volume/volumetest"
)

// cephDriver connects to the test cluster (make services-up-ceph), skipping locally and failing under
// CI=true when it is not there.
func cephDriver(t *testing.T) (*rbd.Driver, string) {
	conf, pool := os.Getenv("HOLDFAST_CEPH_CONF"), os.Getenv("HOLDFAST_CEPH_POOL")
	if pool == "" {
		pool = "holdfast"
	}
	err := errors.New("HOLDFAST_CEPH_CONF unset")
	if conf != "" {
		if _, err = os.Stat(conf); err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var d *rbd.Driver
			if d, err = rbd.New(ctx, rbd.Config{CephConf: conf}); err == nil {
				t.Cleanup(d.Close)
				return d, pool
			}
		}
	}
	volumetest.RequireService(t, err, "ceph", "services-up-ceph")
	return nil, ""
}

// TestBackupOfAFileVolumeRestoresOntoRBDElsewhere: a qcow2 volume backed up by one hypervisor's agent is
// restored, as a new volume, by another hypervisor's agent that only has Ceph: the backup format is
// storage-neutral and the restore touches nothing of the source host.
func TestBackupOfAFileVolumeRestoresOntoRBDElsewhere(t *testing.T) {
	const size = 12*MiB + 4096
	f := newFixture(t, backup.Options{Concurrency: 2})
	d, pool := cephDriver(t)
	ctx := context.Background()
	vol := f.ref("src.qcow2")
	atSnapshot := f.createVolume(vol, size, 7, volume.Extent{Offset: 0, Length: 5 * MiB},
		volume.Extent{Offset: 9 * MiB, Length: 3*MiB + 4096})
	require.NoError(t, f.run(ctx, activities.CreateSnapshotName,
		activities.SnapshotInput{VolumeID: "vol1", Volume: vol, SnapshotID: "s1"}, nil, nil))
	require.NoError(t, f.run(ctx, activities.UploadBackupName, activities.UploadBackupInput{
		VolumeID: "vol1", Volume: vol, SnapshotID: "s1", BackupID: "b1", Storage: storage}, nil, nil))

	// hv2 has only the rbd driver and the same backup storage; hv1's agent is not involved from here on.
	hv2 := agent.New(agent.Config{HypervisorID: "hv2", Drivers: map[string]volume.Driver{"rbd": d},
		Engines: map[string]*backup.Engine{storage: f.engine}, RBDPools: []string{pool}})
	target := activities.VolumeRef{Type: "rbd", Pool: pool, Image: fmt.Sprintf("xstore-%d-%d", os.Getpid(), rand.Uint32())}
	t.Cleanup(func() {
		_ = runActivity(ctx, hv2, f.hb, activities.DeleteVolumeName,
			activities.DeleteVolumeInput{VolumeID: "vol2", Volume: target}, nil, nil)
	})
	var res activities.RestoreResult
	require.NoError(t, runActivity(ctx, hv2, f.hb, activities.RestoreBackupName, activities.RestoreBackupInput{
		SourceVolumeID: "vol1", BackupID: "b1", Storage: storage, TargetVolumeID: "vol2", Target: target,
		Create: true}, &res, nil))
	require.Equal(t, int64(size), res.SizeBytes)

	// Read it back through an rbd snapshot (the driver's point-in-time reader).
	ref := volume.Ref{Type: volume.TypeRBD, Pool: pool, Image: target.Image}
	_, err := d.CreateSnapshot(ctx, ref, "check")
	require.NoError(t, err)
	t.Cleanup(func() { _ = d.DeleteSnapshot(ctx, ref, "check") })
	r, err := d.OpenSnapshot(ctx, ref, "check")
	require.NoError(t, err)
	defer r.Close()
	require.Equal(t, int64(size), r.Size())
	got := make([]byte, size)
	n, err := r.ReadAt(got, 0)
	require.Equal(t, int(size), n, "read: %v", err)
	requireSame(t, atSnapshot, got, "qcow2 backup restored onto rbd by another hypervisor")
}
