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
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/holdfast/holdfast/activities"
	backupfs "github.com/holdfast/holdfast/activities/backup/fs"
	s3store "github.com/holdfast/holdfast/activities/backup/s3"
	"github.com/holdfast/holdfast/activities/backup/stores"
	"github.com/holdfast/holdfast/starter/startertest"
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
	// throttled makes a 96 MiB volume take ~8 s to back up or restore: time to inject a fault mid-way;
	// slow, ~16 s: time for a resume point (every 5 s) before the fault.
	throttled  = 12 << 20
	slow       = 6 << 20
	volumeSize = 96 << 20
)

func TestFaultAgentKilledMidRestore(t *testing.T) {
	t.Parallel()
	e := startE2E(t, e2eOptions{limits: noCooldown, hv2Bandwidth: slow})
	original := makeVolume(t, e.volumePath("db"), volumeSize, volumeSize)
	e.register("db", "alice", "hv1")
	backupID := itemID(t, e.operation("POST", "/v1/volumes/db/backups", map[string]any{"name": "b"}))

	opID := e.beginRestore("db", backupID, "db-copy", "hv2")
	e.waitProgress(opID, 48<<20)
	e.kill("agent-hv2")
	e.start("agent-hv2b", "agent", "--config", e.config, "--hypervisor", "hv2")
	// The dead attempt is noticed at its heartbeat timeout (30 s); the retry resumes from the last point the
	// dead agent flushed, and writes only the rest.
	op := e.waitWithin(opID, 3*time.Minute)
	require.Equal(t, "completed", op["status"], "%v", op)
	assertIdentical(t, original, e.volumePath("db-copy"))
	assertResumed(t, e.logged("agent-hv2b", "resuming restore"), e.logged("agent-hv2b", "restore done"),
		"bytes_written")
	status, copyVol := e.call("GET", "/v1/volumes/db-copy", panelToken, nil)
	require.Equal(t, 200, status, "%v", copyVol)
	assert.Equal(t, "hv2", copyVol["hypervisor_id"])

	assertNoSnapshots(t, e.volumePath("db"), e.volumePath("db-copy"))
	e.assertStoreHolds("db", backupID)
	e.assertUnlocked("db", "alice")
	e.assertUnlocked("db-copy", "alice")
}

// assertResumed checks that a restarted agent resumed (one "resuming ..." line) and, from its "... done"
// line's field, that it moved less than the whole volume: an agent that started over fails here.
func assertResumed(t *testing.T, resuming, done []map[string]any, field string) {
	t.Helper()
	require.Len(t, resuming, 1, "the restarted agent resumed from a checkpoint")
	at, _ := resuming[0]["next_offset"].(float64)
	require.Greater(t, at, 0.0)
	var moved float64
	n := 0
	for _, rec := range done { // the activity's line (the engine logs one of its own, without the field)
		if v, ok := rec[field].(float64); ok {
			moved, n = v, n+1
		}
	}
	require.Equal(t, 1, n, "one done line with %s: %v", field, done)
	t.Logf("resumed at %.0f MiB; the restarted agent's %s: %.0f MiB of %d", at/(1<<20), field, moved/(1<<20), volumeSize>>20)
	assert.LessOrEqual(t, moved, float64(volumeSize)-at, "the restarted agent redid only what was past its checkpoint")
}

// The hypervisor's agent killed (kill -9) mid-upload: the restarted agent resumes the upload from the
// dead one's last checkpoint, reading only the rest, and the backup restores byte-identical.
func TestFaultAgentKilledMidBackup(t *testing.T) {
	t.Parallel()
	e := startE2E(t, e2eOptions{limits: noCooldown, hv1Bandwidth: slow})
	original := makeVolume(t, e.volumePath("db"), volumeSize, volumeSize)
	e.register("db", "alice", "hv1")

	opID := e.begin("POST", "/v1/volumes/db/backups", map[string]any{"name": "b"})
	e.waitProgress(opID, 48<<20)
	e.kill("agent-hv1")
	e.start("agent-hv1b", "agent", "--config", e.config, "--hypervisor", "hv1")
	op := e.waitWithin(opID, 3*time.Minute)
	require.Equal(t, "available", op["status"], "%v", op)
	backupID := op["item_id"].(string)
	assertResumed(t, e.logged("agent-hv1b", "resuming upload"), e.logged("agent-hv1b", "upload done"), "read_bytes")

	assertNoSnapshots(t, e.volumePath("db"))
	e.assertRestoresIdentical("db", backupID, original)
	e.assertStoreHolds("db", backupID)
	e.assertUnlocked("db", "alice")
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

// The target's agent killed (kill -9) while an instant restore hydrates the new volume (offline): the
// restarted agent serves the backup again and hydrates only what the dead one had not, and the volume ends
// standing alone, byte-identical to the backup's source, with no export left.
func TestFaultAgentKilledMidHydration(t *testing.T) {
	t.Parallel()
	e := startE2E(t, e2eOptions{limits: noCooldown, hv2Bandwidth: slow})
	original := makeVolume(t, e.volumePath("db"), volumeSize, volumeSize)
	e.register("db", "alice", "hv1")
	backupID := itemID(t, e.operation("POST", "/v1/volumes/db/backups", map[string]any{"name": "b"}))

	target := filepath.Join(e.dir, "volumes", "db-instant.qcow2")
	opID := e.beginInstantRestore("db", backupID, "db-instant", "hv2", target)
	nv := e.waitRegistered("db-instant") // as soon as it is usable, long before it is hydrated
	assert.Equal(t, true, nv["hydrating"], "%v", nv)
	e.waitPhase(opID, "hydrating", 32<<20)
	e.kill("agent-hv2")
	e.start("agent-hv2b", "agent", "--config", e.config, "--hypervisor", "hv2")
	op := e.waitWithin(opID, 3*time.Minute)
	require.Equal(t, "completed", op["status"], "%v", op)

	assertHydrated(t, original, target)
	done := e.logged("agent-hv2b", "hydration done")
	require.Len(t, done, 1)
	hydrated, _ := done[0]["bytes_hydrated"].(float64)
	t.Logf("the restarted agent hydrated %.0f MiB of %d", hydrated/(1<<20), volumeSize>>20)
	assert.LessOrEqual(t, hydrated, float64(volumeSize-32<<20), "the restarted agent hydrated only what was missing")
	e.assertNoExports("hv2")
	status, nv := e.call("GET", "/v1/volumes/db-instant", panelToken, nil)
	require.Equal(t, 200, status)
	assert.Nil(t, nv["hydrating"])
	assertNoSnapshots(t, e.volumePath("db"), target)
	e.assertUnlocked("db", "alice")
	e.assertUnlocked("db-instant", "alice")
}
