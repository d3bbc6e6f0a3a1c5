package api_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/starter/api"
	"github.com/holdfast/holdfast/starter/api/apitest"
	"github.com/holdfast/holdfast/starter/startertest"
)

// An owner token never chooses where or on what a new volume lives, nor its ID: each such field is a 400
// naming it (it used to be honoured, or for storage silently dropped).
func TestAPIOwnerRestoreRefusesPlacementFields(t *testing.T) {
	const restore = "/v1/volumes/v1/restore"
	for _, c := range []struct{ body, message string }{
		{`{"snapshot_id": "s1", "mode": "new_volume", "new_volume_id": "v2"}`,
			"new_volume_id: chosen by Holdfast for owner tokens; omit it"},
		{`{"snapshot_id": "s1", "mode": "new_volume", "plan": "gold"}`,
			"plan: the new volume keeps the source's plan for owner tokens; omit it"},
		{`{"snapshot_id": "s1", "mode": "new_volume", "hypervisor_id": "hv1"}`,
			"hypervisor_id: the new volume stays on the source's hypervisor for owner tokens; omit it"},
		{`{"snapshot_id": "s1", "mode": "new_volume", "storage": {"type": "file", "path": "/etc/shadow"}}`,
			"storage: chosen by Holdfast for owner tokens; omit it"},
		{`{"backup_id": "b1", "mode": "in_place", "confirm": "web-data", "storage": {"type": "rbd"}}`,
			"storage: chosen by Holdfast for owner tokens; omit it"},
	} {
		requireRefused(t, offline(t, "POST", restore, "alice-token", c.body), http.StatusBadRequest, "InvalidArgument",
			c.message)
	}
	// The panel may choose them: they go on to the starter client (which checks them against the config).
	a := offline(t, "POST", restore, "panel-secret",
		`{"snapshot_id": "s1", "mode": "new_volume", "new_volume_id": "v2", "plan": "standard", "hypervisor_id": "hv1"}`)
	if strings.Contains(a.message, "owner tokens") {
		t.Fatalf("the panel may choose them: %s", a.raw)
	}
}

// A malformed new_volume_id is reported as new_volume_id, not as the volume_id it becomes.
func TestAPIBadNewVolumeIDNamesItsField(t *testing.T) {
	for _, id := range []string{"../x", "-x", "a b", "x/y", "é"} {
		a := offline(t, "POST", "/v1/volumes/v1/restore", "panel-secret",
			`{"snapshot_id": "s1", "mode": "new_volume", "new_volume_id": "`+id+`"}`)
		requireRefused(t, a, http.StatusBadRequest, "InvalidArgument",
			"new_volume_id: must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
	}
}

// Through the real control plane: an owner restores to a new volume without naming it, the 202 and the
// operation give the ID Holdfast chose, and the volume under that ID is the owner's.
func TestAPIOwnerRestoreLearnsTheNewVolumeID(t *testing.T) {
	hv := startertest.NewGatedHypervisor()
	hv.Gate.Open()
	c := startertest.NewCluster(t, strings.Replace(config, "cooldown: 5m", "cooldown: 0s", 1),
		map[string]activities.Hypervisor{"hv1": hv})
	ts := apitest.NewServer(t, api.New(c.Client, api.Tokens{Panel: []string{"p"}, Owners: map[string]string{"alice-token": "alice"}},
		nil, nil))
	e := &env{t: t, url: ts.URL, client: ts.Client()}
	require.Equal(t, 200, e.do("PUT", "/v1/volumes/v1", "p", volumeBody("alice", "hv1")).status)
	require.Equal(t, 202, e.do("POST", "/v1/volumes/v1/snapshots", "alice-token", map[string]any{"name": "s1"}).status)
	snapID := e.availableSnapshot("v1", "alice-token")

	r := e.do("POST", "/v1/volumes/v1/restore", "alice-token", map[string]any{"snapshot_id": snapID,
		"mode": "new_volume", "new_volume_name": "copy"})
	require.Equal(t, 202, r.status, r.raw)
	newID, _ := r.body["new_volume_id"].(string)
	require.NotEmpty(t, newID, r.raw)
	assert.NotEqual(t, "v1", newID)
	op := e.do("GET", "/v1/operations/"+r.body["operation_id"].(string), "alice-token", nil)
	assert.Equal(t, newID, op.body["new_volume_id"], op.raw)
	startertest.WaitFor(t, "new volume", func() bool { return e.do("GET", "/v1/volumes/"+newID, "alice-token", nil).status == 200 })
	nv := e.do("GET", "/v1/volumes/"+newID, "alice-token", nil)
	assert.Equal(t, "alice", nv.body["owner_id"])
	assert.Equal(t, "copy", nv.body["name"])

	// Other operations keep exactly the v1 shape.
	snap := e.do("POST", "/v1/volumes/"+newID+"/snapshots", "alice-token", nil)
	require.Equal(t, 202, snap.status, snap.raw)
	assert.NotContains(t, snap.body, "new_volume_id")
}
