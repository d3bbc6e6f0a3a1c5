package backup

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// commitRounds bounds how often a commit starts over because its lease lapsed while it confirmed chunks:
// a store so slow that a listing outlasts LockStale/2 three times fails the commit (retryably) instead.
const commitRounds = 3

// repairFunc stores a missing chunk again (from the backup's source, or the replication's source store),
// given every ref of the manifest that names it, and returns those refs as they now stand: the stored size
// updated, or, when the chunk itself cannot be made again, each ref pointing at a chunk that could.
type repairFunc func(ctx context.Context, refs []ChunkRef) ([]ChunkRef, error)

// commit makes m available, under l (lock.go): it renews the lease, waits out any GC or abandon of the volume,
// confirms that every chunk m lists is stored with its recorded size, storing missing ones again through
// repair (nil: a missing chunk fails the commit), and writes the manifest only while the lease still holds.
// This is what makes "a backup is available only with every chunk stored" hold by construction: whatever
// happened to a chunk before — a GC that found this backup's lock stale and swept, a journal naming chunks
// a GC removed, a store that acknowledged a write it lost — is seen here, under a lock no GC can sweep
// through. It returns the encoded manifest it wrote.
func (e *Engine) commit(ctx context.Context, l *volumeLock, m *Manifest, repair repairFunc) ([]byte, error) {
	repaired := false
	for round := 1; ; round++ {
		if err := l.refresh(ctx); err != nil {
			return nil, err
		}
		if err := l.awaitNoExclusive(ctx); err != nil {
			return nil, err
		}
		missing, err := e.missingChunks(ctx, m)
		if err != nil {
			return nil, err
		}
		if len(missing) > 0 {
			if repair == nil || repaired {
				return nil, fmt.Errorf("%d chunks missing from %s after uploading them (first %s)", len(missing),
					e.store, missing[0].ID)
			}
			e.opts.Logger.Warn("backup: chunks missing at commit; storing them again", "volume_id", m.VolumeID,
				"backup_id", m.BackupID, "missing", len(missing))
			if err := e.repairChunks(ctx, m, missing, repair); err != nil {
				return nil, err
			}
			repaired = true
			continue // confirm them like the others, by a fresh listing under a renewed lease
		}
		data, err := encodeManifest(m, e.codec.macKey)
		if err != nil {
			return nil, err
		}
		if !l.held() {
			if round >= commitRounds {
				return nil, l.checkHeld()
			}
			continue
		}
		// The commit point: the backup exists from here on.
		if err := PutBytes(ctx, e.store, manifestName(m.VolumeID, m.BackupID), data); err != nil {
			return nil, fmt.Errorf("write manifest: %w", err)
		}
		return data, nil
	}
}

// missingChunks returns one ref per distinct chunk of m that the store does not hold at its recorded size.
// One listing of the volume's chunks, not a Stat per chunk: an incremental backup of a large volume lists
// hundreds of thousands of chunks it never touched, and a list page carries a thousand of them.
func (e *Engine) missingChunks(ctx context.Context, m *Manifest) ([]ChunkRef, error) {
	want := make(map[string]int64, len(m.Chunks))
	for _, c := range m.Chunks {
		want[c.ID] = c.StoredSize
	}
	if len(want) == 0 {
		return nil, nil
	}
	present := make(map[string]bool, len(want))
	err := e.store.List(ctx, chunksPrefix(m.VolumeID), func(oi ObjectInfo) error {
		id := oi.Name[strings.LastIndex(oi.Name, "/")+1:]
		if size, ok := want[id]; ok && size == oi.Size {
			present[id] = true
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("confirm chunks: %w", err)
	}
	var missing []ChunkRef
	for _, c := range m.Chunks {
		if !present[c.ID] {
			present[c.ID] = true // once per id
			missing = append(missing, c)
		}
	}
	return missing, nil
}

// repairChunks stores missing again and records in m the refs repair returns.
func (e *Engine) repairChunks(ctx context.Context, m *Manifest, missing []ChunkRef, repair repairFunc) error {
	at := make(map[string][]int, len(missing)) // missing id → indexes of its refs in m.Chunks
	for _, c := range missing {
		at[c.ID] = nil
	}
	for i, c := range m.Chunks {
		if _, ok := at[c.ID]; ok {
			at[c.ID] = append(at[c.ID], i)
		}
	}
	fixed := make([][]ChunkRef, len(missing))
	err := parallel(ctx, e.opts.Concurrency, len(missing), func(ctx context.Context, _, k int) error {
		var refs []ChunkRef
		for _, i := range at[missing[k].ID] {
			refs = append(refs, m.Chunks[i])
		}
		var err error
		fixed[k], err = repair(ctx, refs)
		if err == nil && len(fixed[k]) != len(refs) {
			err = fmt.Errorf("internal error: repair of chunk %s returned %d refs for %d", missing[k].ID, len(fixed[k]), len(refs))
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("store missing chunks again: %w", err)
	}
	for k, c := range missing {
		for j, i := range at[c.ID] {
			m.Chunks[i] = fixed[k][j]
		}
	}
	m.StoredBytes = storedBytes(m.Chunks)
	return nil
}

// errSourceChanged is a missing chunk that the backup's source no longer holds either.
var errSourceChanged = errors.New("the source no longer holds it")

// repairFromSource is a backup's repairFunc. The chunk is read from the source again, where the backup's
// refs place it: when they cover all of it (a chunk the backup refers to whole, or one it made from the
// blocks that changed in a cell) and it still hashes to its id, it is uploaded again; a whole chunk that no
// longer does fails with errSourceChanged. A chunk the refs cover only in part (a parent's chunk, sliced,
// that the store lost) or that no longer hashes to its id is replaced: each ref's bytes are stored alone,
// from the source, which is what the backup records.
func (e *Engine) repairFromSource(req BackupRequest) repairFunc {
	return func(ctx context.Context, refs []ChunkRef) ([]ChunkRef, error) {
		c := refs[0]
		plain := make([]byte, c.PlainLength())
		var have []Extent // parts of the chunk read, in the chunk's offsets
		for _, r := range refs {
			if err := e.throttle(ctx, r.Length); err != nil {
				return nil, err
			}
			if err := readFull(req.Source, plain[r.Skip:r.Skip+r.Length], r.Offset); err != nil {
				return nil, err
			}
			have = append(have, Extent{Offset: r.Skip, Length: r.Length})
			if r.ChunkLength == 0 {
				break // the whole chunk
			}
		}
		whole := slices.ContainsFunc(refs, func(r ChunkRef) bool { return r.ChunkLength == 0 })
		if covers(have, int64(len(plain))) {
			id, err := e.codec.id(e.codec.hashName(), plain)
			if err != nil {
				return nil, err
			}
			if id == c.ID {
				size, err := e.putChunk(ctx, nil, req.VolumeID, id, plain, &sealBufs{})
				if err != nil {
					return nil, err
				}
				out := slices.Clone(refs)
				for i := range out {
					out[i].StoredSize = size
				}
				return out, nil
			}
			if whole {
				return nil, fmt.Errorf("chunk %s at offset %d is missing from the store: %w", c.ID, c.Offset, errSourceChanged)
			}
		}
		out := make([]ChunkRef, len(refs))
		for i, r := range refs {
			if err := e.throttle(ctx, r.Length); err != nil {
				return nil, err
			}
			buf := make([]byte, r.Length)
			if err := readFull(req.Source, buf, r.Offset); err != nil {
				return nil, err
			}
			id, err := e.codec.id(e.codec.hashName(), buf)
			if err != nil {
				return nil, err
			}
			size, err := e.putChunk(ctx, nil, req.VolumeID, id, buf, &sealBufs{})
			if err != nil {
				return nil, err
			}
			out[i] = ChunkRef{Offset: r.Offset, Length: r.Length, ID: id, StoredSize: size}
		}
		return out, nil
	}
}

// covers reports whether the extents cover [0, n).
func covers(es []Extent, n int64) bool {
	es = slices.Clone(es)
	slices.SortFunc(es, func(a, b Extent) int { return cmp.Compare(a.Offset, b.Offset) })
	var pos int64
	for _, e := range es {
		if e.Offset > pos {
			return false
		}
		pos = max(pos, e.End())
	}
	return pos >= n
}
