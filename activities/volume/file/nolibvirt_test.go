package file

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/holdfast/holdfast/activities/volume"
)

// Without libvirt (holdfast dev on a bare machine) volumes are detached and snapshots still point-in-time.
func TestNoLibvirtTreatsVolumesAsDetached(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "disk.img")
	old := bytes.Repeat([]byte{0xAB}, 1<<20)
	require.NoError(t, os.WriteFile(path, old, 0o600))
	d := New(NoLibvirt)
	vol := volume.Ref{Type: volume.TypeFile, Path: path}
	att, err := d.Attachment(ctx, vol)
	require.NoError(t, err)
	require.False(t, att.Attached)
	snap, err := d.CreateSnapshot(ctx, vol, "s1")
	require.NoError(t, err)
	require.Equal(t, volume.ConsistencyOffline, snap.Consistency)
	require.NoError(t, os.WriteFile(path, bytes.Repeat([]byte{0xCD}, 1<<20), 0o600))
	r, err := d.OpenSnapshot(ctx, vol, "s1")
	require.NoError(t, err)
	defer r.Close()
	got := make([]byte, len(old))
	_, err = r.ReadAt(got, 0)
	require.NoError(t, err)
	require.Equal(t, old, got)
	w, err := d.OpenWriter(ctx, vol)
	require.NoError(t, err, "in-place writes are allowed: nothing runs")
	require.NoError(t, w.Close())
}
