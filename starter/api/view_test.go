package api

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/holdfast/holdfast/starter"
	"github.com/holdfast/holdfast/workflows"
)

// A backup's replica state and a recovered backup's origin are shown beyond v1, only when there is something
// to show, so v1 panels see exactly the v1 shape for every other backup.
func TestVolumeViewShowsReplicaAndRecoveredOnlyWhenSet(t *testing.T) {
	at := time.Date(2026, 11, 23, 2, 0, 0, 0, time.UTC)
	v := &starter.Volume{VolumeState: workflows.VolumeState{Backups: []workflows.Item{
		{ItemID: "bk-1", Name: "plain", Status: workflows.StatusAvailable, Storage: "local"},
		{ItemID: "bk-2", Name: "copied", Status: workflows.StatusAvailable, Storage: "local",
			Replica: &workflows.Replica{Storage: "offsite", Status: workflows.ReplicaReplicated, ReplicatedAt: &at}},
		{ItemID: "bk-3", Name: "found", Status: workflows.StatusAvailable, Storage: "offsite", Recovered: true},
	}}}
	data, err := json.Marshal(volumeView(v))
	require.NoError(t, err)
	var got struct {
		Backups []map[string]any `json:"backups"`
	}
	require.NoError(t, json.Unmarshal(data, &got))
	require.Len(t, got.Backups, 3)
	assert.NotContains(t, got.Backups[0], "replica")
	assert.NotContains(t, got.Backups[0], "recovered")
	assert.Equal(t, map[string]any{"storage": "offsite", "status": "replicated", "replicated_at": "2026-11-23T02:00:00Z"},
		got.Backups[1]["replica"])
	assert.Equal(t, true, got.Backups[2]["recovered"])
}
