package rbd_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/holdfast/holdfast/activities/volume"
	"github.com/holdfast/holdfast/activities/volume/rbd"
	"github.com/holdfast/holdfast/activities/volume/volumetest"
)

// rbdSpec is a qemu tool's name for an image of the test cluster.
func (c *cluster) rbdSpec(vol volume.Ref) string {
	return fmt.Sprintf("rbd:%s/%s:conf=%s", vol.Pool, vol.Image, c.conf)
}

// exported reads an image through the rbd tool (a client of its own, as QEMU would be).
func (c *cluster) exported(t *testing.T, vol volume.Ref) []byte {
	t.Helper()
	out, err := exec.Command("rbd", "-c", c.conf, "export", vol.Pool+"/"+vol.Image, "-").Output()
	require.NoError(t, err)
	return out
}

// stream serves data over HTTP (Range reads, as the agent's export does), each request after delay.
func stream(t *testing.T, data []byte, delay time.Duration) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(delay)
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
	}))
	t.Cleanup(srv.Close)
	return srv
}

// randomPrefix is size bytes, random in the first n, zeros after.
func randomPrefix(size, n int, seed uint64) []byte {
	data := make([]byte, size)
	rng := rand.New(rand.NewPCG(seed, seed))
	for i := range data[:n] {
		data[i] = byte(rng.Uint32())
	}
	return data
}

// An RBD volume restored instantly: created as an import of a raw HTTP stream (as the agent serves a
// backup), it reads the stream's bytes at once through any client and takes writes; Import copies the rest
// and commits, after which it stands alone (the stream gone) with the stream's bytes plus the write. Only
// the operation that created it reuses it; deleting it mid-import (an abort) removes it.
func TestInstantImport(t *testing.T) {
	c := connect(t)
	ctx := context.Background()
	const size = 24 << 20
	data := randomPrefix(size, 16<<20, 3)
	srv := stream(t, data, 0)

	vol := c.ref()
	vol.CreatedBy = "op-1"
	require.NoError(t, c.driver.CreateImport(ctx, vol, size, srv.URL+"/backup.raw"))
	t.Cleanup(func() {
		_ = c.driver.DeleteVolume(context.Background(), volume.Ref{Type: vol.Type, Pool: vol.Pool, Image: vol.Image})
	})
	require.NoError(t, c.driver.CreateImport(ctx, vol, size, srv.URL+"/backup.raw"), "its operation's retry")
	other := vol
	other.CreatedBy = "op-2"
	require.ErrorIs(t, c.driver.CreateImport(ctx, other, size, srv.URL+"/backup.raw"), volume.ErrExists)
	require.ErrorIs(t, c.driver.CreateImport(ctx, c.ref(), size, "file:///etc/passwd"), volume.ErrUnsupported)

	done, err := c.driver.Imported(ctx, vol)
	require.NoError(t, err)
	assert.False(t, done)
	assert.Equal(t, data, c.exported(t, vol), "readable at once, through the stream")
	out, err := exec.Command("qemu-io", "-f", "raw", "-c", "write -P 0x5a 15M 2M", c.rbdSpec(vol)).CombinedOutput()
	require.NoError(t, err, "%s", out)
	want := bytes.Clone(data)
	for i := 15 << 20; i < 17<<20; i++ {
		want[i] = 0x5a
	}

	require.NoError(t, c.driver.Import(ctx, vol))
	done, err = c.driver.Imported(ctx, vol)
	require.NoError(t, err)
	assert.True(t, done)
	require.NoError(t, c.driver.Import(ctx, vol), "done is done")
	srv.Close() // the stream is gone: the image must not need it
	assert.Equal(t, want, c.exported(t, vol), "imported: the stream's bytes plus the write")

	// Given up mid-import: the compensation's delete removes it; another operation's does not. (librbd opens
	// an image being imported through its source, even to delete it: the agent serves it for that.)
	srv2 := stream(t, data, 0)
	gone := c.ref()
	gone.CreatedBy = "op-3"
	require.NoError(t, c.driver.CreateImport(ctx, gone, size, srv2.URL+"/backup.raw"))
	stranger := gone
	stranger.CreatedBy = "op-4"
	require.ErrorIs(t, c.driver.DeleteVolume(ctx, stranger), volume.ErrNotOwned)
	require.NoError(t, c.driver.DeleteVolume(ctx, gone))
	_, err = c.driver.Size(ctx, gone)
	assert.True(t, errors.Is(err, volume.ErrNotFound), "removed: %v", err)
}

// The import runs while a (TCG) domain uses the image through librbd and writes to it: Ceph's live
// migration copies around the guest's writes, and the image ends standing alone with the stream's bytes
// plus the guest's.
func TestInstantImportUnderARunningDomain(t *testing.T) {
	c := connect(t)
	if c.uri == rbd.NoLibvirt {
		t.Skip("driver without libvirt")
	}
	volumetest.RequireLibvirt(t, c.uri)
	ctx := context.Background()
	const size = 24 << 20
	data := randomPrefix(size, 12<<20, 4)
	srv := stream(t, data, 0)
	vol := c.ref()
	vol.CreatedBy = "op-1"
	require.NoError(t, c.driver.CreateImport(ctx, vol, size, srv.URL+"/backup.raw"))
	t.Cleanup(func() { _ = c.driver.DeleteVolume(context.Background(), vol) })
	dom := volumetest.StartDomain(t, c.uri, fmt.Sprintf(`<disk type='network' device='disk'><driver name='qemu' type='raw' cache='none'/>
      <source protocol='rbd' name='%s/%s'><host name='127.0.0.1' port='6789'/><config file='%s'/></source>
      <target dev='vda' bus='virtio'/></disk>`, vol.Pool, vol.Image, c.conf))
	dom.Write(t, "vda", 10<<20, 4<<20, 0x3d) // across data and zeros, before the import copied anything
	want := bytes.Clone(data)
	for i := 10 << 20; i < 14<<20; i++ {
		want[i] = 0x3d
	}
	require.NoError(t, c.driver.Import(ctx, vol))
	dom.Write(t, "vda", 20<<20, 1<<20, 0x3e) // and after it committed
	for i := 20 << 20; i < 21<<20; i++ {
		want[i] = 0x3e
	}
	dom.Stop(t)
	srv.Close()
	assert.Equal(t, want, c.exported(t, vol))
}

// An import whose execute was killed (kill -9 of the process running it) is completed by Import: a retried
// hydration after an agent's death.
func TestInstantImportResumesAfterAKilledExecute(t *testing.T) {
	c := connect(t)
	ctx := context.Background()
	const size = 64 << 20 // 16 objects: librbd copies them ~10 at a time, each read taking a second
	data := randomPrefix(size, size, 5)
	srv := stream(t, data, time.Second)
	vol := c.ref()
	vol.CreatedBy = "op-1"
	require.NoError(t, c.driver.CreateImport(ctx, vol, size, srv.URL+"/backup.raw"))
	t.Cleanup(func() { _ = c.driver.DeleteVolume(context.Background(), vol) })
	execute := exec.Command("rbd", "-c", c.conf, "migration", "execute", vol.Pool+"/"+vol.Image)
	require.NoError(t, execute.Start())
	executing := func() bool {
		status, err := exec.Command("rbd", "-c", c.conf, "status", vol.Pool+"/"+vol.Image).CombinedOutput()
		require.NoError(t, err, "%s", status)
		return bytes.Contains(status, []byte("state: executing"))
	}
	require.Eventually(t, executing, time.Minute, 100*time.Millisecond, "the execute started")
	require.NoError(t, execute.Process.Kill())
	_ = execute.Wait()
	require.True(t, executing(), "killed mid-way")

	require.NoError(t, c.driver.Import(ctx, vol))
	srv.Close()
	assert.Equal(t, data, c.exported(t, vol))
}
