package backup

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// commitRounds bounds how often a commit starts over because its lease lapsed while it confirmed chunks:
// a store so slow that a listing outlasts LockStale/2 three times fails the commit (retryably) instead.
const commitRounds = 3

// repairFunc stores chunk c again (from the backup's source, or the replication's source store) and returns
// its stored size.
type repairFunc func(ctx context.Context, c ChunkRef) (int64, error)

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

// repairChunks stores missing again and records their stored sizes in m.
func (e *Engine) repairChunks(ctx context.Context, m *Manifest, missing []ChunkRef, repair repairFunc) error {
	sizes := make([]int64, len(missing))
	err := parallel(ctx, e.opts.Concurrency, len(missing), func(ctx context.Context, _, i int) error {
		s, err := repair(ctx, missing[i])
		sizes[i] = s
		return err
	})
	if err != nil {
		return fmt.Errorf("store missing chunks again: %w", err)
	}
	bySize := make(map[string]int64, len(missing))
	for i, c := range missing {
		bySize[c.ID] = sizes[i]
	}
	for i := range m.Chunks {
		if s, ok := bySize[m.Chunks[i].ID]; ok {
			m.Chunks[i].StoredSize = s
		}
	}
	m.StoredBytes = storedBytes(m.Chunks)
	return nil
}

// errSourceChanged is a missing chunk that the backup's source no longer holds either.
var errSourceChanged = errors.New("the source no longer holds it")

// repairFromSource is a backup's repairFunc: it reads the chunk's range from the source again, checks it
// still hashes to the chunk's id, and uploads it.
func (e *Engine) repairFromSource(req BackupRequest) repairFunc {
	return func(ctx context.Context, c ChunkRef) (int64, error) {
		if err := e.throttle(ctx, c.Length); err != nil {
			return 0, err
		}
		buf := make([]byte, c.Length)
		if err := readFull(req.Source, buf, c.Offset); err != nil {
			return 0, err
		}
		id, err := e.codec.id(e.codec.hashName(), buf)
		if err != nil {
			return 0, err
		}
		if id != c.ID {
			return 0, fmt.Errorf("chunk %s at offset %d is missing from the store: %w", c.ID, c.Offset, errSourceChanged)
		}
		var sb sealBufs
		obj := e.codec.seal(id, buf, &sb)
		if err := PutBytes(ctx, e.store, chunkName(req.VolumeID, id), obj); err != nil {
			return 0, err
		}
		return int64(len(obj)), nil
	}
}
