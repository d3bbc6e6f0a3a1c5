package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// admin runs an operator command (holdfast recover|scrub|gc --config …) and returns its stdout and exit code.
func (e *e2e) admin(args ...string) (string, int) {
	e.t.Helper()
	cmd := e.command(append(args, "--config", e.config)...)
	out, err := cmd.Output()
	code := 0
	if err != nil {
		exit, ok := err.(*exec.ExitError)
		require.True(e.t, ok, "%s: %v", args[0], err)
		code = exit.ExitCode()
	}
	return string(out), code
}

// TestE2EOperatorCommands drives scrub, gc and recover through the binary against real processes: a clean
// store scrubs clean, a bit-flipped chunk is reported (exit 1) while the other volume's backup is not,
// recover on a control plane that knows every backup imports nothing, and gc keeps live chunks.
func TestE2EOperatorCommands(t *testing.T) {
	e := newE2E(t, 0)
	for _, vol := range []string{"web", "db"} {
		makeVolume(t, e.volumePath(vol), 12<<20, 8<<20)
		e.register(vol, "alice", "hv1")
		itemID(t, e.operation("POST", "/v1/volumes/"+vol+"/backups", map[string]any{"name": vol + "-nightly"}))
	}

	out, code := e.admin("scrub", "--store", "local")
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "Scrubbed local: 2 backups")
	assert.Contains(t, out, "0 damaged")

	out, code = e.admin("recover", "--store", "local", "--json")
	require.Equal(t, 0, code, out)
	var rec map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &rec))
	assert.EqualValues(t, 2, rec["manifests"])
	assert.EqualValues(t, 2, rec["known"], "this control plane already lists both backups")
	assert.EqualValues(t, 0, rec["imported"])

	out, code = e.admin("gc", "--store", "local", "--grace", "0s")
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "0 chunks deleted", "every chunk is referenced")

	// Damage one chunk of web's backup behind Holdfast's back.
	chunks, err := filepath.Glob(filepath.Join(e.dir, "backups", "volumes", "web", "chunks", "*", "*"))
	require.NoError(t, err)
	require.NotEmpty(t, chunks)
	data := readFile(t, chunks[0])
	data[len(data)/2] ^= 0x40
	require.NoError(t, os.WriteFile(chunks[0], data, 0o644))

	out, code = e.admin("scrub", "--store", "local")
	assert.Equal(t, 1, code, out)
	assert.Contains(t, out, "1 damaged")
	assert.Contains(t, out, "DAMAGED volume web backup")
	assert.NotContains(t, out, "DAMAGED volume db", "the other volume's backup is intact")

	out, code = e.admin("recover", "--store", "nope")
	assert.Equal(t, 1, code, out)
}
