package rbd_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ceph/go-ceph/rados"
	librbd "github.com/ceph/go-ceph/rbd"
	"github.com/stretchr/testify/require"

	"github.com/holdfast/holdfast/activities/volume"
)

const MiB = 1 << 20

// otherHost is a second RADOS client of the cluster: what QEMU or krbd on another hypervisor is to the
// driver. Nothing in the local libvirt knows about it.
func (c *cluster) otherHost(t *testing.T) *rados.IOContext {
	t.Helper()
	conn, err := rados.NewConn()
	require.NoError(t, err)
	require.NoError(t, conn.ReadConfigFile(c.conf))
	require.NoError(t, conn.Connect())
	t.Cleanup(conn.Shutdown)
	io, err := conn.OpenIOContext(c.pool)
	require.NoError(t, err)
	t.Cleanup(io.Destroy)
	return io
}

// newVolume creates a volume owned by op holding a recognisable first MiB.
func (c *cluster) newVolume(t *testing.T, op string, size int64) volume.Ref {
	t.Helper()
	ctx := context.Background()
	vol := c.ref()
	vol.CreatedBy = op
	t.Cleanup(func() { _ = c.driver.DeleteVolume(context.Background(), vol) })
	w, err := c.driver.CreateVolume(ctx, vol, size)
	require.NoError(t, err)
	_, err = w.WriteAt(bytes.Repeat([]byte{0x11}, MiB), 0)
	require.NoError(t, err)
	require.NoError(t, w.Close())
	return vol
}

func requireFree(t *testing.T, d volume.Driver, vol volume.Ref) {
	t.Helper()
	att, err := d.Attachment(context.Background(), vol)
	require.NoError(t, err)
	require.Equal(t, volume.Attachment{}, att, "attachment of a volume no one else uses")
}

// requireInUse checks that every overwriting call refuses the volume while another client uses it.
func requireInUse(t *testing.T, d volume.Driver, vol volume.Ref, snap string) {
	t.Helper()
	ctx := context.Background()
	att, err := d.Attachment(ctx, vol)
	require.NoError(t, err)
	require.True(t, att.Attached && att.Running, "attachment of a volume used by another host: %+v", att)
	require.Contains(t, att.Domain, "rbd client")

	w, err := d.OpenWriter(ctx, vol)
	if err == nil {
		w.Close()
	}
	require.ErrorIs(t, err, volume.ErrAttachedRunning, "OpenWriter")
	var are *volume.AttachedRunningError
	require.ErrorAs(t, err, &are)
	require.Contains(t, are.Domain, "rbd client")
	require.ErrorIs(t, d.RollbackSnapshot(ctx, vol, snap), volume.ErrAttachedRunning, "RollbackSnapshot")
	require.ErrorIs(t, d.DeleteVolume(ctx, vol), volume.ErrAttachedRunning, "DeleteVolume")
	_, err = d.Size(ctx, vol)
	require.NoError(t, err, "the volume survives")
}

// A VM on another host uses the image through its own RADOS client: the driver sees it from the cluster (the
// client's watch on the image header, its exclusive lock), not from the local libvirt, which knows nothing.
func TestInUseByAnotherHost(t *testing.T) {
	c := connect(t)
	d := c.driver
	ctx := context.Background()
	vol := c.newVolume(t, "op-inuse", 8*MiB)
	s1, err := d.CreateSnapshot(ctx, vol, "s1")
	require.NoError(t, err)
	require.Equal(t, volume.ConsistencyOffline, s1.Consistency, "the driver's own handle is not another user")
	requireFree(t, d, vol)

	other := c.otherHost(t)
	img, err := librbd.OpenImage(other, vol.Image, "") // read-write: registers a watch
	require.NoError(t, err)
	requireInUse(t, d, vol, "s1")

	// A snapshot taken meanwhile cannot have been frozen (no local domain): crash-consistent, never offline.
	s2, err := d.CreateSnapshot(ctx, vol, "s2")
	require.NoError(t, err)
	require.Equal(t, volume.ConsistencyCrash, s2.Consistency)
	require.Contains(t, s2.FreezeError, "rbd client")

	// Writing takes the exclusive lock as well.
	_, err = img.WriteAt(bytes.Repeat([]byte{0x22}, MiB), 0)
	require.NoError(t, err)
	requireInUse(t, d, vol, "s1")
	require.NoError(t, img.Close())
	requireFree(t, d, vol)
	require.NoError(t, d.RollbackSnapshot(ctx, vol, "s1"))
	w, err := d.OpenWriter(ctx, vol)
	require.NoError(t, err)
	require.NoError(t, w.Close())

	// A lock without a watch (a client whose session lapsed, an operator's advisory lock) counts too.
	img, err = librbd.OpenImage(other, vol.Image, "")
	require.NoError(t, err)
	require.NoError(t, img.LockExclusive("holdfast-test"))
	require.NoError(t, img.Close())
	requireInUse(t, d, vol, "s1")
	img, err = librbd.OpenImage(other, vol.Image, "")
	require.NoError(t, err)
	require.NoError(t, img.Unlock("holdfast-test"))
	require.NoError(t, img.Close())
	requireFree(t, d, vol)

	// A read-only user (no watch, no lock) does not block.
	ro, err := librbd.OpenImageReadOnly(other, vol.Image, "")
	require.NoError(t, err)
	requireFree(t, d, vol)
	require.NoError(t, ro.Close())
	require.NoError(t, d.DeleteVolume(ctx, vol))
}

// The driver's own open handles (a reader of a snapshot, a writer of the head) are not another user.
func TestOwnHandlesAreNotInUse(t *testing.T) {
	c := connect(t)
	d := c.driver
	ctx := context.Background()
	vol := c.newVolume(t, "op-own", 8*MiB)
	_, err := d.CreateSnapshot(ctx, vol, "s1")
	require.NoError(t, err)
	r, err := d.OpenSnapshot(ctx, vol, "s1")
	require.NoError(t, err)
	defer r.Close()
	w, err := d.OpenWriter(ctx, vol)
	require.NoError(t, err)
	_, err = w.WriteAt([]byte("x"), 0) // takes the exclusive lock
	require.NoError(t, err)
	requireFree(t, d, vol)
	require.NoError(t, w.Close())
	require.NoError(t, d.RollbackSnapshot(ctx, vol, "s1"))
}

// The answer is read from the cluster on every call, never remembered: a user that comes and goes is seen
// coming and going.
func TestInUseIsLive(t *testing.T) {
	c := connect(t)
	vol := c.newVolume(t, "op-live", 4*MiB)
	other := c.otherHost(t)
	start := time.Now()
	for range 3 {
		img, err := librbd.OpenImage(other, vol.Image, "")
		require.NoError(t, err)
		att, err := c.driver.Attachment(context.Background(), vol)
		require.NoError(t, err)
		require.True(t, att.Running && strings.Contains(att.Domain, "rbd client"), "%+v", att)
		require.NoError(t, img.Close())
		requireFree(t, c.driver, vol)
	}
	t.Logf("3 open/close rounds checked in %s", time.Since(start).Round(time.Millisecond))
}
