package api

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/holdfast/holdfast/starter"
	"github.com/holdfast/holdfast/workflows"
)

// An owner never reads what a hypervisor or store said: host paths, sizes, step names. The spec's
// guard-rail messages reach it as they are.
func TestSecurityOwnersReadNoInternals(t *testing.T) {
	internal := map[string]string{
		"OperationFailed":  "CreateVolume: file:/srv/volumes/theirs.raw: 10737418240 bytes: volume already exists",
		"InvalidArgument":  "RestoreBackup: chunk volumes/web/chunks/ab/abcd: wrong key",
		"DeadlineExceeded": "Operation did not finish within 2h0m0s (it was waiting on: create snapshot on hypervisor hv1); it was stopped.",
		"Corrupt":          "manifest volumes/web/backups/bk-1.json: hash mismatch",
		"":                 "aborted. Cleanup incomplete (delete new volume x: file:/srv/volumes/x.raw: busy)",
	}
	for typ, msg := range internal {
		op := forOwner(&workflows.Operation{OperationID: "op-1", Error: &workflows.ErrorInfo{Type: typ, Message: msg}})
		assert.Equal(t, typ, op.Error.Type, "the type stays")
		for _, leak := range []string{"/srv", "volumes/", "hv1", "bytes", "chunk", "create snapshot"} {
			assert.NotContains(t, op.Error.Message, leak, "%s: %q", typ, op.Error.Message)
		}
	}
	busy := &workflows.ErrorInfo{Type: workflows.ErrVolumeBusy, Message: "Volume is busy with operation: backup"}
	assert.Equal(t, busy, forOwner(&workflows.Operation{Error: busy}).Error)
	v := volumeForOwner(&starter.Volume{VolumeState: workflows.VolumeState{Backups: []workflows.Item{
		{ItemID: "bk-1", OperationID: "op-1", Error: internal["OperationFailed"]}}}})
	assert.NotContains(t, v.Backups[0].Error, "/srv")
}
