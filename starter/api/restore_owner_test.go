package api_test

import (
	"net/http"
	"strings"
	"testing"
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
