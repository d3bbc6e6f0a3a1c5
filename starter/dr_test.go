package starter_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/starter"
	"github.com/holdfast/holdfast/starter/startertest"
	"github.com/holdfast/holdfast/workers"
	"github.com/holdfast/holdfast/workers/config"
	"github.com/holdfast/holdfast/workflows"
)

// realSite is a control plane on its own dev server with real in-process agents (file volumes, fs stores).
type realSite struct {
	*startertest.Cluster
}

// newRealSite starts a dev server, the control worker, and real agents for hypervisors, serving every
// storage of the config through the first agent.
func newRealSite(t *testing.T, configYAML string, hypervisors ...string) *realSite {
	cfg, err := config.Parse(strings.NewReader(configYAML))
	require.NoError(t, err)
	agents := map[string]activities.Hypervisor{}
	var storage activities.Storage
	for _, hv := range hypervisors {
		a, err := workers.NewAgent(context.Background(), cfg, hv, nil, slog.New(slog.DiscardHandler))
		require.NoError(t, err)
		t.Cleanup(a.Close)
		agents[hv] = a.Activities
		if storage == nil {
			storage = a.Storage
		}
	}
	c := startertest.NewCluster(t, configYAML, agents)
	for name := range cfg.Storages {
		c.ServeStorage(t, name, storage)
	}
	return &realSite{Cluster: c}
}

func (s *realSite) wait(t *testing.T, op *workflows.Operation, err error) *workflows.Operation {
	t.Helper()
	require.NoError(t, err)
	final, err := s.Client.Watch(context.Background(), op.OperationID, 100*time.Millisecond, nil)
	require.NoError(t, err)
	require.Nil(t, final.Error, "operation %s failed", op.OperationID)
	return final
}

func writeVolume(t *testing.T, path string, data []byte) {
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, os.WriteFile(path, data, 0o644))
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return b
}

// TestIntegrationSiteLossRecoveredFromOffsiteReplica is the fire: site A backs up two volumes with required
// off-site replication, then loses its control plane, its hypervisor, its volumes and its local backup store.
// A fresh control plane (empty Temporal database) at site B, configured with only the off-site store and its
// own hypervisor, rebuilds the catalog from the replica and restores every backup, byte-identical.
func TestIntegrationSiteLossRecoveredFromOffsiteReplica(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	siteA, siteB, offsite := filepath.Join(dir, "site-a"), filepath.Join(dir, "site-b"), filepath.Join(dir, "offsite")
	a := newRealSite(t, fmt.Sprintf(`
limits: {cooldown: 0s}
backup_storages:
  local: {type: fs, path: %q, replica: offsite, require_replication: true}
  offsite: {type: fs, path: %q}
hypervisor_groups: {g1: {backup_storage: local}}
hypervisors: {hv1: {group: g1, libvirt_uri: none, volume_roots: [%q]}}
`, filepath.Join(siteA, "backups"), offsite, filepath.Join(siteA, "volumes")), "hv1")

	const size = 9 << 20 // two full chunks and a partial one
	versions := map[string][][]byte{}
	backups := map[string][]string{}
	var lastOp string
	for _, vol := range []string{"web", "db"} {
		path := filepath.Join(siteA, "volumes", vol+".raw")
		writeVolume(t, path, make([]byte, size)) // the hypervisor checks the file at registration
		_, err := a.Client.RegisterVolume(ctx, starter.RegisterRequest{VolumeID: vol, Name: vol + "-disk",
			OwnerID: "acct-" + vol, HypervisorID: "hv1", Storage: activities.VolumeRef{Type: "file", Path: path}})
		require.NoError(t, err)
		for i := 0; i < 2; i++ {
			data := randomBytes(t, size)
			writeVolume(t, path, data)
			started, err := a.Client.Backup(ctx, vol, fmt.Sprintf("%s-nightly-%d", vol, i))
			op := a.wait(t, started, err)
			versions[vol] = append(versions[vol], data)
			backups[vol] = append(backups[vol], op.ItemID)
			lastOp = op.OperationID
		}
		if vol == "web" {
			recordHistory(t, a.Client, workflows.OperationWorkflowID(lastOp), "backup-replicated")
			recordHistory(t, a.Client, workflows.ReplicateWorkflowID(vol, backups[vol][1]), "replicate")
		}
		v, err := a.Client.Volume(ctx, vol)
		require.NoError(t, err)
		require.Len(t, v.Backups, 2)
		for _, b := range v.Backups {
			require.NotNil(t, b.Replica, "backup %s records its replica", b.ItemID)
			assert.Equal(t, workflows.ReplicaReplicated, b.Replica.Status)
			assert.Equal(t, "offsite", b.Replica.Storage)
		}
	}

	// The fire: site A's volumes and local backups are gone, and its control plane with them (site B runs
	// its own dev server, whose database has never heard of these volumes).
	require.NoError(t, os.RemoveAll(siteA))

	b := newRealSite(t, fmt.Sprintf(`
limits: {cooldown: 0s}
backup_storages: {offsite: {type: fs, path: %q}}
hypervisor_groups: {g2: {backup_storage: offsite}}
hypervisors: {hv2: {group: g2, libvirt_uri: none, volume_roots: [%q, %q]}}
`, offsite,
		filepath.Join(siteB, "volumes"), filepath.Join(siteA, "volumes")), "hv2")
	_, err := b.Client.Volume(ctx, "web")
	require.Error(t, err, "site B starts empty")
	blocked, err := b.Client.Recover(ctx, starter.RecoverOptions{Storage: "offsite"})
	require.NoError(t, err)
	assert.Equal(t, 0, blocked.Registered, "hv1 is not configured here and no fallback was given")
	require.Len(t, blocked.Problems, 2)
	assert.Contains(t, blocked.Problems[0].Error, `hypervisor "hv1" is not configured`)
	res, err := b.Client.Recover(ctx, starter.RecoverOptions{Storage: "offsite", FallbackHypervisor: "hv2"})
	require.NoError(t, err)
	assert.Equal(t, 4, res.Manifests)
	assert.Equal(t, 2, res.Volumes)
	assert.Equal(t, 2, res.Registered)
	assert.Equal(t, 4, res.Imported)
	assert.Empty(t, res.Problems)
	again, err := b.Client.Recover(ctx, starter.RecoverOptions{Storage: "offsite", FallbackHypervisor: "hv2"})
	require.NoError(t, err)
	assert.Equal(t, workflows.RecoverResult{Storage: "offsite", Manifests: 4, Volumes: 2, Known: 4}, *again,
		"a second run changes nothing")
	recordHistory(t, b.Client, workflows.RecoverWorkflowID("offsite"), "recover")
	_, err = b.Client.Recover(ctx, starter.RecoverOptions{Storage: "nope"})
	assert.Equal(t, `store: unknown backup storage "nope"`, err.Error())

	for _, vol := range []string{"web", "db"} {
		v, err := b.Client.Volume(ctx, vol)
		require.NoError(t, err)
		assert.Equal(t, "acct-"+vol, v.Spec.OwnerID, "owner comes back from the manifest labels")
		assert.Equal(t, vol+"-disk", v.Spec.Name)
		assert.Equal(t, "hv2", v.Spec.HypervisorID, "hv1 is gone: registered on the fallback")
		require.Len(t, v.Backups, 2)
		for i, it := range v.Backups {
			assert.Equal(t, backups[vol][i], it.ItemID)
			assert.Equal(t, fmt.Sprintf("%s-nightly-%d", vol, i), it.Name)
			assert.Equal(t, workflows.StatusAvailable, it.Status)
			assert.Equal(t, "offsite", it.Storage)
			assert.True(t, it.Recovered)
			target := filepath.Join(siteB, "volumes", fmt.Sprintf("%s-restored-%d.raw", vol, i))
			restore, err := b.Client.Restore(ctx, vol, starter.RestoreRequest{BackupID: it.ItemID,
				Mode: workflows.ModeNewVolume, NewVolumeID: fmt.Sprintf("%s-restored-%d", vol, i), HypervisorID: "hv2",
				Storage: &activities.VolumeRef{Type: "file", Path: target}})
			b.wait(t, restore, err)
			got, err := os.ReadFile(target)
			require.NoError(t, err)
			require.True(t, bytes.Equal(versions[vol][i], got), "%s backup %d restores byte-identical", vol, i)
		}
	}
}
