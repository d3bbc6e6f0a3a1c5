package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/client"

	"github.com/holdfast/holdfast/activities/backup"
	"github.com/holdfast/holdfast/activities/backup/fs"
	"github.com/holdfast/holdfast/activities/backup/stores"
	"github.com/holdfast/holdfast/activities/volume/volumetest"
	"github.com/holdfast/holdfast/starter/api/apitest"
	"github.com/holdfast/holdfast/starter/startertest"
	"github.com/holdfast/holdfast/workers"
	"github.com/holdfast/holdfast/workflows"
)

// TestMain lets the test binary stand in for the holdfast binary: the end-to-end tests start it as real
// worker, agent and API processes (and kill them), exactly as an operator would run them.
func TestMain(m *testing.M) {
	if os.Getenv("HOLDFAST_E2E_MAIN") == "1" {
		ctx, stop := signalContext()
		defer stop()
		os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
	}
	code := m.Run()
	for _, stop := range afterTests {
		stop()
	}
	os.Exit(code)
}

// afterTests run once every test has ended: they stop what tests share across the run (the Temporal cluster
// of cluster_test.go).
var afterTests []func()

func signalContext() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan os.Signal, 1)
	signalNotify(ch)
	go func() { <-ch; cancel() }()
	return ctx, cancel
}

type e2e struct {
	t      *testing.T
	dev    *startertest.DevServer // nil on a shared Temporal (e2eOptions.temporal)
	dir    string
	config string
	api    string
	// store is the backup storage "local" that every hypervisor's group uses.
	store stores.Config
	// env is added to every process's environment (an S3 store's keys).
	env   []string
	procs map[string]*exec.Cmd
	// metrics is each process's /metrics address.
	metrics map[string]string
	// temporal is the frontend the processes use, and their namespace.
	temporal temporalTarget
	// temporalClient is a client of it, dialled on first use.
	temporalClient client.Client
}

const panelToken = "panel-e2e"

// e2eOptions vary the config the processes share; the zero value is the lifecycle test's.
type e2eOptions struct {
	// limits is the config's limits mapping (default {cooldown: 1s}).
	limits string
	// hv1Bandwidth and hv2Bandwidth throttle each agent's backup and restore I/O (bytes/s, 0: unlimited).
	hv1Bandwidth, hv2Bandwidth int64
	// store is the shared backup storage (default: an fs store in <dir>/backups). An S3 store's keys reach
	// the processes through the environment, never the file.
	store *stores.Config
	// ledger turns billing on, with its JSON-lines ledger at <dir>/billing.jsonl.
	ledger bool
	// hv1Hang lists driver calls hv1's agent hangs in forever (workers.HangEnv): a wedged hypervisor.
	hv1Hang string
	// temporal runs the processes on an existing Temporal (frontend address and namespace) instead of a dev
	// server of the test's own.
	temporal *temporalTarget
}

// temporalTarget is a Temporal frontend and the namespace Holdfast uses on it.
type temporalTarget struct {
	address, namespace string
}

// newE2E starts a dev server and real worker, agent (hv1, hv2) and API processes; hv1 is throttled to
// bandwidth bytes/s.
func newE2E(t *testing.T, bandwidth int64) *e2e {
	return startE2E(t, e2eOptions{hv1Bandwidth: bandwidth})
}

func startE2E(t *testing.T, o e2eOptions) *e2e {
	var dev *startertest.DevServer
	target := o.temporal
	if target == nil {
		dev = startertest.StartDevServer(t)
		target = &temporalTarget{address: dev.Address, namespace: "default"}
	}
	dir := t.TempDir()
	e := &e2e{t: t, dev: dev, temporal: *target, dir: dir, config: filepath.Join(dir, "holdfast.yaml"), api: startertest.FreeAddress(t),
		procs: map[string]*exec.Cmd{}, metrics: map[string]string{}}
	if o.limits == "" {
		o.limits = "{cooldown: 1s}"
	}
	e.store = stores.Config{Type: "fs", FS: fs.Config{Path: filepath.Join(dir, "backups")}}
	if o.store != nil {
		e.store = *o.store
	}
	billing := ""
	if o.ledger {
		billing = fmt.Sprintf("billing: {ledger_path: %q}", e.ledgerPath())
	}
	cfg := fmt.Sprintf(`
temporal: {address: %q, namespace: %q}
limits: %s
backup_storages: {local: %s}
hypervisor_groups: {g1: {backup_storage: local}}
hypervisors:
  hv1: {group: g1, libvirt_uri: %s, bandwidth_bytes_per_second: %d, volume_roots: [%q], export_dir: %q}
  hv2: {group: g1, libvirt_uri: none, bandwidth_bytes_per_second: %d, volume_roots: [%q], export_dir: %q}
%s
`, target.address, target.namespace, o.limits, e.storageYAML(), hv1Libvirt(t), o.hv1Bandwidth, filepath.Join(dir, "volumes"),
		filepath.Join(dir, "exports-hv1"), o.hv2Bandwidth, filepath.Join(dir, "volumes"), filepath.Join(dir, "exports-hv2"),
		billing)
	require.NoError(t, os.WriteFile(e.config, []byte(cfg), 0o644))
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "volumes"), 0o755))
	e.start("worker", "worker", "--config", e.config)
	e.startWith("agent-hv1", hangEnv(o.hv1Hang), "agent", "--config", e.config, "--hypervisor", "hv1")
	e.start("agent-hv2", "agent", "--config", e.config, "--hypervisor", "hv2")
	e.start("api", "api", "--config", e.config, "--listen", e.api)
	startertest.WaitFor(t, "API health", func() bool {
		resp, err := http.Get("http://" + e.api + "/healthz")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil && resp.StatusCode == 200
	})
	return e
}

// hv1Libvirt is hv1's libvirt_uri: the real libvirtd of the test services (HOLDFAST_LIBVIRT_URI), so that
// the end-to-end and fault cases run the agent as production does, asking libvirt whether a volume is in use;
// hv2 stays without libvirt, as a host that has none. Under CI=true a libvirtd that does not answer fails
// the test; elsewhere the case runs without it and says so.
func hv1Libvirt(t *testing.T) string {
	uri := os.Getenv("HOLDFAST_LIBVIRT_URI")
	if uri == "" {
		uri = "qemu:///system"
	}
	if os.Getenv("CI") == "true" {
		volumetest.RequireLibvirt(t, uri)
		return uri
	}
	if err := volumetest.LibvirtAnswers(uri); err != nil {
		t.Logf("hv1 runs without libvirt: %v (make services-up-libvirt)", err)
		return "none"
	}
	return uri
}

// storageYAML renders e.store as the config's backup storage (an S3 store's keys go into e.env).
func (e *e2e) storageYAML() string {
	if e.store.Type != "s3" {
		return fmt.Sprintf("{type: fs, path: %q}", e.store.FS.Path)
	}
	s := e.store.S3
	e.env = append(e.env, "HOLDFAST_E2E_S3_ACCESS_KEY="+s.AccessKey, "HOLDFAST_E2E_S3_SECRET_KEY="+s.SecretKey)
	return fmt.Sprintf("{type: s3, endpoint: %q, bucket: %q, path_style: true, "+
		"access_key_env: HOLDFAST_E2E_S3_ACCESS_KEY, secret_key_env: HOLDFAST_E2E_S3_SECRET_KEY}", s.Endpoint, s.Bucket)
}

func (e *e2e) ledgerPath() string { return filepath.Join(e.dir, "billing.jsonl") }

// client returns a Temporal client of the processes' Temporal and namespace (closed when the test ends).
func (e *e2e) client() client.Client {
	if e.temporalClient == nil {
		c, err := client.Dial(client.Options{HostPort: e.temporal.address, Namespace: e.temporal.namespace,
			Logger: startertest.QuietLogger{}})
		require.NoError(e.t, err)
		e.t.Cleanup(c.Close)
		e.temporalClient = c
	}
	return e.temporalClient
}

func (e *e2e) start(name string, args ...string) { e.startWith(name, nil, args...) }

// hangEnv is the environment that makes an agent hang in the named driver calls ("" : none).
func hangEnv(calls string) []string {
	if calls == "" {
		return nil
	}
	return []string{workers.HangEnv + "=" + calls}
}

// startWith starts a process with env added to the shared environment.
func (e *e2e) startWith(name string, env []string, args ...string) {
	e.metrics[name] = startertest.FreeAddress(e.t)
	args = append(args, "--metrics", e.metrics[name])
	cmd := e.command(args...)
	cmd.Env = append(cmd.Env, env...)
	logf, err := os.Create(filepath.Join(e.dir, name+".log"))
	require.NoError(e.t, err)
	cmd.Stdout, cmd.Stderr = logf, logf
	require.NoError(e.t, cmd.Start())
	e.procs[name] = cmd
	e.t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
		}
		logf.Close()
		if e.t.Failed() {
			e.printLog(name, logf.Name())
		}
	})
}

// printLog puts a child process's log (its last 64 KiB) in the test's output: a failed test shows what every
// process it ran said, not only what the test saw.
func (e *e2e) printLog(name, path string) {
	data, err := os.ReadFile(path)
	if err != nil {
		e.t.Logf("--- %s log: %v", name, err)
		return
	}
	const most = 64 << 10
	if len(data) > most {
		data = append([]byte("[…]\n"), data[len(data)-most:]...)
	}
	e.t.Logf("--- %s log (%s):\n%s", name, path, data)
}

// command is the holdfast binary (this test binary standing in for it) run with args, in the processes'
// shared environment.
func (e *e2e) command(args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "HOLDFAST_E2E_MAIN=1", "HOLDFAST_PANEL_TOKEN="+panelToken,
		"HOLDFAST_OWNER_TOKENS=alice=alice-token,bob=bob-token")
	cmd.Env = append(cmd.Env, e.env...)
	return cmd
}

// kill -9s a process, as a crash would.
func (e *e2e) kill(name string) {
	cmd := e.procs[name]
	require.NoError(e.t, cmd.Process.Kill())
	_, _ = cmd.Process.Wait()
}

func (e *e2e) call(method, path, token string, body any) (int, map[string]any) {
	e.t.Helper()
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		require.NoError(e.t, err)
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, "http://"+e.api+path, rd)
	require.NoError(e.t, err)
	req.Header.Set("Authorization", "Bearer "+token)
	// Every call is checked against docs/openapi.yaml: an answer it does not describe fails the test.
	resp, err := (&http.Client{Transport: apitest.Transport(e.t, nil)}).Do(req)
	require.NoError(e.t, err)
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// begin starts an operation that must be accepted at once, and returns its operation_id.
func (e *e2e) begin(method, path string, body any) string {
	e.t.Helper()
	status, out := e.call(method, path, panelToken, body)
	require.Equal(e.t, 202, status, "%s %s: %v", method, path, out)
	return out["operation_id"].(string)
}

// operation starts an operation (retrying through the 1 s cooldown) and waits for its end.
func (e *e2e) operation(method, path string, body any) map[string]any {
	e.t.Helper()
	var accepted map[string]any
	startertest.WaitFor(e.t, "accepted "+path, func() bool {
		status, out := e.call(method, path, panelToken, body)
		if status == 429 && out["error"].(map[string]any)["type"] == "Cooldown" {
			return false
		}
		require.Equal(e.t, 202, status, "%v", out)
		accepted = out
		return true
	})
	return e.wait(accepted["operation_id"].(string))
}

func (e *e2e) wait(operationID string) map[string]any { return e.waitWithin(operationID, time.Minute) }

// waitWithin waits at most limit for an operation to end, and returns it.
func (e *e2e) waitWithin(operationID string, limit time.Duration) map[string]any {
	e.t.Helper()
	end := time.Now().Add(limit)
	for {
		_, op := e.call("GET", "/v1/operations/"+operationID, panelToken, nil)
		if op["finished_at"] != nil {
			return op
		}
		if time.Now().After(end) {
			e.t.Fatalf("operation %s did not end within %s: %v\n%s", operationID, limit, op, e.pending(operationID))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// pending describes what an operation's workflow is waiting on (for failure messages).
func (e *e2e) pending(operationID string) string {
	resp, err := e.client().DescribeWorkflowExecution(context.Background(), workflows.OperationWorkflowID(operationID), "")
	if err != nil {
		return "describe: " + err.Error()
	}
	var b strings.Builder
	for _, pa := range resp.GetPendingActivities() {
		fmt.Fprintf(&b, "pending activity %s (%s), attempt %d, last failure: %s\n", pa.GetActivityType().GetName(),
			pa.GetState(), pa.GetAttempt(), pa.GetLastFailure().GetMessage())
	}
	return b.String()
}

// waitProgress waits until a running operation's transfer (a backup's upload, a restore's download: not the
// snapshot copy before an upload) reports at least bytes done, and returns what it reported.
func (e *e2e) waitProgress(operationID string, bytes float64) float64 {
	e.t.Helper()
	var done float64
	startertest.WaitFor(e.t, fmt.Sprintf("operation %s past %.0f bytes", operationID, bytes), func() bool {
		_, op := e.call("GET", "/v1/operations/"+operationID, panelToken, nil)
		require.Nil(e.t, op["finished_at"], "operation %s ended before the fault: %v", operationID, op)
		if p, ok := op["progress"].(map[string]any); ok && p["phase"] == backup.PhaseTransfer {
			done = p["bytes_done"].(float64)
		}
		return done >= bytes
	})
	return done
}

// waitPhase waits until an operation's progress is in phase past bytes.
func (e *e2e) waitPhase(operationID, phase string, bytes float64) {
	e.t.Helper()
	startertest.WaitFor(e.t, fmt.Sprintf("operation %s %s past %.0f bytes", operationID, phase, bytes), func() bool {
		_, op := e.call("GET", "/v1/operations/"+operationID, panelToken, nil)
		require.Nil(e.t, op["finished_at"], "operation %s ended before the fault: %v", operationID, op)
		p, ok := op["progress"].(map[string]any)
		return ok && p["phase"] == phase && p["bytes_done"].(float64) >= bytes
	})
}

func (e *e2e) scrape(process string) string {
	resp, err := http.Get("http://" + e.metrics[process] + "/metrics")
	require.NoError(e.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(e.t, err)
	return string(b)
}

// metricValue returns the value of the first sample whose name and labels start with prefix ("" if none).
func metricValue(exposition, prefix string) string {
	for _, line := range strings.Split(exposition, "\n") {
		if strings.HasPrefix(line, prefix) {
			fields := strings.Fields(line)
			return fields[len(fields)-1]
		}
	}
	return ""
}

// logged returns a process's JSON log records whose message is msg, oldest first.
func (e *e2e) logged(process, msg string) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(string(readFile(e.t, filepath.Join(e.dir, process+".log"))), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == msg {
			out = append(out, rec)
		}
	}
	return out
}

// deleteSnapshotAndBackup deletes a snapshot and a backup of volumeID through the API, each confirmed by
// its name, and checks that both operations completed, that the volume lists neither, and that the
// backup's manifest is gone from storage (the fs store under e.dir).
func (e *e2e) deleteSnapshotAndBackup(volumeID, snapID, snapName, backupID, backupName string) {
	t := e.t
	t.Helper()
	op := e.operation("DELETE", "/v1/volumes/"+volumeID+"/snapshots/"+snapID+"?confirm="+snapName, nil)
	assert.Equal(t, "completed", op["status"], "%v", op)
	op = e.operation("DELETE", "/v1/volumes/"+volumeID+"/backups/"+backupID+"?confirm="+backupName, nil)
	assert.Equal(t, "completed", op["status"], "%v", op)
	_, vol := e.call("GET", "/v1/volumes/"+volumeID, panelToken, nil)
	assert.Empty(t, vol["snapshots"])
	assert.Empty(t, vol["backups"])
	manifests, _ := filepath.Glob(filepath.Join(e.dir, "backups", "volumes", volumeID, "manifests", "*"))
	assert.Empty(t, manifests, "the deleted backup's manifest is gone from storage")
}

func (e *e2e) volumePath(name string) string { return filepath.Join(e.dir, "volumes", name+".img") }

func (e *e2e) register(volumeID, owner, hypervisor string) {
	status, out := e.call("PUT", "/v1/volumes/"+volumeID, panelToken, map[string]any{"name": volumeID,
		"owner_id": owner, "hypervisor_id": hypervisor, "plan": "standard",
		"storage": map[string]any{"type": "file", "path": e.volumePath(volumeID)}})
	require.Equal(e.t, 200, status, "%v", out)
}

// makeVolume writes a raw volume: random data in its first part, zeros (sparse) after.
func makeVolume(t *testing.T, path string, size, random int64) []byte {
	data := make([]byte, size)
	_, err := rand.Read(data[:random])
	require.NoError(t, err)
	f, err := os.Create(path)
	require.NoError(t, err)
	_, err = f.WriteAt(data[:random], 0)
	require.NoError(t, err)
	require.NoError(t, f.Truncate(size))
	require.NoError(t, f.Close())
	return data
}

func readFile(t *testing.T, path string) []byte {
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return b
}

func itemID(t *testing.T, op map[string]any) string {
	require.Contains(t, []any{"available", "completed"}, op["status"], "%v", op)
	return op["item_id"].(string)
}

func TestE2ELifecycleThroughHTTP(t *testing.T) {
	e := newE2E(t, 0)
	original := makeVolume(t, e.volumePath("web"), 64<<20, 24<<20)
	e.register("web", "alice", "hv1")

	snapID := itemID(t, e.operation("POST", "/v1/volumes/web/snapshots", map[string]any{"name": "before"}))
	backupID := itemID(t, e.operation("POST", "/v1/volumes/web/backups", map[string]any{"name": "nightly"}))

	// Metrics: the agent counted the bytes it read, the worker the operations, with the SDK's own beside them.
	agentMetrics, workerMetrics := e.scrape("agent-hv1"), e.scrape("worker")
	assert.Equal(t, "6.7108864e+07", metricValue(agentMetrics, `holdfast_backup_bytes_read_total{hypervisor="hv1"}`)) // 64 MiB
	assert.Equal(t, "1", metricValue(workerMetrics, `holdfast_operations_finished_total{kind="backup",result="completed"}`))
	assert.NotEmpty(t, metricValue(workerMetrics, "temporal_workflow_completed_total"), "the SDK's own metrics")

	// New data after both: the restores must bring back the old bytes.
	f, err := os.OpenFile(e.volumePath("web"), os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(bytes.Repeat([]byte{0xEE}, 8<<20), 4<<20)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	// Restore the backup to a new volume on another hypervisor: byte-identical to the volume at backup time.
	op := e.operation("POST", "/v1/volumes/web/restore", map[string]any{"backup_id": backupID, "mode": "new_volume",
		"new_volume_id": "web-copy", "new_volume_name": "copy", "hypervisor_id": "hv2"})
	assert.Equal(t, "completed", op["status"], "%v", op)
	status, copyVol := e.call("GET", "/v1/volumes/web-copy", panelToken, nil)
	require.Equal(t, 200, status)
	assert.Equal(t, "hv2", copyVol["hypervisor_id"])
	copyPath := copyVol["storage"].(map[string]any)["path"].(string)
	assert.True(t, bytes.Equal(original, readFile(t, copyPath)), "restored copy differs from the backup's source")

	// In-place restore of the snapshot needs the volume's name.
	status, out := e.call("POST", "/v1/volumes/web/restore", panelToken, map[string]any{"snapshot_id": snapID,
		"mode": "in_place", "confirm": "wbe"})
	require.Equal(t, 400, status)
	assert.Equal(t, "ConfirmationMismatch", out["error"].(map[string]any)["type"])
	op = e.operation("POST", "/v1/volumes/web/restore", map[string]any{"snapshot_id": snapID, "mode": "in_place",
		"confirm": "web"})
	assert.Equal(t, "completed", op["status"], "%v", op)
	assert.True(t, bytes.Equal(original, readFile(t, e.volumePath("web"))), "in-place restore differs from the snapshot")

	// Owner scoping: bob cannot see alice's volume; alice can.
	status, _ = e.call("GET", "/v1/volumes/web", "bob-token", nil)
	assert.Equal(t, 404, status)
	status, _ = e.call("GET", "/v1/volumes/web", "alice-token", nil)
	assert.Equal(t, 200, status)

	// Delete with confirmation.
	e.deleteSnapshotAndBackup("web", snapID, "before", backupID, "nightly")

	// The volume holds the original bytes again and their chunks are still stored (no GC yet): a new
	// backup uploads nothing, and the agent counts all 24 MiB of data as deduplicated.
	op = e.operation("POST", "/v1/volumes/web/backups", nil)
	assert.Equal(t, "available", op["status"], "%v", op)
	assert.Equal(t, "2.5165824e+07", metricValue(e.scrape("agent-hv1"),
		`holdfast_backup_bytes_deduplicated_total{hypervisor="hv1"}`))
}

func TestE2EAgentKilledMidBackupResumes(t *testing.T) {
	// 12 MiB/s: a 128 MiB volume of random data takes ~11 s to upload. The agent is killed once two
	// checkpoints (every 8 chunks, 32 MiB) are behind it, so resuming from the latest one and not an earlier
	// one (or from 0) is what the tolerance below tells apart.
	e := newE2E(t, 12<<20)
	original := makeVolume(t, e.volumePath("db"), 128<<20, 128<<20)
	e.register("db", "alice", "hv1")
	opID := e.begin("POST", "/v1/volumes/db/backups", map[string]any{"name": "b"})
	before := e.waitProgress(opID, 72<<20)
	e.kill("agent-hv1")
	time.Sleep(time.Second)
	e.start("agent-hv1b", "agent", "--config", e.config, "--hypervisor", "hv1")
	op := e.wait(opID)
	require.Equal(t, "available", op["status"], "%v", op)

	backupID := op["item_id"].(string)
	restored := e.operation("POST", "/v1/volumes/db/restore", map[string]any{"backup_id": backupID,
		"mode": "new_volume", "new_volume_id": "db-copy"})
	require.Equal(t, "completed", restored["status"], "%v", restored)
	status, copyVol := e.call("GET", "/v1/volumes/db-copy", panelToken, nil)
	require.Equal(t, 200, status, "%v", copyVol)
	assert.True(t, bytes.Equal(original, readFile(t, copyVol["storage"].(map[string]any)["path"].(string))))
	// The retried attempt resumed from its heartbeat checkpoint, not from offset 0: it re-read at most one
	// checkpoint batch (8 chunks) of what the killed agent had already reported done.
	resumes := e.logged("agent-hv1b", "resuming upload")
	require.NotEmpty(t, resumes, "the restarted agent did not resume the upload")
	resumed := resumes[len(resumes)-1]["next_offset"].(float64)
	assert.Greater(t, resumed, 0.0)
	tolerance := before - float64(workers.CheckpointEvery*4<<20)
	require.Greater(t, tolerance, float64(workers.CheckpointEvery*4<<20), "killed past the second checkpoint")
	assert.GreaterOrEqual(t, resumed, tolerance)
}
