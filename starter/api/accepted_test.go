package api

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/holdfast/holdfast/workflows"
)

// A restore to a new volume answers the volume it creates (chosen by Holdfast for owner tokens), in the 202
// and in GET /v1/operations/{operation_id}; other operations keep exactly the v1 shape.
func TestNewVolumeIDShownWhenSet(t *testing.T) {
	restore := &workflows.Operation{OperationID: "op-1", VolumeID: "v1", Kind: workflows.KindRestore,
		ItemID: "s1", Status: "pending", NewVolumeID: "vol-7f3a"}
	backup := &workflows.Operation{OperationID: "op-2", VolumeID: "v1", Kind: workflows.KindBackup, Status: "pending"}

	rec := httptest.NewRecorder()
	(&Server{}).accepted(rec, restore, nil)
	require.Equal(t, http.StatusAccepted, rec.Code)
	var body map[string]any
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &body))
	assert.Equal(t, "vol-7f3a", body["new_volume_id"])

	rec = httptest.NewRecorder()
	(&Server{}).accepted(rec, backup, nil)
	body = nil
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &body))
	assert.NotContains(t, body, "new_volume_id")

	assert.Equal(t, "vol-7f3a", operationView(restore).NewVolumeID)
	data, err := json.Marshal(operationView(backup))
	require.NoError(t, err)
	assert.NotContains(t, string(data), "new_volume_id")
}
