package backup

import (
	"context"
	"errors"
	"fmt"
)

// AbandonReport says what Abandon removed.
type AbandonReport struct {
	VolumeID        string `json:"volume_id"`
	BackupID        string `json:"backup_id"`
	ManifestRemoved bool   `json:"manifest_removed"` // the backup had committed
	JournalSegments int    `json:"journal_segments"` // resume-journal segments removed
	LocksRemoved    int    `json:"locks_removed"`    // its in-progress markers, and stale locks of others
	DeletedChunks   int    `json:"deleted_chunks"`
	DeletedBytes    int64  `json:"deleted_bytes"`
	KeptChunks      int    `json:"kept_chunks"` // referenced by the volume's other backups or resume journals
	TempFiles       int    `json:"temp_files"`  // chunks of a killed attempt never flushed (DeferredStore), removed
}

// Abandon is a failed or aborted backup's compensation: it removes, at once and not after a GC grace,
// everything the backup left in the store — its manifest if it got that far, its resume journal, its
// in-progress marker (its lock), and the chunks of its volume that no remaining manifest nor another
// backup's resume journal references.
//
// Why every such chunk and not only "its own": the chunks a backup uploaded after its last checkpoint are
// recorded nowhere, so nothing tells them from other unreferenced chunks; and none of those can be needed
// by a running backup, because Abandon runs under the volume's exclusive lock (lock.go). It breaks the
// abandoned backup's own locks (a zombie attempt of it then stops at its next refresh, and could at worst
// commit a complete backup again, never one with a missing chunk), and fails with ErrLocked, retryably,
// while another backup of the volume (or a GC) runs. If a manifest of the volume cannot be read it still
// removes the backup's own manifest and journal, deletes no chunk, and fails: sweeping against an
// incomplete mark would destroy live data. Idempotent: abandoning an abandoned or unknown backup succeeds.
func (e *Engine) Abandon(ctx context.Context, volumeID, backupID string) (*AbandonReport, error) {
	if err := checkIDs(volumeID, backupID); err != nil {
		return nil, err
	}
	fail := func(err error) (*AbandonReport, error) {
		return nil, fmt.Errorf("abandon backup %s of volume %s: %w", backupID, volumeID, err)
	}
	lock, removed, err := e.lockExclusive(ctx, volumeID, "abandon", backupID)
	if err != nil {
		return fail(err)
	}
	defer lock.release()
	ctx = lock.ctx
	rep := &AbandonReport{VolumeID: volumeID, BackupID: backupID, LocksRemoved: removed}

	name := manifestName(volumeID, backupID)
	if _, err := e.store.Stat(ctx, name); err == nil {
		rep.ManifestRemoved = true
	} else if !errors.Is(err, ErrNotExist) {
		return fail(err)
	}
	if err := e.store.Delete(ctx, name); err != nil {
		return fail(err)
	}
	var segments []string
	if err := e.store.List(ctx, journalPrefix(volumeID, backupID), func(oi ObjectInfo) error {
		segments = append(segments, oi.Name)
		return nil
	}); err != nil {
		return fail(err)
	}
	for _, n := range segments {
		if err := e.store.Delete(ctx, n); err != nil {
			return fail(err)
		}
		rep.JournalSegments++
	}

	// What an attempt killed before it flushed left (DeferredStore): invisible to the sweep.
	if d, ok := e.store.(DeferredStore); ok {
		n, err := d.RemoveTemp(ctx, volumePrefix(volumeID), backupID)
		if err != nil {
			return fail(err)
		}
		rep.TempFiles = n
	}
	gc := &GCReport{VolumeID: volumeID}
	if err := e.sweep(ctx, lock, gc, sweepPlan{}); err != nil {
		return fail(err)
	}
	rep.DeletedChunks, rep.DeletedBytes, rep.KeptChunks = gc.DeletedChunks, gc.DeletedBytes, gc.LiveChunks
	e.opts.Logger.Info("backup abandoned", "volume_id", volumeID, "backup_id", backupID,
		"manifest_removed", rep.ManifestRemoved, "journal_segments", rep.JournalSegments,
		"locks_removed", rep.LocksRemoved, "deleted_chunks", rep.DeletedChunks, "kept_chunks", rep.KeptChunks)
	return rep, nil
}
