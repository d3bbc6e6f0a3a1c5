//go:build linux

package main

// The Temporal cluster suite (`make test-cluster`; `go test -run TestCluster ./cmd/holdfast`): real worker,
// agent and API processes on Temporal as production runs it — temporal-server on PostgreSQL with the compose
// stack's configuration, each service its own process, two history hosts (cluster_harness_test.go) — instead
// of a dev server. The cases share one cluster, so they run one after another, each on volumes and an owner
// of its own: the lifecycle, then a history host killed (kill -9) mid-backup, then PostgreSQL restarted
// mid-backup. After each fault the operation must complete, release the volume's lock (the next operation is
// accepted at once), leave no snapshot or orphan behind, and its backup must restore byte-identical.

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/holdfast/holdfast/workflows"
)

// clusterFaultLimit is how long an operation hit by a fault may take to end: the dead host's shards move
// (ring membership notices the death within seconds, the survivor takes the shards over), or PostgreSQL
// comes back and every process reconnects, and activities whose reports were lost are retried at their
// heartbeat timeout, on a loaded 2-core machine.
const clusterFaultLimit = 5 * time.Minute

// pastCheckpoint is how far a backup gets before the fault: past its first checkpoint (workers.CheckpointEvery
// chunks, 32 MiB), so that a retried attempt has one to resume from. While its shard moves, or the database
// is down, the agent's heartbeats fail; the SDK then gives the attempt up, and the next one resumes.
const pastCheckpoint = 40 << 20

func TestClusterLifecycle(t *testing.T) {
	c := clusterFor(t)
	e := startE2E(t, e2eOptions{limits: noCooldown, temporal: c.target()})
	original := makeVolume(t, e.volumePath("life"), 32<<20, 16<<20)
	e.register("life", "alice", "hv1")

	snapID := itemID(t, e.operation("POST", "/v1/volumes/life/snapshots", map[string]any{"name": "before"}))
	backupID := itemID(t, e.operation("POST", "/v1/volumes/life/backups", map[string]any{"name": "nightly"}))
	e.assertRestoresIdentical("life", backupID, original)
	status, copyVol := e.call("GET", "/v1/volumes/life-copy", panelToken, nil)
	require.Equal(t, 200, status, "%v", copyVol)
	assert.Equal(t, "hv2", copyVol["hypervisor_id"])

	e.deleteSnapshotAndBackup("life", snapID, "before", backupID, "nightly")
	assertNoSnapshots(t, e.volumePath("life"))
	e.assertUnlocked("life", "alice")
}

// A history host dies (kill -9) mid-backup: the one that owns the backup's operation workflow, so the
// workflow's shard must move to the other host while the agent uploads. The host is restarted once the
// survivor holds every shard, and takes its share back.
func TestClusterHistoryHostKilledMidBackup(t *testing.T) {
	c := clusterFor(t)
	e := startE2E(t, e2eOptions{limits: noCooldown, hv1Bandwidth: slow, temporal: c.target()})
	original := makeVolume(t, e.volumePath("hist"), volumeSize, volumeSize)
	e.register("hist", "bob", "hv1")

	opID := e.begin("POST", "/v1/volumes/hist/backups", map[string]any{"name": "b"})
	at := e.waitProgress(opID, pastCheckpoint)
	owner, survivor := c.historyHostOf(t, e, workflows.OperationWorkflowID(opID))
	killed := time.Now()
	c.killService(owner)
	require.NoError(t, waitUntil(survivor+" owning every shard", clusterFaultLimit, func() error {
		n, err := c.ownedShards(survivor)
		if err == nil && n != c.shards {
			err = fmt.Errorf("%d shards of %d", n, c.shards)
		}
		return err
	}))
	t.Logf("killed %s (owner of the operation's shard) past %.0f MiB; %s owned all %d shards %.1fs later",
		owner, at/(1<<20), survivor, c.shards, time.Since(killed).Seconds())
	require.NoError(t, c.restartService(owner))
	require.NoError(t, c.waitOwnsShards(owner))

	e.assertBackupIntact(opID, "hist", "bob", original, killed)
}

// PostgreSQL stops mid-backup for a few seconds (a clean restart: every connection of every server process
// is cut) and comes back on the same data.
func TestClusterPostgresRestartedMidBackup(t *testing.T) {
	c := clusterFor(t)
	e := startE2E(t, e2eOptions{limits: noCooldown, hv1Bandwidth: slow, temporal: c.target()})
	original := makeVolume(t, e.volumePath("pg"), volumeSize, volumeSize)
	e.register("pg", "carol", "hv1")

	opID := e.begin("POST", "/v1/volumes/pg/backups", map[string]any{"name": "b"})
	e.waitProgress(opID, pastCheckpoint)
	stopped := time.Now()
	c.stopPostgres()
	time.Sleep(5 * time.Second) // the outage itself (the fault under test), not a wait for an outcome
	require.NoError(t, c.restartPostgres())
	require.NoError(t, c.allRunning(), "a server process exited while PostgreSQL was down")

	e.assertBackupIntact(opID, "pg", "carol", original, stopped)
}

// assertBackupIntact waits for a backup hit by a fault (at fault) and checks the invariants: it completed,
// left no snapshot, restores byte-identical, storage holds exactly it, and the volume's lock and its owner's
// permit are back (the next operation is accepted at once).
func (e *e2e) assertBackupIntact(opID, volumeID, ownerID string, original []byte, fault time.Time) {
	e.t.Helper()
	op := e.waitWithin(opID, clusterFaultLimit)
	require.Equal(e.t, "available", op["status"], "%v", op)
	// What the fault did to the upload, for the record: a fault that the agent never noticed passes too.
	var failures []any
	for _, rec := range e.logged("agent-hv1", "upload failed") {
		failures = append(failures, rec["error"])
	}
	var read float64
	for _, rec := range e.logged("agent-hv1", "upload done") {
		if v, ok := rec["read_bytes"].(float64); ok {
			read = v
		}
	}
	e.t.Logf("backup ended %.1fs after the fault; hv1's agent: %d upload attempts (%d resumed), the last read "+
		"%.0f MiB; failures: %v", time.Since(fault).Seconds(), len(e.logged("agent-hv1", "upload started")),
		len(e.logged("agent-hv1", "resuming upload")), read/(1<<20), failures)
	backupID := op["item_id"].(string)
	assertNoSnapshots(e.t, e.volumePath(volumeID))
	e.assertRestoresIdentical(volumeID, backupID, original)
	e.assertStoreHolds(volumeID, backupID)
	e.assertUnlocked(volumeID, ownerID)
}

// historyHostOf finds which history host owns a workflow's shard, and the other one: a history host serves
// DescribeWorkflowExecution for the workflows of its own shards only, so the host whose count of those
// requests grows by what the test sends is the owner.
func (c *temporalCluster) historyHostOf(t *testing.T, e *e2e, workflowID string) (owner, other string) {
	t.Helper()
	hosts := [2]string{"history-1", "history-2"}
	count := func(h string) float64 {
		v, err := c.metric(h, "service_requests{", `operation="DescribeWorkflowExecution"`)
		require.NoError(t, err)
		return v
	}
	before := [2]float64{count(hosts[0]), count(hosts[1])}
	const probes = 20
	for range probes {
		_, err := e.client().DescribeWorkflowExecution(context.Background(), workflowID, "")
		require.NoError(t, err)
	}
	// Counters reach /metrics at the server's next report (every second).
	require.NoError(t, waitUntil("the describe requests counted", time.Minute, func() error {
		grown := [2]float64{count(hosts[0]) - before[0], count(hosts[1]) - before[1]}
		for i, h := range hosts {
			if grown[i] >= probes && grown[1-i] < probes {
				owner, other = h, hosts[1-i]
				return nil
			}
		}
		return fmt.Errorf("describe requests counted by %s and %s: %v, want %d on one of them", hosts[0], hosts[1],
			grown, probes)
	}))
	return owner, other
}
