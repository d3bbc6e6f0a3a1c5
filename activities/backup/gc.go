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
}

// GC removes a volume's chunks that no manifest references and that are older than grace, and resume
// journals older than grace. Mark first, then sweep; a chunk uploaded by a backup still in flight is younger
// than grace (and referenced by its journal), so it survives. If any manifest cannot be read GC deletes
// nothing: sweeping against an incomplete mark would destroy live data.
//
// Run it under the volume's operation lock (the VolumeWorkflow mutex): a backup that reuses an old chunk
// of a backup being deleted at the same moment is the one race grace cannot cover. grace must also exceed
// the longest time a crashed backup may wait to be resumed. Idempotent.
func (e *Engine) GC(ctx context.Context, volumeID string, grace time.Duration) (*GCReport, error) {
	if err := validComponent(volumeID); err != nil {
		return nil, fmt.Errorf("backup: volume_id: %w", err)
	}
	rep := &GCReport{VolumeID: volumeID}
	cutoff := e.opts.Now().Add(-grace)
	ms, err := e.ListVolume(ctx, volumeID)
	if err != nil {
		return nil, fmt.Errorf("gc %s: not sweeping, manifests unreadable: %w", volumeID, err)
	}
	live := map[string]bool{}
	for _, m := range ms {
		for _, c := range m.Chunks {
			live[c.ID] = true
		}
	}
	rep.Manifests = len(ms)

	// Journals: a backup whose newest segment is fresh is still running (or resumable), so all of its
	// segments protect their chunks; one whose newest segment is older than grace was abandoned.
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
		return nil, fmt.Errorf("gc %s: %w", volumeID, err)
	}
	var stale []string
	for _, j := range journals {
		if j.newest.Before(cutoff) {
			stale = append(stale, j.segments...)
			continue
		}
		for _, n := range j.segments {
			data, err := ReadAll(ctx, e.store, n, maxManifestSize)
			if err != nil {
				return nil, fmt.Errorf("gc %s: %w", volumeID, err)
			}
			var seg journalSegment
			if json.Unmarshal(data, &seg) != nil {
				continue // unreadable: its chunks are as young as the journal, grace covers them
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
		case oi.ModTime.After(cutoff):
			rep.YoungChunks++
		default:
			garbage = append(garbage, oi)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("gc %s: %w", volumeID, err)
	}
	err = parallel(ctx, e.opts.Concurrency, len(garbage), func(ctx context.Context, _, i int) error {
		return e.store.Delete(ctx, garbage[i].Name)
	})
	if err != nil {
		return nil, fmt.Errorf("gc %s: %w", volumeID, err)
	}
	for _, g := range garbage {
		rep.DeletedChunks++
		rep.DeletedBytes += g.Size
	}
	for _, n := range stale {
		if err := e.store.Delete(ctx, n); err != nil {
			return nil, fmt.Errorf("gc %s: %w", volumeID, err)
		}
		rep.StaleJournals++
	}
	e.opts.Logger.Info("gc done", "volume_id", volumeID, "manifests", rep.Manifests, "live_chunks", rep.LiveChunks,
		"deleted_chunks", rep.DeletedChunks, "young_chunks", rep.YoungChunks)
	return rep, nil
}

// GCStore runs GC on every volume that has objects in the store, in volume_id order. A volume whose GC fails
// (an unreadable manifest makes GC sweep nothing there) does not stop the others: its error is returned,
// joined with the others', after every volume ran. The reports are those of the volumes that succeeded.
//
// GC's caveat holds per volume: a backup of a volume racing the sweep of that volume is the one case grace
// cannot cover, so run it where the control plane keeps operations off the volumes (or accept that risk
// for volumes no longer backed up). Idempotent.
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
			errs = append(errs, err)
			continue
		}
		reps = append(reps, rep)
	}
	return reps, errors.Join(errs...)
}
