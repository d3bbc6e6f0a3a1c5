//go:build linux

package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/holdfast/holdfast/activities/volume/volumetest"
)

// An instant restore used by a running (TCG) domain while it hydrates, through real worker, agent and API
// processes: the panel has the new volume's path attached to a stopped VM; the restore registers the volume
// (hydrating) within seconds, the VM starts on it, reads the backup through it and writes to it; the
// hydration is QEMU's block-stream inside that VM, throttled like any restore; the operation completes with
// the volume standing alone, holding the backup plus the guest's writes, byte for byte.
func TestE2EInstantRestoreUnderARunningDomain(t *testing.T) {
	uri := os.Getenv("HOLDFAST_LIBVIRT_URI")
	if uri == "" {
		uri = "qemu:///system"
	}
	volumetest.RequireLibvirt(t, uri)
	e := startE2E(t, e2eOptions{limits: noCooldown, hv1Bandwidth: throttled})
	original := makeVolume(t, e.volumePath("db"), volumeSize, volumeSize)
	e.register("db", "alice", "hv1")
	backupID := itemID(t, e.operation("POST", "/v1/volumes/db/backups", map[string]any{"name": "b"}))

	target := filepath.Join(e.dir, "volumes", "db-live.qcow2")
	dom := volumetest.DefineDomain(t, uri, fmt.Sprintf(`<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='%s'/><target dev='vda' bus='virtio'/></disk>`, target))
	requested := time.Now()
	opID := e.begin("POST", "/v1/volumes/db/restore", map[string]any{"backup_id": backupID, "mode": "new_volume",
		"new_volume_id": "db-live", "hypervisor_id": "hv1", "instant": true,
		"storage": map[string]any{"type": "file", "path": target}})
	var nv map[string]any
	for {
		var status int
		status, nv = e.call("GET", "/v1/volumes/db-live", panelToken, nil)
		if status == 200 {
			break
		}
		require.Less(t, time.Since(requested), time.Minute, "the new volume is registered")
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("usable %.2f s after the request", time.Since(requested).Seconds())
	assert.Equal(t, true, nv["hydrating"])
	dom.Start(t)
	want := bytes.Clone(original)
	dom.Write(t, "vda", 40<<20, 4<<20, 0x5e) // the guest writes while the volume hydrates
	for i := 40 << 20; i < 44<<20; i++ {
		want[i] = 0x5e
	}
	_, op := e.call("GET", "/v1/operations/"+opID, panelToken, nil)
	assert.Nil(t, op["finished_at"], "still hydrating when the guest wrote: %v", op)

	op = e.waitWithin(opID, 3*time.Minute)
	require.Equal(t, "completed", op["status"], "%v", op)
	dom.Stop(t)
	info, err := exec.Command("qemu-img", "info", "--output=json", "-f", "qcow2", target).Output()
	require.NoError(t, err)
	assert.NotContains(t, string(info), "backing-filename", "the volume stands alone")
	raw := filepath.Join(t.TempDir(), "db-live.raw")
	out, err := exec.Command("qemu-img", "convert", "-f", "qcow2", "-O", "raw", target, raw).CombinedOutput()
	require.NoError(t, err, "%s", out)
	assertIdentical(t, want, raw)
	sockets, err := filepath.Glob(filepath.Join(e.dir, "exports-hv1", "*.sock"))
	require.NoError(t, err)
	assert.Empty(t, sockets, "no export left")
	e.assertUnlocked("db", "alice")
	e.assertUnlocked("db-live", "alice")
}

// An instant restore aborted while it hydrates, through real processes: the operation ends aborted within
// the abort's bound, the new volume is unregistered and its file deleted, the export is gone, and both
// volumes' locks and the owner's permit are released.
func TestE2EInstantRestoreAborted(t *testing.T) {
	e := startE2E(t, e2eOptions{limits: noCooldown, hv2Bandwidth: slow})
	makeVolume(t, e.volumePath("db"), volumeSize, volumeSize)
	e.register("db", "alice", "hv1")
	backupID := itemID(t, e.operation("POST", "/v1/volumes/db/backups", map[string]any{"name": "b"}))
	target := filepath.Join(e.dir, "volumes", "db-gone.qcow2")
	opID := e.begin("POST", "/v1/volumes/db/restore", map[string]any{"backup_id": backupID, "mode": "new_volume",
		"new_volume_id": "db-gone", "hypervisor_id": "hv2", "instant": true,
		"storage": map[string]any{"type": "file", "path": target}})
	e.waitPhase(opID, "hydrating", 16<<20)
	status, out := e.call("POST", "/v1/volumes/db/abort", panelToken, nil)
	require.Equal(t, 202, status, "%v", out)
	aborted := time.Now()
	op := e.waitWithin(opID, time.Minute)
	require.Equal(t, "aborted", op["status"], "%v", op)
	t.Logf("aborted %.1f s after the request", time.Since(aborted).Seconds())
	status, _ = e.call("GET", "/v1/volumes/db-gone", panelToken, nil)
	assert.Equal(t, 404, status, "unregistered")
	_, err := os.Stat(target)
	assert.True(t, os.IsNotExist(err), "the new volume's file is deleted: %v", err)
	sockets, err := filepath.Glob(filepath.Join(e.dir, "exports-hv2", "*.sock"))
	require.NoError(t, err)
	assert.Empty(t, sockets, "no export left")
	e.assertUnlocked("db", "alice")
	// Its ID and location are free again: a panel registers a volume of its own there.
	out2, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", target, "16M").CombinedOutput()
	require.NoError(t, err, "%s", out2)
	status, out = e.call("PUT", "/v1/volumes/db-gone", panelToken, map[string]any{"name": "db-gone",
		"owner_id": "alice", "hypervisor_id": "hv2", "plan": "standard",
		"storage": map[string]any{"type": "file", "path": target}})
	require.Equal(t, 200, status, "%v", out)
}
