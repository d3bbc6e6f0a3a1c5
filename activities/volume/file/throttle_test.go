package file_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/time/rate"

	"github.com/holdfast/holdfast/activities/volume"
	"github.com/holdfast/holdfast/activities/volume/file"
)

// A raw volume's snapshot is a full copy of its image: it draws on the hypervisor's bandwidth like a backup
// does, so it cannot saturate the host's disk. A limiter that never refills lets through its burst and no
// more: the copy stops there, and leaves nothing behind.
func TestSnapshotCopiesDrawOnTheHostsBandwidth(t *testing.T) {
	dir := t.TempDir()
	vol := volume.Ref{Type: volume.TypeFile, Path: filepath.Join(dir, "disk.raw"), Format: volume.FormatRaw}
	require.NoError(t, os.WriteFile(vol.Path, bytes.Repeat([]byte("guest data "), 6<<20), 0o600)) // 66 MiB
	// With a deadline, a wait the limiter can never satisfy fails at once instead of sleeping.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	d := file.New(file.NoLibvirt)
	d.Limiter = rate.NewLimiter(0, 8<<20) // 8 MiB, then nothing
	_, err := d.CreateSnapshot(ctx, vol, "s1")
	require.Error(t, err, "the copy waited on the limiter")
	snaps, err := d.ListSnapshots(ctx, vol)
	require.NoError(t, err)
	assert.Empty(t, snaps)
	left, _ := filepath.Glob(filepath.Join(dir, ".disk.raw.holdfast", "*"))
	assert.Empty(t, left, "nothing of the stopped copy remains")

	d.Limiter = rate.NewLimiter(rate.Inf, 0)
	_, err = d.CreateSnapshot(ctx, vol, "s1")
	require.NoError(t, err)
}
