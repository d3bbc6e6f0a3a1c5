//go:build linux

package main

// The fault-injection suite (`make test-faults`; `go test -run TestFault ./cmd/holdfast`): real worker, agent
// and API processes on a real Temporal dev server and real stores (an fs store, on a tmpfs where the disk
// must fill up; a private MinIO per test, so stopping it disturbs no other test). Each case injects one
// fault from outside, as an operator's bad day would (kill -9, a store that goes away, a full disk, damaged
// chunks, a host that never returns), waits on the operation's own progress and outcome (never on a guessed
// sleep), then checks the architecture's invariants: no stuck lock (no active operation, the owner's permits
// back, the next operation accepted at once with cooldown 0s), no orphan (no snapshot left on the volume,
// no manifest of a failed backup, nothing unreferenced in storage after a GC with no grace period),
// byte-identical restores, and, where billing could count twice, one ledger line per (volume, kind, hour).

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/client"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/activities/backup"
	backupfs "github.com/holdfast/holdfast/activities/backup/fs"
	s3store "github.com/holdfast/holdfast/activities/backup/s3"
	"github.com/holdfast/holdfast/activities/backup/stores"
	"github.com/holdfast/holdfast/activities/billing/contract"
	"github.com/holdfast/holdfast/activities/volume"
	"github.com/holdfast/holdfast/activities/volume/file"
	"github.com/holdfast/holdfast/starter/startertest"
	"github.com/holdfast/holdfast/workflows"
)

const (
	// noCooldown lets a test check "the volume takes the next operation" right after a fault.
	noCooldown = "{cooldown: 0s}"
	// shortDeadline is the shortest deadline the config accepts, for the cases that must end at it.
	shortDeadline = "{cooldown: 0s, deadline: 1m}"
	faultDeadline = time.Minute
	// deadlineSlack is how long after its deadline an operation may take to end: compensating what healthy
	// hosts and stores hold, giving up on a dead host's cleanup (the workflows wait 2 minutes for an agent to
	// pick it up), recording the failure and releasing the lock, on a loaded 2-core machine. An operation
	// that outlives it holds its volume's lock and its owner's permit well past the deadline users are given.
	deadlineSlack = 3 * time.Minute
	// throttled makes a 96 MiB volume take ~8 s to back up or restore: time to inject a fault mid-way.
	throttled  = 12 << 20
	volumeSize = 96 << 20
)

func TestFaultAgentKilledMidRestore(t *testing.T) {
	t.Parallel()
	e := startE2E(t, e2eOptions{limits: noCooldown, hv2Bandwidth: throttled})
	original := makeVolume(t, e.volumePath("db"), volumeSize, volumeSize)
	e.register("db", "alice", "hv1")
	backupID := itemID(t, e.operation("POST", "/v1/volumes/db/backups", map[string]any{"name": "b"}))

	opID := e.beginRestore("db", backupID, "db-copy", "hv2")
	e.waitProgress(opID, 24<<20)
	e.kill("agent-hv2")
	e.start("agent-hv2b", "agent", "--config", e.config, "--hypervisor", "hv2")
	// The dead attempt is noticed at its heartbeat timeout (30 s); the retry rewrites the volume whole.
	op := e.waitWithin(opID, 3*time.Minute)
	require.Equal(t, "completed", op["status"], "%v", op)
	assertIdentical(t, original, e.volumePath("db-copy"))
	assert.NotEmpty(t, e.logged("agent-hv2b", "restore started"), "the restarted agent did the restore again")
	status, copyVol := e.call("GET", "/v1/volumes/db-copy", panelToken, nil)
	require.Equal(t, 200, status, "%v", copyVol)
	assert.Equal(t, "hv2", copyVol["hypervisor_id"])

	assertNoSnapshots(t, e.volumePath("db"), e.volumePath("db-copy"))
	e.assertStoreHolds("db", backupID)
	e.assertUnlocked("db", "alice")
	e.assertUnlocked("db-copy", "alice")
}

func TestFaultControlWorkerKilledMidBackup(t *testing.T) {
	t.Parallel()
	e := startE2E(t, e2eOptions{limits: noCooldown, hv1Bandwidth: throttled, ledger: true})
	original := makeVolume(t, e.volumePath("db"), volumeSize, volumeSize)
	e.register("db", "alice", "hv1")

	opID := e.begin("POST", "/v1/volumes/db/backups", map[string]any{"name": "b"})
	e.waitProgress(opID, 24<<20)
	e.kill("worker")
	e.start("worker-b", "worker", "--config", e.config)
	op := e.waitWithin(opID, 2*time.Minute)
	require.Equal(t, "available", op["status"], "%v", op)
	backupID := op["item_id"].(string)

	assertNoSnapshots(t, e.volumePath("db"))
	e.assertRestoresIdentical("db", backupID, original)
	e.assertStoreHolds("db", backupID)
	e.assertBilledOnce(map[string]int{"db": 1})
	e.assertUnlocked("db", "alice")
}

func TestFaultS3DownThirtySecondsMidUpload(t *testing.T) {
	t.Parallel()
	s3 := startMinIO(t)
	e := startE2E(t, e2eOptions{limits: noCooldown, hv1Bandwidth: throttled, store: s3.storeConfig(t)})
	original := makeVolume(t, e.volumePath("db"), volumeSize, volumeSize)
	e.register("db", "alice", "hv1")

	opID := e.begin("POST", "/v1/volumes/db/backups", map[string]any{"name": "b"})
	e.waitProgress(opID, 24<<20)
	s3.stop()
	time.Sleep(30 * time.Second) // the outage itself (the fault under test), not a wait for an outcome
	s3.start()
	op := e.waitWithin(opID, 3*time.Minute)
	require.Equal(t, "available", op["status"], "%v", op)
	backupID := op["item_id"].(string)
	// The outage hit the upload (an attempt failed) and a retry finished it.
	assert.NotEmpty(t, e.logged("agent-hv1", "upload failed"))

	assertNoSnapshots(t, e.volumePath("db"))
	e.assertRestoresIdentical("db", backupID, original)
	e.assertStoreHolds("db", backupID)
	e.assertUnlocked("db", "alice")
}

func TestFaultS3GoneMidUploadFailsAtDeadline(t *testing.T) {
	t.Parallel()
	s3 := startMinIO(t)
	e := startE2E(t, e2eOptions{limits: shortDeadline, hv1Bandwidth: throttled, store: s3.storeConfig(t),
		ledger: true})
	makeVolume(t, e.volumePath("db"), volumeSize, volumeSize)
	e.register("db", "alice", "hv1")

	opID := e.begin("POST", "/v1/volumes/db/backups", map[string]any{"name": "b"})
	e.waitProgress(opID, 24<<20)
	s3.stop() // for good (until the orphan check below)
	op := e.waitWithin(opID, faultDeadline+deadlineSlack)
	e.assertFailedAtDeadline(op, "upload on hypervisor hv1")

	assertNoSnapshots(t, e.volumePath("db"))
	e.assertReleased("db", "alice")
	e.assertBilledOnce(map[string]int{"db": 0})
	// Back up, the store holds nothing of the failed backup once GC ran: no manifest, journal or chunk.
	s3.start()
	e.assertStoreHolds("db")
	e.assertAcceptsNext("db")
}

func TestFaultFSStoreFull(t *testing.T) {
	t.Parallel()
	storeDir := mountTmpfs(t, "8m")
	e := startE2E(t, e2eOptions{limits: shortDeadline, ledger: true,
		store: &stores.Config{Type: "fs", FS: backupfs.Config{Path: storeDir}}})
	original := makeVolume(t, e.volumePath("db"), 32<<20, 32<<20) // incompressible: 4× the store
	e.register("db", "alice", "hv1")

	op := e.waitWithin(e.begin("POST", "/v1/volumes/db/backups", map[string]any{"name": "full"}),
		faultDeadline+deadlineSlack)
	require.Equal(t, "failed", op["status"], "%v", op)
	assert.Contains(t, errorMessage(op), "no space left on device", "the error names the cause; the agent saw: %s",
		e.lastError("agent-hv1", "upload failed"))
	assertNoSnapshots(t, e.volumePath("db"))
	e.assertStoreHolds("db")
	e.assertReleased("db", "alice")

	// Space freed: the next backup succeeds and restores byte-identical.
	remountTmpfs(t, storeDir, "96m")
	backupID := itemID(t, e.operation("POST", "/v1/volumes/db/backups", map[string]any{"name": "roomy"}))
	e.assertRestoresIdentical("db", backupID, original)
	assertNoSnapshots(t, e.volumePath("db"))
	e.assertStoreHolds("db", backupID)
	e.assertBilledOnce(map[string]int{"db": 1})
	e.assertAcceptsNext("db")
}

func TestFaultDamagedChunksFailRestoreLoudly(t *testing.T) {
	t.Parallel()
	e := startE2E(t, e2eOptions{limits: noCooldown})
	backups, originals := map[string]string{}, map[string][]byte{}
	for _, v := range []string{"missing", "flipped", "intact"} {
		originals[v] = makeVolume(t, e.volumePath(v), 16<<20, 16<<20)
		e.register(v, "alice", "hv1")
		backups[v] = itemID(t, e.operation("POST", "/v1/volumes/"+v+"/backups", map[string]any{"name": "b"}))
	}
	// Behind Holdfast's back: one chunk of one backup deleted, one byte of another's flipped.
	require.NoError(t, os.Remove(e.chunkPath("missing", backups["missing"])))
	flipped := e.chunkPath("flipped", backups["flipped"])
	data := readFile(t, flipped)
	data[len(data)/2] ^= 0x01
	require.NoError(t, os.WriteFile(flipped, data, 0o600))
	// An operator's scrub finds both, and only those.
	scrub := e.command("scrub", "--config", e.config, "--store", "local", "--json")
	out, err := scrub.Output()
	require.Equal(t, 1, scrub.ProcessState.ExitCode(), "scrub exits 1 on damage: %v\n%s", err, out)
	var report activities.ScrubResult
	require.NoError(t, json.Unmarshal(out, &report), "%s", out)
	assert.Equal(t, 3, report.Backups)
	damage := map[string][2]int{}
	for _, d := range report.Damaged {
		assert.Equal(t, backups[d.VolumeID], d.BackupID)
		damage[d.VolumeID] = [2]int{len(d.Missing), len(d.Corrupt)}
	}
	assert.Equal(t, map[string][2]int{"missing": {1, 0}, "flipped": {0, 1}}, damage, "damaged (missing, corrupt) chunks")

	for v, symptom := range map[string]string{"missing": "does not exist", "flipped": "corrupt"} {
		op := e.wait(e.beginRestore(v, backups[v], v+"-copy", "hv2"))
		require.Equal(t, "failed", op["status"], "%v", op)
		assert.Equal(t, "Corrupt", op["error"].(map[string]any)["type"], "%v", op)
		assert.Contains(t, errorMessage(op), symptom)
		// Compensation removed the half-written volume, and it was never registered.
		assert.NoFileExists(t, e.volumePath(v+"-copy"))
		status, _ := e.call("GET", "/v1/volumes/"+v+"-copy", panelToken, nil)
		assert.Equal(t, 404, status)
		e.assertUnlocked(v, "alice")
	}
	// The damage stays with its backup: another volume's backup in the same store restores intact.
	e.assertRestoresIdentical("intact", backups["intact"], originals["intact"])
	e.assertStoreHolds("intact", backups["intact"])
}

func TestFaultHypervisorNeverComesBack(t *testing.T) {
	t.Parallel()
	e := startE2E(t, e2eOptions{limits: shortDeadline})
	originals, backups := map[string][]byte{}, map[string]string{}
	for _, v := range []string{"a", "b"} {
		originals[v] = makeVolume(t, e.volumePath(v), 32<<20, 16<<20)
		e.register(v, "alice", "hv1")
		backups[v] = itemID(t, e.operation("POST", "/v1/volumes/"+v+"/backups", map[string]any{"name": "b"}))
	}
	e.kill("agent-hv1") // for good

	// A snapshot needs hv1, so it waits for it until the deadline...
	snapOpID := e.begin("POST", "/v1/volumes/a/snapshots", map[string]any{"name": "never"})
	// ...while a restore of b's backup onto hv2, meanwhile, never needs hv1.
	e.assertRestoresIdentical("b", backups["b"], originals["b"])

	op := e.waitWithin(snapOpID, faultDeadline+deadlineSlack)
	e.assertFailedAtDeadline(op, "create snapshot on hypervisor hv1")
	assertNoSnapshots(t, e.volumePath("a"))
	e.assertReleased("a", "alice")
	// The lock is free again: a's own backup restores onto hv2.
	e.assertRestoresIdentical("a", backups["a"], originals["a"])
}

// ---- faults ----

// minioServer is a private MinIO for one test, on its own port and data directory, so it can be stopped
// and started again without disturbing anything else.
type minioServer struct {
	t       *testing.T
	bin     string
	dir     string
	log     string
	addr    string
	console string
	cmd     *exec.Cmd
	exited  chan struct{}
}

const minioUser, minioPassword = "holdfast", "holdfast-secret"

// startMinIO starts a MinIO built by `make minio`; it is stopped when the test ends.
func startMinIO(t *testing.T) *minioServer {
	m := &minioServer{t: t, bin: toolPath(t, "minio"), dir: t.TempDir(), addr: startertest.FreeAddress(t),
		console: startertest.FreeAddress(t)}
	m.log = filepath.Join(t.TempDir(), "minio.log")
	m.start()
	t.Cleanup(m.stop)
	return m
}

// start (re)starts the server on the same address and data directory.
func (m *minioServer) start() {
	logf, err := os.OpenFile(m.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	require.NoError(m.t, err)
	cmd := exec.Command(m.bin, "server", m.dir, "--address", m.addr, "--console-address", m.console, "--quiet")
	cmd.Env = append(os.Environ(), "MINIO_ROOT_USER="+minioUser, "MINIO_ROOT_PASSWORD="+minioPassword,
		"MINIO_BROWSER=off", "MINIO_UPDATE=off")
	cmd.Stdout, cmd.Stderr = logf, logf
	require.NoError(m.t, cmd.Start())
	m.cmd, m.exited = cmd, make(chan struct{})
	go func(exited chan struct{}) { _ = cmd.Wait(); logf.Close(); close(exited) }(m.exited)
	startertest.WaitFor(m.t, "MinIO at "+m.addr, func() bool {
		select {
		case <-m.exited:
			m.t.Fatalf("MinIO exited; see %s", m.log)
		default:
		}
		resp, err := http.Get("http://" + m.addr + "/minio/health/live")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil && resp.StatusCode == 200
	})
}

// stop kills the server (kill -9: requests in flight are cut, as in a crash).
func (m *minioServer) stop() {
	if m.cmd == nil {
		return
	}
	_ = m.cmd.Process.Kill()
	<-m.exited
	m.cmd = nil
}

// storeConfig returns an S3 store config on this server, its bucket created.
func (m *minioServer) storeConfig(t *testing.T) *stores.Config {
	cfg := s3store.Config{Endpoint: "http://" + m.addr, Region: "us-east-1", Bucket: "holdfast", PathStyle: true,
		AccessKey: minioUser, SecretKey: minioPassword}
	st, err := s3store.New(context.Background(), cfg)
	require.NoError(t, err)
	require.NoError(t, st.EnsureBucket(context.Background()))
	return &stores.Config{Type: "s3", S3: cfg}
}

// toolPath finds a tool built by `make NAME` in $HOLDFAST_BIN_DIR (the Makefile's) or the repository's bin/.
func toolPath(t *testing.T, name string) string {
	dir := os.Getenv("HOLDFAST_BIN_DIR")
	if dir == "" {
		_, here, _, _ := runtime.Caller(0)
		dir = filepath.Join(filepath.Dir(here), "..", "..", "bin")
	}
	path := filepath.Join(dir, name)
	if _, err := os.Stat(path); err != nil {
		needed(t, fmt.Sprintf("%s not found (%v): make %s", name, err, name))
	}
	return path
}

// needed skips a test whose tool or privilege is missing, naming what provides it; under CI=true it fails.
func needed(t *testing.T, msg string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + " (CI=true: failing)")
	}
	t.Skip(msg)
}

// mountTmpfs mounts a tmpfs of size (e.g. "8m") on a new directory, unmounted when the test ends (after
// the processes using it are stopped: cleanups run last-registered first).
func mountTmpfs(t *testing.T, size string) string {
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		needed(t, fmt.Sprintf("cannot mount a tmpfs on %s (%v: %s): the disk-full case needs root, as CI has",
			dir, err, bytes.TrimSpace(out)))
	}
	t.Cleanup(func() { _ = exec.Command("umount", "--lazy", dir).Run() })
	return dir
}

func remountTmpfs(t *testing.T, dir, size string) {
	out, err := exec.Command("mount", "-o", "remount,size="+size, dir).CombinedOutput()
	require.NoError(t, err, "%s", out)
}

// ---- invariants ----

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

// TestFaultHungHypervisorCall: hv1's agent is up, but its hypervisor call never returns (a wedged libvirt, a
// stuck NFS): the snapshot step blocks forever and ignores its context. An abort ends the operation within
// seconds, and the deadline ends another one on time; each releases the lock and removes what it made.
func TestFaultHungHypervisorCall(t *testing.T) {
	t.Parallel()
	e := startE2E(t, e2eOptions{limits: shortDeadline, hv1Hang: "CreateSnapshot"})
	for _, v := range []string{"a", "b"} {
		makeVolume(t, e.volumePath(v), 8<<20, 4<<20)
		e.register(v, "alice", "hv1")
	}

	// Abort: answered at once, and the operation is over within seconds, not at a timeout.
	opID := e.begin("POST", "/v1/volumes/a/snapshots", map[string]any{"name": "wedged"})
	e.waitActive(opID, "creating")
	status, out := e.call("POST", "/v1/volumes/a/abort", panelToken, nil)
	require.Equal(t, 202, status, "%v", out)
	aborted := time.Now()
	op := e.waitWithin(opID, time.Minute)
	took := time.Since(aborted)
	assert.Equal(t, "aborted", op["status"], "%v", op)
	assert.Less(t, took, 10*time.Second, "an abort of a hung call ends the operation within seconds")
	assertNoSnapshots(t, e.volumePath("a"))
	e.assertReleased("a", "alice")

	// Deadline: the other volume's snapshot hangs until its deadline, which ends it on time.
	started := time.Now()
	opID = e.begin("POST", "/v1/volumes/b/snapshots", map[string]any{"name": "wedged"})
	op = e.waitWithin(opID, faultDeadline+deadlineSlack)
	e.assertFailedAtDeadline(op, "create snapshot on hypervisor hv1")
	assert.Less(t, time.Since(started), faultDeadline+30*time.Second, "ended at its deadline, not at a timeout")
	assertNoSnapshots(t, e.volumePath("b"))
	e.assertReleased("b", "alice")
}

// waitActive waits until an accepted operation's status is want (its step is running).
func (e *e2e) waitActive(operationID, want string) {
	e.t.Helper()
	startertest.WaitFor(e.t, fmt.Sprintf("operation %s %s", operationID, want), func() bool {
		_, op := e.call("GET", "/v1/operations/"+operationID, panelToken, nil)
		require.Nil(e.t, op["finished_at"], "operation %s ended early: %v", operationID, op)
		return op["status"] == want
	})
}

// TestFaultAgentRestartedDuringSnapshotCopy: a raw volume's snapshot is a full copy of its image (throttled
// by the host's bandwidth). The agent is killed mid-copy and restarted: the running attempt is gone for good.
// An abort ends the operation in under 10 s — not at a 15-minute timeout — and the partial copy is removed.
func TestFaultAgentRestartedDuringSnapshotCopy(t *testing.T) {
	t.Parallel()
	e := startE2E(t, e2eOptions{limits: noCooldown, hv1Bandwidth: throttled})
	makeVolume(t, e.volumePath("db"), volumeSize, volumeSize)
	e.register("db", "alice", "hv1")
	opID := e.begin("POST", "/v1/volumes/db/snapshots", map[string]any{"name": "big"})
	partials := func() []string {
		found, _ := filepath.Glob(filepath.Join(filepath.Dir(e.volumePath("db")), ".db.img.holdfast", "*.partial"))
		return found
	}
	startertest.WaitFor(t, "the snapshot copy under way", func() bool { return len(partials()) > 0 })
	e.kill("agent-hv1")
	e.startWith("agent-hv1b", nil, "agent", "--config", e.config, "--hypervisor", "hv1")

	status, out := e.call("POST", "/v1/volumes/db/abort", panelToken, nil)
	require.Equal(t, 202, status, "%v", out)
	aborted := time.Now()
	op := e.waitWithin(opID, 2*time.Minute)
	took := time.Since(aborted)
	assert.Equal(t, "aborted", op["status"], "%v", op)
	assert.Less(t, took, 10*time.Second, "the abort ends the operation within seconds, with its worker gone")
	assert.Empty(t, partials(), "the partial copy is removed by the compensation")
	assertNoSnapshots(t, e.volumePath("db"))
	e.assertUnlocked("db", "alice")
}
