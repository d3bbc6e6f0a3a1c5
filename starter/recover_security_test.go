package starter_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/activities/agent"
	"github.com/holdfast/holdfast/activities/backup"
	"github.com/holdfast/holdfast/activities/backup/stores"
	"github.com/holdfast/holdfast/starter"
	"github.com/holdfast/holdfast/workers"
	"github.com/holdfast/holdfast/workers/config"
)

// Anyone who can write to a bucket can write a manifest. `holdfast recover` registers volumes from manifest
// labels, so: in a plain store their paths go through the placement rules like a panel's registration; in
// an encrypted store a manifest the store key does not authenticate is never read at all.
func TestSecurityRecoverTrustsNoLabelsItCannotCheck(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	key := filepath.Join(dir, "store.key")
	require.NoError(t, os.WriteFile(key, []byte(hex.EncodeToString(bytes.Repeat([]byte{7}, 32))), 0o600))
	root := filepath.Join(dir, "volumes")
	yaml := fmt.Sprintf(`
limits: {cooldown: 0s}
backup_storages:
  plain: {type: fs, path: %q}
  sealed: {type: fs, path: %q, encryption_key_file: %q}
hypervisor_groups: {g1: {backup_storage: plain}}
hypervisors: {hv1: {group: g1, libvirt_uri: none, volume_roots: [%q]}}
`, filepath.Join(dir, "plain"), filepath.Join(dir, "sealed"), key, root)
	site := newRealSite(t, yaml, "hv1")
	cfg, err := config.Parse(bytes.NewReader([]byte(yaml)))
	require.NoError(t, err)
	engines := map[string]*backup.Engine{}
	for _, name := range []string{"plain", "sealed"} {
		sc, err := workers.StoreConfig(cfg.Storages[name])
		require.NoError(t, err)
		e, err := agent.NewEngines(ctx, map[string]stores.Config{name: sc}, 0, backup.Options{})
		require.NoError(t, err)
		engines[name] = e[name]
	}
	write := func(storage, volumeID, owner, path string) string {
		backupID := "bk-op-" + volumeID
		data := bytes.Repeat([]byte(volumeID), 1<<16)
		_, err := engines[storage].Backup(ctx, backup.BackupRequest{VolumeID: volumeID, BackupID: backupID,
			Source: bytes.NewReader(data), Size: int64(len(data)), SourceType: "raw", Labels: map[string]string{
				activities.LabelItemName: "nightly", activities.LabelOwnerID: owner,
				activities.LabelHypervisorID: "hv1", activities.LabelVolumeName: volumeID,
				activities.LabelVolumeType: "file", activities.LabelVolumePath: path}})
		require.NoError(t, err)
		return backupID
	}

	// A plain store: what its labels say is only as good as the placement rules.
	write("plain", "honest", "acct-1", filepath.Join(root, "honest.raw"))
	write("plain", "shadow", "mallory", "/etc/shadow")
	write("plain", "sneaky", "mallory", root+"/../../etc/passwd.raw")
	res, err := site.Client.Recover(ctx, starter.RecoverOptions{Storage: "plain"})
	require.NoError(t, err)
	assert.Equal(t, 1, res.Registered, "%+v", res)
	problems := map[string]string{}
	for _, p := range res.Problems {
		problems[p.VolumeID] = p.Error
	}
	assert.Contains(t, problems["shadow"], "storage.path")
	assert.Contains(t, problems["sneaky"], "storage.path")
	for _, v := range []string{"shadow", "sneaky"} {
		_, err := site.Client.Volume(ctx, v)
		assert.Error(t, err, "%s must not be registered", v)
	}

	// An encrypted store: a genuine manifest whose owner label was changed (hash recomputed, as anyone can)
	// is not read.
	id := write("sealed", "web", "acct-2", filepath.Join(root, "web.raw"))
	name := "volumes/web/manifests/" + id + ".json"
	st := engines["sealed"].Store()
	data, err := backup.ReadAll(ctx, st, name, 1<<20)
	require.NoError(t, err)
	forged := bytes.Replace(data, []byte(`"owner_id":"acct-2"`), []byte(`"owner_id":"mallory"`), 1)
	require.NotEqual(t, data, forged, "the label is in the manifest as stored")
	hashRE := regexp.MustCompile(`"manifest_hash":"[0-9a-f]*"`)
	sum := sha256.Sum256(hashRE.ReplaceAll(forged, []byte(`"manifest_hash":""`)))
	forged = hashRE.ReplaceAll(forged, []byte(`"manifest_hash":"`+hex.EncodeToString(sum[:])+`"`))
	require.NoError(t, backup.PutBytes(ctx, st, name, forged))
	res, err = site.Client.Recover(ctx, starter.RecoverOptions{Storage: "sealed"})
	require.NoError(t, err)
	assert.Equal(t, 0, res.Registered, "%+v", res)
	require.NotEmpty(t, res.Problems)
	assert.Contains(t, res.Problems[0].Error, "not authenticated")
	_, err = site.Client.Volume(ctx, "web")
	assert.Error(t, err, "a forged owner never gets a volume")
}
