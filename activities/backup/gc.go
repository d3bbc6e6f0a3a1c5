package backup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// GCReport says what a garbage collection did.
type GCReport struct {
	VolumeID      string `json:"volume_id"`
	Manifests     int    `json:"manifests"`      // live backups
	LiveChunks    int    `json:"live_chunks"`    // referenced by a manifest (or a fresh journal)
	YoungChunks   int    `json:"young_chunks"`   // unreferenced but within the grace period: kept
	DeletedChunks int    `json:"deleted_chunks"` // unreferenced and older than the grace period
	DeletedBytes  int64  `json:"deleted_bytes"`
	StaleJournals int    `json:"stale_journals"` // segments of abandoned resume journals removed
	StaleLocks    int    `json:"stale_locks"`    // locks of operations that died without releasing them, removed
	StaleTemp     int    `json:"stale_temp"`     // temporary files of puts whose process died, removed (DeferredStore)
	// Busy, when not "", is why nothing was collected: another operation (a running backup) holds the
	// volume. The next collection takes what this one could not.
	Busy string `json:"busy,omitempty"`
}

// GC removes a volume's chunks that no manifest references and that are older than grace, and resume
// journals older than grace. Mark first, then sweep. If any manifest cannot be read GC deletes nothing:
// sweeping against an incomplete mark would destroy live data.
//
// It runs under the volume's exclusive lock (lock.go). While a backup of the volume runs — or another GC or
// abandon — it collects nothing and returns a report with Busy set together with an error wrapping
// ErrLocked. So no grace, not even zero, can cost a running backup a chunk it uploaded or one it found
// already stored and reused, and a GC needs no help from the control plane to be safe. The grace is only a
// courtesy to crashed backups waiting to be resumed: the chunks their journals record stay as long as the
// journal is younger than grace; chunks they uploaded past their last checkpoint stay for grace, and are
// uploaded again by a resume after that. Idempotent.
func (e *Engine) GC(ctx context.Context, volumeID string, grace time.Duration) (*GCReport, error) {
	if err := validComponent(volumeID); err != nil {
		return nil, fmt.Errorf("backup: volume_id: %w", err)
	}
	rep := &GCReport{VolumeID: volumeID}
	lock, removed, err := e.lockExclusive(ctx, volumeID, "gc", "")
	if err != nil {
		if errors.Is(err, ErrLocked) {
			rep.Busy = err.Error()
			return rep, fmt.Errorf("gc %s: %w", volumeID, err)
		}
		return nil, fmt.Errorf("gc %s: %w", volumeID, err)
	}
	defer lock.release()
	rep.StaleLocks = removed
	cutoff := e.opts.Now().Add(-grace)
	if err := e.sweep(lock.ctx, lock, rep, sweepPlan{chunkCutoff: cutoff, journalCutoff: cutoff}); err != nil {
		return nil, fmt.Errorf("gc %s: %w", volumeID, err)
	}
	// What deferred puts of a process that died left behind. No backup of the volume runs now (the lock), and
	// LockStale is how long one that lost its lock may still be writing.
	if d, ok := e.store.(DeferredStore); ok {
		n, err := d.RemoveStaleTemp(lock.ctx, volumePrefix(volumeID), e.opts.LockStale)
		if err != nil {
			return nil, fmt.Errorf("gc %s: remove stale temporary files: %w", volumeID, err)
		}
		rep.StaleTemp = n
	}
	e.opts.Logger.Info("gc done", "volume_id", volumeID, "manifests", rep.Manifests, "live_chunks", rep.LiveChunks,
		"deleted_chunks", rep.DeletedChunks, "young_chunks", rep.YoungChunks, "stale_journals", rep.StaleJournals,
		"stale_locks", rep.StaleLocks, "stale_temp", rep.StaleTemp)
	return rep, nil
}

// sweepPlan says which unreferenced objects a sweep keeps.
type sweepPlan struct {
	// chunkCutoff: an unreferenced chunk written after it is young and kept. Zero: none is kept.
	chunkCutoff time.Time
	// journalCutoff: a resume journal whose newest segment is older is stale: removed, and its chunks are no
	// longer protected. Zero: every journal is kept and protects its chunks.
	journalCutoff time.Time
}

// sweep marks the chunks of rep's volume referenced by its manifests and by the resume journals p keeps,
// then deletes stale journals and the unmarked chunks p does not keep, checking before each delete that
// lock's lease still holds. It must run under the volume's exclusive lock.
func (e *Engine) sweep(ctx context.Context, lock *volumeLock, rep *GCReport, p sweepPlan) error {
	volumeID := rep.VolumeID
	ms, err := e.ListVolume(ctx, volumeID)
	if err != nil {
		return fmt.Errorf("not sweeping, manifests unreadable: %w", err)
	}
	live := map[string]bool{}
	for _, m := range ms {
		for _, c := range m.Chunks {
			live[c.ID] = true
		}
	}
	rep.Manifests = len(ms)

	// Journals: a backup whose newest segment is fresh is resumable, so all of its segments protect their
	// chunks; one whose newest segment is older than the cutoff was abandoned.
	type journal struct {
		newest   time.Time
		segments []string
	}
	journals := map[string]*journal{}
	err = e.store.List(ctx, volumePrefix(volumeID)+"inprogress/", func(oi ObjectInfo) error {
		dir := oi.Name[:strings.LastIndex(oi.Name, "/")]
		j := journals[dir]
		if j == nil {
			j = &journal{}
			journals[dir] = j
		}
		j.segments = append(j.segments, oi.Name)
		if oi.ModTime.After(j.newest) {
			j.newest = oi.ModTime
		}
		return nil
	})
	if err != nil {
		return err
	}
	var stale []string
	for _, j := range journals {
		if !p.journalCutoff.IsZero() && j.newest.Before(p.journalCutoff) {
			stale = append(stale, j.segments...)
			continue
		}
		for _, n := range j.segments {
			data, err := ReadAll(ctx, e.store, n, maxManifestSize)
			if err != nil {
				return err
			}
			var seg journalSegment
			if json.Unmarshal(data, &seg) != nil {
				// Unreadable: its chunks are as young as the journal, so grace covers them; and a resume
				// confirms every chunk it records before it commits.
				continue
			}
			for _, c := range seg.Chunks {
				live[c.ID] = true
			}
		}
	}

	var garbage []ObjectInfo
	err = e.store.List(ctx, chunksPrefix(volumeID), func(oi ObjectInfo) error {
		id := oi.Name[strings.LastIndex(oi.Name, "/")+1:]
		switch {
		case live[id]:
			rep.LiveChunks++
		case !p.chunkCutoff.IsZero() && oi.ModTime.After(p.chunkCutoff):
			rep.YoungChunks++
		default:
			garbage = append(garbage, oi)
		}
		return nil
	})
	if err != nil {
		return err
	}
	// Stale journals first: one left without its chunks by a sweep that died half-way would make its
	// resume upload them again, while chunks left without their journal are only collected next time.
	for _, n := range stale {
		if err := lock.checkHeld(); err != nil {
			return err
		}
		if err := e.store.Delete(ctx, n); err != nil {
			return err
		}
		rep.StaleJournals++
	}
	err = parallel(ctx, e.opts.Concurrency, len(garbage), func(ctx context.Context, _, i int) error {
		if err := lock.checkHeld(); err != nil {
			return err
		}
		return e.store.Delete(ctx, garbage[i].Name)
	})
	if err != nil {
		return err
	}
	for _, g := range garbage {
		rep.DeletedChunks++
		rep.DeletedBytes += g.Size
	}
	return nil
}

// GCStore runs GC on every volume that has objects in the store, in volume_id order. A volume whose GC fails
// (an unreadable manifest makes GC sweep nothing there) does not stop the others: its error is returned,
// joined with the others', after every volume ran. A volume with a running backup is skipped, not failed:
// its report says Busy, and the next collection takes it. The reports are those of the volumes that
// succeeded or were busy. Idempotent.
func (e *Engine) GCStore(ctx context.Context, grace time.Duration) ([]*GCReport, error) {
	seen := map[string]bool{}
	err := e.store.List(ctx, volumesDir, func(oi ObjectInfo) error {
		if vol, ok := volumeOf(oi.Name); ok {
			seen[vol] = true
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("gc %s: %w", e.store, err)
	}
	vols := make([]string, 0, len(seen))
	for v := range seen {
		vols = append(vols, v)
	}
	sort.Strings(vols)
	var reps []*GCReport
	var errs []error
	for _, v := range vols {
		rep, err := e.GC(ctx, v, grace)
		if err != nil {
			if ctx.Err() != nil {
				return reps, err
			}
			if errors.Is(err, ErrLocked) {
				e.opts.Logger.Info("gc: volume busy, skipped", "volume_id", v, "busy", rep.Busy)
				reps = append(reps, rep)
				continue
			}
			errs = append(errs, err)
			continue
		}
		reps = append(reps, rep)
	}
	return reps, errors.Join(errs...)
}
