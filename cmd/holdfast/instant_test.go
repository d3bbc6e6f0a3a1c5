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
	opID := e.beginInstantRestore("db", backupID, "db-live", "hv1", target)
	nv := e.waitRegistered("db-live")
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
	assertHydrated(t, want, target)
	e.assertNoExports("hv1")
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
	opID := e.beginInstantRestore("db", backupID, "db-gone", "hv2", target)
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
	e.assertNoExports("hv2")
	e.assertUnlocked("db", "alice")
	// Its ID and location are free again: a panel registers a volume of its own there.
	out2, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", target, "16M").CombinedOutput()
	require.NoError(t, err, "%s", out2)
	status, out = e.call("PUT", "/v1/volumes/db-gone", panelToken, map[string]any{"name": "db-gone",
		"owner_id": "alice", "hypervisor_id": "hv2", "plan": "standard",
		"storage": map[string]any{"type": "file", "path": target}})
	require.Equal(t, 200, status, "%v", out)
}

// beginInstantRestore starts an instant restore of a backup to a new file volume at target on hypervisorID.
func (e *e2e) beginInstantRestore(volumeID, backupID, newVolumeID, hypervisorID, target string) string {
	return e.begin("POST", "/v1/volumes/"+volumeID+"/restore", map[string]any{"backup_id": backupID,
		"mode": "new_volume", "new_volume_id": newVolumeID, "hypervisor_id": hypervisorID, "instant": true,
		"storage": map[string]any{"type": "file", "path": target}})
}

// waitRegistered polls GET /v1/volumes/{id} every 50 ms (the callers time it) until it answers 200, for at
// most a minute, and returns the volume.
func (e *e2e) waitRegistered(volumeID string) map[string]any {
	e.t.Helper()
	for start := time.Now(); ; time.Sleep(50 * time.Millisecond) {
		status, v := e.call("GET", "/v1/volumes/"+volumeID, panelToken, nil)
		if status == 200 {
			return v
		}
		require.Less(e.t, time.Since(start), time.Minute, "volume %s registered", volumeID)
	}
}

// assertHydrated checks that a qcow2 volume stands alone (no backing) and holds want, read by qemu-img.
func assertHydrated(t *testing.T, want []byte, path string) {
	t.Helper()
	info, err := exec.Command("qemu-img", "info", "--output=json", "-f", "qcow2", path).Output()
	require.NoError(t, err)
	assert.NotContains(t, string(info), "backing-filename", "the volume stands alone")
	raw := filepath.Join(t.TempDir(), filepath.Base(path)+".raw")
	out, err := exec.Command("qemu-img", "convert", "-f", "qcow2", "-O", "raw", path, raw).CombinedOutput()
	require.NoError(t, err, "%s", out)
	assertIdentical(t, want, raw)
}

// assertNoExports checks that hypervisorID's agent serves no instant restore's export any more.
func (e *e2e) assertNoExports(hypervisorID string) {
	e.t.Helper()
	sockets, err := filepath.Glob(filepath.Join(e.dir, "exports-"+hypervisorID, "*.sock"))
	require.NoError(e.t, err)
	assert.Empty(e.t, sockets, "no export left")
}
