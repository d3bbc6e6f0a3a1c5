//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/client"

	"github.com/holdfast/holdfast/activities/backup"
	"github.com/holdfast/holdfast/activities/backup/stores"
	"github.com/holdfast/holdfast/activities/billing/contract"
	"github.com/holdfast/holdfast/activities/volume"
	"github.com/holdfast/holdfast/activities/volume/file"
	"github.com/holdfast/holdfast/starter/startertest"
	"github.com/holdfast/holdfast/workflows"
)

// beginRestore restores a backup to a new file volume on a hypervisor, at an explicit path.
func (e *e2e) beginRestore(volumeID, backupID, newVolumeID, hypervisorID string) string {
	return e.begin("POST", "/v1/volumes/"+volumeID+"/restore", map[string]any{"backup_id": backupID,
		"mode": "new_volume", "new_volume_id": newVolumeID, "hypervisor_id": hypervisorID,
		"storage": map[string]any{"type": "file", "path": e.volumePath(newVolumeID)}})
}

// assertRestoresIdentical restores a backup to a new volume <volume_id>-copy on hv2 and compares it with
// the source's bytes at backup time (invariant 2).
func (e *e2e) assertRestoresIdentical(volumeID, backupID string, original []byte) {
	e.t.Helper()
	op := e.wait(e.beginRestore(volumeID, backupID, volumeID+"-copy", "hv2"))
	require.Equal(e.t, "completed", op["status"], "%v", op)
	assertIdentical(e.t, original, e.volumePath(volumeID+"-copy"))
}

func assertIdentical(t *testing.T, want []byte, path string) {
	t.Helper()
	assert.True(t, bytes.Equal(want, readFile(t, path)), "%s differs from the backup's source", path)
}

// lastError returns the error of a process's last log record with message msg ("" if none): what an agent
// saw, to tell a fault that hit from one that missed.
func (e *e2e) lastError(process, msg string) string {
	recs := e.logged(process, msg)
	if len(recs) == 0 {
		return ""
	}
	return fmt.Sprint(recs[len(recs)-1]["error"])
}

func errorMessage(op map[string]any) string {
	if info, ok := op["error"].(map[string]any); ok {
		msg, _ := info["message"].(string)
		return msg
	}
	return ""
}

// assertFailedAtDeadline checks an operation stopped by its deadline says so, and names the step it was
// stuck in (e.g. "create snapshot on hypervisor hv1").
func (e *e2e) assertFailedAtDeadline(op map[string]any, step string) {
	e.t.Helper()
	require.Equal(e.t, "failed", op["status"], "%v", op)
	assert.Equal(e.t, workflows.ErrDeadlineExceeded, op["error"].(map[string]any)["type"], "%v", op)
	assert.Contains(e.t, errorMessage(op), fmt.Sprintf("did not finish within %s", faultDeadline))
	assert.Contains(e.t, errorMessage(op), step)
}

// assertUnlocked checks invariant 3 after a fault: the lock and the permit are back, and the volume takes
// the next operation at once.
func (e *e2e) assertUnlocked(volumeID, ownerID string) {
	e.t.Helper()
	e.assertReleased(volumeID, ownerID)
	e.assertAcceptsNext(volumeID)
}

// assertReleased checks the volume shows no active operation and the owner holds no permit.
func (e *e2e) assertReleased(volumeID, ownerID string) {
	e.t.Helper()
	status, vol := e.call("GET", "/v1/volumes/"+volumeID, panelToken, nil)
	require.Equal(e.t, 200, status, "%v", vol)
	assert.Nil(e.t, vol["active_operation"], "volume %s still locked", volumeID)
	var leases []workflows.Lease
	startertest.WaitFor(e.t, "owner "+ownerID+"'s permits back", func() bool {
		res, err := e.client().QueryWorkflow(context.Background(), workflows.OwnerWorkflowID(ownerID), "",
			workflows.QueryPermits)
		require.NoError(e.t, err)
		require.NoError(e.t, res.Get(&leases))
		return len(leases) == 0
	})
}

// assertAcceptsNext takes a snapshot at once (no cooldown in these configs) and deletes it again, leaving
// the volume as it was.
func (e *e2e) assertAcceptsNext(volumeID string) {
	e.t.Helper()
	op := e.wait(e.begin("POST", "/v1/volumes/"+volumeID+"/snapshots", map[string]any{"name": "next"}))
	snapID := itemID(e.t, op)
	op = e.wait(e.begin("DELETE", "/v1/volumes/"+volumeID+"/snapshots/"+snapID+"?confirm=next", nil))
	assert.Equal(e.t, "completed", op["status"], "%v", op)
}

// assertNoSnapshots checks invariant 4 on the volumes' own storage: no snapshot is left on them (a
// backup's temporary one, a half-made user one).
func assertNoSnapshots(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		snaps, err := file.New(file.NoLibvirt).ListSnapshots(context.Background(),
			volume.Ref{Type: volume.TypeFile, Path: p})
		require.NoError(t, err)
		assert.Empty(t, snaps, "snapshots left on %s", p)
	}
}

// engine opens the test's backup storage the way an agent does.
func (e *e2e) engine() *backup.Engine {
	eng, err := stores.OpenEngine(context.Background(), e.store,
		backup.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(e.t, err)
	return eng
}

// assertStoreHolds checks invariant 4 in backup storage, as the product leaves it (the test collects no
// garbage itself): a volume's objects become exactly the manifests of backupIDs and the chunks they
// reference — no manifest or chunk of a failed backup, no resume journal or lock, and on an fs store no
// temporary file. A failed backup's compensation removes its objects; when its store was down then, a
// CleanupWorkflow does once the store is back, so this waits (with a generous limit) for that.
func (e *e2e) assertStoreHolds(volumeID string, backupIDs ...string) {
	e.t.Helper()
	var extra, missing, got []string
	clean := func() bool {
		extra, missing, got = e.storeDiff(volumeID)
		return len(extra) == 0 && len(missing) == 0
	}
	end := time.Now().Add(3 * time.Minute)
	for !clean() && time.Now().Before(end) {
		time.Sleep(time.Second)
	}
	assert.ElementsMatch(e.t, backupIDs, got, "backups in storage")
	assert.Empty(e.t, extra, "objects left behind")
	assert.Empty(e.t, missing, "referenced objects missing")
}

// storeDiff lists a volume's objects that no manifest accounts for, the referenced ones that are missing,
// and the backups whose manifests are there.
func (e *e2e) storeDiff(volumeID string) (extra, missing, backups []string) {
	ctx := context.Background()
	eng := e.engine()
	ms, err := eng.ListVolume(ctx, volumeID)
	require.NoError(e.t, err)
	want := map[string]bool{}
	for _, m := range ms {
		backups = append(backups, m.BackupID)
		want["volumes/"+volumeID+"/manifests/"+m.BackupID+".json"] = true
		for _, c := range m.Chunks {
			want["volumes/"+volumeID+"/chunks/"+c.ID[:2]+"/"+c.ID] = true
		}
	}
	require.NoError(e.t, eng.Store().List(ctx, "volumes/"+volumeID+"/", func(oi backup.ObjectInfo) error {
		if !want[oi.Name] {
			extra = append(extra, oi.Name)
		}
		delete(want, oi.Name)
		return nil
	}))
	for name := range want {
		missing = append(missing, name)
	}
	if e.store.Type == "fs" {
		root := filepath.Join(e.store.FS.Path, "volumes", volumeID)
		_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if tmp, _ := filepath.Match(".tmp-*", d.Name()); err == nil && tmp {
				extra = append(extra, p)
			}
			return nil
		})
	}
	return extra, missing, backups
}

// chunkPath is the fs store file of one chunk (the second) of a backup.
func (e *e2e) chunkPath(volumeID, backupID string) string {
	m, err := e.engine().Manifest(context.Background(), volumeID, backupID)
	require.NoError(e.t, err)
	require.Greater(e.t, len(m.Chunks), 1)
	id := m.Chunks[1].ID
	return filepath.Join(e.store.FS.Path, "volumes", volumeID, "chunks", id[:2], id)
}

// assertBilledOnce bills the current hour twice (a re-run, as after a crash) and checks invariant 5: the
// second run adds nothing, the ledger holds each (volume, kind, hour) once, and each volume's backup line
// counts exactly its available backups (0: no line at all).
func (e *e2e) assertBilledOnce(backups map[string]int) {
	e.t.Helper()
	ctx := context.Background()
	hour := time.Now().UTC().Truncate(time.Hour)
	var runs [2]workflows.BillingResult
	for i := range runs {
		run, err := e.client().ExecuteWorkflow(ctx, client.StartWorkflowOptions{
			ID: fmt.Sprintf("billing-%s-%d", hour.Format("2006010215"), i), TaskQueue: workflows.TaskQueue},
			workflows.BillingWorkflow, workflows.BillingInput{Hour: hour})
		require.NoError(e.t, err)
		require.NoError(e.t, run.Get(ctx, &runs[i]))
	}
	assert.Zero(e.t, runs[1].LedgerWritten, "a re-run billed again")
	f, err := os.Open(e.ledgerPath())
	require.NoError(e.t, err)
	defer f.Close()
	lines := map[string]int{}
	items := map[string]int{}
	for sc := bufio.NewScanner(f); sc.Scan(); {
		var li contract.LineItem
		require.NoError(e.t, json.Unmarshal(sc.Bytes(), &li))
		if li.Hour.Equal(hour) {
			lines[li.IdempotencyKey]++
			if li.Kind == string(workflows.KindBackup) {
				items[li.VolumeID] = li.Items
			}
		}
	}
	for key, n := range lines {
		assert.Equal(e.t, 1, n, "ledger lines for %s", key)
	}
	for volumeID, n := range backups {
		assert.Equal(e.t, n, items[volumeID], "backups billed for %s (ledger lines %v)", volumeID, lines)
	}
}
