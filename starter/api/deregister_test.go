package api_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/starter/api"
	"github.com/holdfast/holdfast/starter/api/apitest"
	"github.com/holdfast/holdfast/starter/startertest"
)

// DELETE /v1/volumes/{volume_id}: the panel removes a volume (a deleted VPS). Owners may not; the name must
// be confirmed; the ID is free again afterwards, unless its backups are kept, and then only for its owner.
func TestAPIDeregisterVolume(t *testing.T) {
	hv := startertest.NewGatedHypervisor()
	hv.Gate.Open()
	c := startertest.NewCluster(t, strings.Replace(config, "cooldown: 5m", "cooldown: 0s", 1),
		map[string]activities.Hypervisor{"hv1": hv})
	ts := apitest.NewServer(t, api.New(c.Client, api.Tokens{Panel: []string{"p"},
		Owners: map[string]string{"alice-token": "alice"}}, nil, nil))
	e := &env{t: t, url: ts.URL, client: ts.Client()}
	finished := func(r response) map[string]any {
		t.Helper()
		require.Equal(t, 202, r.status, r.raw)
		var op map[string]any
		startertest.WaitFor(t, "operation "+r.body["operation_id"].(string), func() bool {
			op = e.do("GET", "/v1/operations/"+r.body["operation_id"].(string), "p", nil).body
			return op["finished_at"] != nil
		})
		return op
	}

	require.Equal(t, 200, e.do("PUT", "/v1/volumes/v1", "p", volumeBody("alice", "hv1")).status)
	finished(e.do("POST", "/v1/volumes/v1/snapshots", "p", map[string]any{"name": "s1"}))
	requireError(t, e.do("DELETE", "/v1/volumes/v1?confirm=web-data", "alice-token", nil), 403, "Forbidden", "")
	requireError(t, e.do("DELETE", "/v1/volumes/v1", "p", nil), 400, "ConfirmationMismatch", "")
	requireError(t, e.do("DELETE", "/v1/volumes/v1?confirm=web-data&keep_backups_for=soon", "p", nil), 400,
		"InvalidArgument", "keep_backups_for: must be a duration such as 720h")
	requireError(t, e.do("DELETE", "/v1/volumes/nope?confirm=x", "p", nil), 404, "NotFound", "")
	op := finished(e.do("DELETE", "/v1/volumes/v1?confirm=web-data", "p", nil))
	assert.Equal(t, "deregister", op["kind"])
	assert.Equal(t, "completed", op["status"], "%v", op)
	assert.Equal(t, 404, e.do("GET", "/v1/volumes/v1", "p", nil).status)
	// The location and the ID are free again: another owner's volume may take both.
	require.Equal(t, 200, e.do("PUT", "/v1/volumes/v1", "p", volumeBody("bob", "hv1")).status)
	v := e.do("GET", "/v1/volumes/v1", "p", nil)
	assert.Empty(t, v.body["snapshots"], "nothing of the old volume comes back")

	// Kept backups stay their owner's: another owner cannot register the ID, the owner gets them back.
	finished(e.do("POST", "/v1/volumes/v1/backups", "p", map[string]any{"name": "b1"}))
	finished(e.do("DELETE", "/v1/volumes/v1?confirm=web-data&keep_backups_for=720h", "p", nil))
	r := e.do("PUT", "/v1/volumes/v1", "p", volumeBody("alice", "hv1"))
	requireError(t, r, 400, "InvalidArgument", "")
	assert.Contains(t, r.errMessage(), "its backups are kept for its owner until")
	require.Equal(t, 200, e.do("PUT", "/v1/volumes/v1", "p", volumeBody("bob", "hv1")).status)
	backups, _ := e.do("GET", "/v1/volumes/v1", "p", nil).body["backups"].([]any)
	assert.Len(t, backups, 1)
}
