package agent

import (
	"context"
	"errors"
	"fmt"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/activities/backup"
)

// maxCatalogPage bounds a catalog page whatever Limit asks: a page must stay inside Temporal's payload limit
// (2 MB), and an entry with its labels is up to about a kilobyte.
const maxCatalogPage = 2 * activities.DefaultCatalogPage

// Storage implements activities.Storage: the activities an agent serves on activities.StorageTaskQueue(name)
// for each backup storage it is configured with. They touch only storages (never a volume), so any agent
// with the storage may take them. Register it with worker.RegisterActivity: every exported method is an
// activity, named as in activities.Storage, so it must have no other exported methods.
type Storage struct {
	a *Activities
}

var _ activities.Storage = (*Storage)(nil)

// NewStorage returns the storage activities over cfg.Engines (the same engines, and so the same bandwidth
// limiter, as New's; cfg.Drivers is not used).
func NewStorage(cfg Config) *Storage { return &Storage{a: New(cfg)} }

// ListCatalog returns one page of a storage's catalog, read from the manifests (at most maxCatalogPage
// entries, whatever Limit asks). Damaged manifests, or manifests written with another key, are the page's
// Problems. Read-only, so idempotent.
func (s *Storage) ListCatalog(ctx context.Context, in activities.CatalogInput) (activities.CatalogPage, error) {
	e, err := s.a.engine(in.Storage)
	if err != nil {
		return activities.CatalogPage{}, err
	}
	limit := in.Limit
	if limit <= 0 {
		limit = activities.DefaultCatalogPage
	}
	log := s.a.logger(ctx, "", "storage", in.Storage, "after", in.After)
	hb := startHeartbeats(ctx, 0)
	page, err := e.Catalog(ctx, in.After, min(limit, maxCatalogPage))
	hb.close()
	if errors.Is(err, backup.ErrInvalidCursor) {
		return activities.CatalogPage{}, invalid("after: " + err.Error())
	}
	if err != nil {
		log.Error("list catalog failed", "error", err)
		return activities.CatalogPage{}, classify(ctx, activities.ListCatalogName, err)
	}
	out := activities.CatalogPage{Entries: make([]activities.CatalogEntry, 0, len(page.Manifests)), Next: page.Next}
	for _, m := range page.Manifests {
		out.Entries = append(out.Entries, activities.CatalogEntry{VolumeID: m.VolumeID, BackupID: m.BackupID,
			SizeBytes: m.Size, StoredBytes: m.StoredBytes, SourceType: m.SourceType, CreatedAt: m.CreatedAt,
			CompletedAt: m.CompletedAt, Labels: m.Labels})
	}
	for _, p := range page.Problems {
		out.Problems = append(out.Problems, activities.CatalogProblem{VolumeID: p.VolumeID, BackupID: p.BackupID,
			Error: p.Err.Error()})
		s.a.logger(ctx, p.VolumeID, "storage", in.Storage, "backup_id", p.BackupID).
			Warn("catalog: manifest unusable", "error", p.Err)
	}
	log.Info("catalog page listed", "entries", len(out.Entries), "problems", len(out.Problems), "next", out.Next)
	return out, nil
}

// ReplicateBackup copies a backup from storage From to storage To (the chunks To lacks, then the manifest)
// and verifies the replica, heartbeating progress. Idempotent: a retry copies only what is still missing.
// Storages encrypted differently are refused with ErrInvalidArgument (the copy would be unreadable), a
// missing backup is ErrNotFound, a damaged source ErrCorrupt.
func (s *Storage) ReplicateBackup(ctx context.Context, in activities.ReplicateInput) (activities.ReplicateResult, error) {
	if err := checkIDs("volume_id", in.VolumeID, "backup_id", in.BackupID); err != nil {
		return activities.ReplicateResult{}, err
	}
	if in.From == in.To {
		return activities.ReplicateResult{}, invalid(fmt.Sprintf("from and to are the same storage %q", in.From))
	}
	src, err := s.a.engine(in.From)
	if err != nil {
		return activities.ReplicateResult{}, err
	}
	dst, err := s.a.engine(in.To)
	if err != nil {
		return activities.ReplicateResult{}, err
	}
	log := s.a.logger(ctx, in.VolumeID, "backup_id", in.BackupID, "from", in.From, "to", in.To)
	hb := startHeartbeats(ctx, 0)
	rep, err := src.Replicate(ctx, dst, in.VolumeID, in.BackupID, hb.report)
	hb.close()
	if err != nil {
		log.Error("replicate failed", "error", err)
		return activities.ReplicateResult{}, classify(ctx, activities.ReplicateBackupName, err)
	}
	s.a.metrics.Replicated(in.To, rep.BytesCopied)
	log.Info("replicated", "chunks_copied", rep.ChunksCopied, "chunks_present", rep.ChunksPresent,
		"bytes_copied", rep.BytesCopied, "deep_checked", rep.DeepChecked)
	return activities.ReplicateResult{ChunksCopied: rep.ChunksCopied, ChunksPresent: rep.ChunksPresent,
		BytesCopied: rep.BytesCopied, Verified: rep.Verified}, nil
}

// ScrubStorage deep-verifies every backup of a storage (or of one volume), heartbeating progress. Damage is
// reported in the result, one finding per damaged backup, never as an error. Read-only, so idempotent.
func (s *Storage) ScrubStorage(ctx context.Context, in activities.ScrubInput) (activities.ScrubResult, error) {
	if in.VolumeID != "" {
		if err := checkID("volume_id", in.VolumeID); err != nil {
			return activities.ScrubResult{}, err
		}
	}
	e, err := s.a.engine(in.Storage)
	if err != nil {
		return activities.ScrubResult{}, err
	}
	log := s.a.logger(ctx, in.VolumeID, "storage", in.Storage)
	hb := startHeartbeats(ctx, 0)
	rep, err := e.Scrub(ctx, in.VolumeID, hb.report)
	hb.close()
	if err != nil {
		log.Error("scrub failed", "error", err)
		return activities.ScrubResult{}, classify(ctx, activities.ScrubStorageName, err)
	}
	out := activities.ScrubResult{Backups: rep.Backups, Chunks: rep.Chunks, BytesRead: rep.BytesRead}
	for _, d := range rep.Damaged {
		out.Damaged = append(out.Damaged, activities.ScrubFinding{VolumeID: d.VolumeID, BackupID: d.BackupID,
			Missing: chunkIDs(d.Missing), Corrupt: chunkIDs(d.Corrupt), Error: d.Error})
		s.a.logger(ctx, d.VolumeID, "storage", in.Storage, "backup_id", d.BackupID).Warn("scrub: backup damaged",
			"missing_chunks", len(d.Missing), "corrupt_chunks", len(d.Corrupt), "error", d.Error)
	}
	s.a.metrics.ScrubDamaged(in.Storage, len(out.Damaged))
	log.Info("scrub done", "backups", out.Backups, "chunks", out.Chunks, "bytes_read", out.BytesRead,
		"damaged", len(out.Damaged))
	return out, nil
}

func chunkIDs(ps []backup.ChunkProblem) []string {
	var ids []string
	for _, p := range ps {
		ids = append(ids, p.ID)
	}
	return ids
}

// CollectGarbage removes the chunks of a storage (or of one volume) that no manifest references and that are
// older than Grace, heartbeating while it runs. It is safe with any Grace, even 0, whatever runs at the same
// time: each volume is collected under its exclusive lock in the storage, and a volume with a running backup
// is not collected at all (backup.GC). Store-wide, such a busy volume is skipped and logged, and the others
// are collected; for one volume (VolumeID set) a busy volume fails the activity retryably (backup.ErrLocked),
// so a retry collects it once the backup ended. Every volume is collected even when one cannot be (a damaged
// manifest makes its GC sweep nothing); that one then fails the activity as ErrCorrupt, naming it.
// Idempotent.
func (s *Storage) CollectGarbage(ctx context.Context, in activities.GCInput) (activities.GCResult, error) {
	if in.VolumeID != "" {
		if err := checkID("volume_id", in.VolumeID); err != nil {
			return activities.GCResult{}, err
		}
	}
	if in.Grace < 0 {
		return activities.GCResult{}, invalid(fmt.Sprintf("grace %s must not be negative", in.Grace))
	}
	e, err := s.a.engine(in.Storage)
	if err != nil {
		return activities.GCResult{}, err
	}
	log := s.a.logger(ctx, in.VolumeID, "storage", in.Storage, "grace", in.Grace)
	hb := startHeartbeats(ctx, 0)
	var reps []*backup.GCReport
	if in.VolumeID != "" {
		var rep *backup.GCReport
		if rep, err = e.GC(ctx, in.VolumeID, in.Grace); rep != nil {
			reps = append(reps, rep)
		}
	} else {
		reps, err = e.GCStore(ctx, in.Grace)
	}
	hb.close()
	var out activities.GCResult
	for _, r := range reps {
		if r.Busy != "" {
			s.a.logger(ctx, r.VolumeID, "storage", in.Storage).Info("garbage collection skipped a busy volume",
				"busy", r.Busy)
		}
		out.ChunksDeleted += r.DeletedChunks
		out.BytesFreed += r.DeletedBytes
		out.ChunksKept += r.LiveChunks + r.YoungChunks
	}
	if err != nil {
		log.Error("garbage collection failed", "error", err, "volumes_collected", len(reps),
			"chunks_deleted", out.ChunksDeleted)
		return activities.GCResult{}, classify(ctx, activities.CollectGarbageName, err)
	}
	log.Info("garbage collected", "volumes", len(reps), "chunks_deleted", out.ChunksDeleted,
		"bytes_freed", out.BytesFreed, "chunks_kept", out.ChunksKept)
	return out, nil
}

// DeleteBackup is Activities.DeleteBackup, served on the storage's queue so that deleting a backup never
// waits on the host that made it.
func (s *Storage) DeleteBackup(ctx context.Context, in activities.BackupRef) error {
	return s.a.DeleteBackup(ctx, in)
}

// AbandonBackup is a failed or aborted backup's compensation (backup.Engine.Abandon): at once, not after a
// GC grace, it removes the backup's manifest if it was written, its resume journal and in-progress marker,
// and the chunks of the volume no remaining backup references, keeping every chunk another backup of the
// volume needs. It runs under the volume's exclusive lock in the storage, so it is safe against any backup,
// GC or other abandon, from any host; an earlier attempt of the abandoned backup still running (a zombie)
// loses its lock and stops. Idempotent: abandoning an abandoned or unknown backup succeeds.
//
// Retryable failures: the storage is down, or another backup of the volume (or a GC) holds it right now
// (backup.ErrLocked). A manifest of the volume that cannot be read fails it as ErrCorrupt, after the
// backup's own manifest and journal are gone but before any chunk is deleted: sweeping against an
// incomplete mark would destroy live data.
func (s *Storage) AbandonBackup(ctx context.Context, in activities.BackupRef) error {
	if err := checkIDs("volume_id", in.VolumeID, "backup_id", in.BackupID); err != nil {
		return err
	}
	e, err := s.a.engine(in.Storage)
	if err != nil {
		return err
	}
	log := s.a.logger(ctx, in.VolumeID, "backup_id", in.BackupID, "storage", in.Storage)
	hb := startHeartbeats(ctx, 0)
	rep, err := e.Abandon(ctx, in.VolumeID, in.BackupID)
	hb.close()
	if err != nil {
		log.Error("abandon backup failed", "error", err)
		return classify(ctx, activities.AbandonBackupName, err)
	}
	log.Info("backup abandoned", "manifest_removed", rep.ManifestRemoved, "journal_segments", rep.JournalSegments,
		"locks_removed", rep.LocksRemoved, "chunks_deleted", rep.DeletedChunks, "bytes_freed", rep.DeletedBytes,
		"chunks_kept", rep.KeptChunks)
	return nil
}
