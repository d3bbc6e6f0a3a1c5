package backup

import (
	"context"
	"errors"
	"fmt"
	"sort"
)

// ScrubFinding is one damaged backup: the chunks it references that are gone or fail their hash, or why its
// manifest could not be used at all.
type ScrubFinding struct {
	VolumeID string         `json:"volume_id"`
	BackupID string         `json:"backup_id"`
	Missing  []ChunkProblem `json:"missing,omitempty"`
	Corrupt  []ChunkProblem `json:"corrupt,omitempty"`
	Error    string         `json:"error,omitempty"` // manifest damaged, or written with another key
}

// ScrubReport is the result of a scrub; Damaged is empty when every backup verified.
type ScrubReport struct {
	Backups   int            `json:"backups"`    // backups found (damaged ones included)
	Chunks    int            `json:"chunks"`     // distinct chunks of each backup, summed over backups
	BytesRead int64          `json:"bytes_read"` // stored bytes of the backups re-read
	Damaged   []ScrubFinding `json:"damaged,omitempty"`
}

// Scrub deep-verifies every backup in the store, or every backup of one volume when volumeID is not "": each
// chunk it references is fetched, decrypted, decompressed and re-hashed (Verify with Deep). Damage is
// reported per backup in the report, and the other backups keep being checked; the error is for a scrub that
// could not run (store unreachable, cancelled). Read-only, so idempotent.
//
// Each backup is verified on its own, as a restore of it would read it: chunks shared by several backups of
// a volume are read once per backup.
func (e *Engine) Scrub(ctx context.Context, volumeID string, progress func(Progress)) (*ScrubReport, error) {
	prefix := volumesDir
	if volumeID != "" {
		if err := validComponent(volumeID); err != nil {
			return nil, fmt.Errorf("backup: volume_id: %w", err)
		}
		prefix = manifestsPrefix(volumeID)
	}
	keys, err := e.backupKeys(ctx, prefix)
	if err != nil {
		return nil, err
	}
	ms, problems, err := e.readManifests(ctx, keys)
	if err != nil {
		return nil, err
	}
	rep := &ScrubReport{Backups: len(problems)}
	for _, p := range problems {
		rep.Damaged = append(rep.Damaged, ScrubFinding{VolumeID: p.VolumeID, BackupID: p.BackupID, Error: p.Err.Error()})
	}
	var total, base int64
	for _, m := range ms {
		total += m.Size - zeroBytes(m)
	}
	prog := newReporter(progress, e.opts, 0)
	prog.report(Progress{Phase: PhaseVerify, BytesTotal: total}, true)
	for _, m := range ms {
		v, err := e.Verify(ctx, VerifyRequest{VolumeID: m.VolumeID, BackupID: m.BackupID, Deep: true,
			Progress: func(p Progress) {
				prog.report(Progress{Phase: PhaseVerify, BytesDone: base + p.BytesDone, BytesTotal: total}, false)
			}})
		base += m.Size - zeroBytes(m)
		switch {
		case err == nil:
		case ctx.Err() != nil:
			return nil, fmt.Errorf("scrub %s: %w", e.store, context.Cause(ctx))
		case errors.Is(err, ErrNotExist):
			continue // deleted since it was listed: no longer a backup
		case errors.Is(err, ErrInvalidManifest), errors.Is(err, ErrWrongKey):
			rep.Backups++
			rep.Damaged = append(rep.Damaged, ScrubFinding{VolumeID: m.VolumeID, BackupID: m.BackupID, Error: err.Error()})
			continue
		default:
			return nil, fmt.Errorf("scrub %s: %w", e.store, err)
		}
		rep.Backups++
		rep.Chunks += v.Chunks
		rep.BytesRead += m.StoredBytes
		if !v.OK() {
			rep.Damaged = append(rep.Damaged, ScrubFinding{VolumeID: m.VolumeID, BackupID: m.BackupID,
				Missing: v.Missing, Corrupt: v.Corrupt})
		}
	}
	sort.Slice(rep.Damaged, func(i, j int) bool {
		a, b := rep.Damaged[i], rep.Damaged[j]
		return backupKey{a.VolumeID, a.BackupID}.less(backupKey{b.VolumeID, b.BackupID})
	})
	prog.report(Progress{Phase: PhaseDone, BytesDone: total, BytesTotal: total}, true)
	e.opts.Logger.Info("scrub done", "volume_id", volumeID, "store", e.store.String(), "backups", rep.Backups,
		"damaged", len(rep.Damaged), "bytes_read", rep.BytesRead)
	return rep, nil
}
