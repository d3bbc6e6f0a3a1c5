// Package export serves backups to hypervisors as block devices without restoring them first: the read-only
// NBD export an instant restore's new volume reads through (as the backing of a qcow2 overlay) while it
// hydrates. It owns the glue between the backup engine's BackupReader and the NBD server; which backup is
// served, to whom, and for how long is decided above it. It must never serve anything writable, nor a
// backup the engine has not verified chunk by chunk (BackupReader fails a read rather than make up bytes).
package export

import (
	"context"

	"github.com/holdfast/holdfast/activities/backup"
	"github.com/holdfast/holdfast/activities/export/nbd"
)

// Backup is the NBD export of an open backup under name: its bytes through r (fetched, decrypted and
// verified on demand, cached, read ahead), its zero ranges reported as zero holes so that a copy (a
// hydration) skips them without reading.
func Backup(name string, r *backup.BackupReader) nbd.Export {
	return nbd.Export{
		Name: name,
		Size: r.Size(),
		Data: r,
		Describe: func(_ context.Context, off, length int64) ([]nbd.Extent, error) {
			runs := r.Runs(off, length)
			out := make([]nbd.Extent, len(runs))
			for i, x := range runs {
				out[i] = nbd.Extent{Length: x.Length, Zero: x.Zero, Hole: x.Zero}
			}
			return out, nil
		},
	}
}
