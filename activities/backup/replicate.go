package backup

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// ErrEncryptionMismatch refuses a replication between stores that are not encrypted with the same key (or
// one encrypted, the other not): chunks are copied as stored, so the replica would be unreadable there. It
// wraps ErrWrongKey.
var ErrEncryptionMismatch = fmt.Errorf("source and destination storages are not encrypted with the same key: %w", ErrWrongKey)

// replicaSamplePercent is the share of a replica's chunks re-read and re-hashed from the destination once
// it is written; every copied chunk was already checked against its hash on the way, so this checks the
// destination's storing of them, not the copy again.
const replicaSamplePercent = 10

// ReplicateReport says what a replication copied and how its replica verified.
type ReplicateReport struct {
	VolumeID      string `json:"volume_id"`
	BackupID      string `json:"backup_id"`
	Chunks        int    `json:"chunks"`         // distinct chunks the backup references
	ChunksCopied  int    `json:"chunks_copied"`  // copied to the destination
	ChunksPresent int    `json:"chunks_present"` // already there with their recorded size
	BytesCopied   int64  `json:"bytes_copied"`   // stored bytes copied (compressed, encrypted)
	DeepChecked   int    `json:"deep_checked"`   // replica chunks re-read and re-hashed from the destination
	Verified      bool   `json:"verified"`
}

// Replicate copies backup backupID of volumeID from e's store to dst's: first the chunk objects dst lacks,
// as stored (compressed, encrypted: nothing is re-encoded), in parallel within e's concurrency and bandwidth
// limits; then the manifest, last, so that a replica exists iff its manifest does; then it verifies the
// replica from dst alone (its manifest decodes, every chunk exists with its recorded size, a sample is
// re-hashed). Each copied chunk is checked against its hash before it is written, so a damaged source
// fails the replication (a *ChunkError wrapping ErrCorrupt or ErrNotExist) instead of spreading. It holds
// the destination volume's shared lock throughout (lock.go), like a backup, so a GC of the destination never
// sweeps the chunks it copies or finds there, and it writes the manifest only once every chunk is confirmed
// there (a missing one is copied again).
//
// Idempotent: a second run copies no chunk. A cancelled run writes no manifest; the chunks it copied are
// found by the next run (or collected by dst's GC). A replica that fails verification is removed again
// (manifest and bad chunks) and reported as an error, so a retry copies it anew. Engines encrypted
// differently are refused with ErrEncryptionMismatch.
func (e *Engine) Replicate(ctx context.Context, dst *Engine, volumeID, backupID string, progress func(Progress)) (ReplicateReport, error) {
	rep := ReplicateReport{VolumeID: volumeID, BackupID: backupID}
	if dst == nil {
		return rep, errors.New("backup: replicate: nil destination")
	}
	fail := func(err error) (ReplicateReport, error) {
		return rep, fmt.Errorf("replicate backup %s of volume %s to %s: %w", backupID, volumeID, dst.store, err)
	}
	if e.codec.keyID != dst.codec.keyID {
		return fail(ErrEncryptionMismatch)
	}
	prog := newReporter(progress, e.opts, 0)
	prog.report(Progress{Phase: PhasePrepare}, true)
	m, err := e.Manifest(ctx, volumeID, backupID)
	if err != nil {
		return rep, err
	}
	if err := dst.checkKey(m); err != nil {
		return fail(err)
	}
	// A replica is a backup of the destination's volume: it holds the volume's shared lock there, so no GC of
	// the destination sweeps the chunks it finds present or copies, and it commits like a backup.
	lock, err := dst.lockShared(ctx, volumeID, backupID, "replicate")
	if err != nil {
		return fail(err)
	}
	defer lock.release()
	ctx = lock.ctx

	// What the destination lacks: one Stat per distinct chunk, many at a time (latency-bound).
	var distinct []ChunkRef
	seen := make(map[string]bool, len(m.Chunks))
	for _, c := range m.Chunks {
		if !seen[c.ID] {
			seen[c.ID] = true
			distinct = append(distinct, c)
		}
	}
	rep.Chunks = len(distinct)
	lacking := make([]bool, len(distinct))
	err = parallel(ctx, manifestConcurrency, len(distinct), func(ctx context.Context, _, i int) error {
		info, err := dst.store.Stat(ctx, chunkName(volumeID, distinct[i].ID))
		switch {
		case err == nil:
			lacking[i] = info.Size != distinct[i].StoredSize // damaged there: copied over
		case errors.Is(err, ErrNotExist):
			lacking[i] = true
		default:
			return err
		}
		return nil
	})
	if err != nil {
		return fail(err)
	}
	var todo []ChunkRef
	var total int64
	for i, c := range distinct {
		if lacking[i] {
			todo = append(todo, c)
			total += c.StoredSize
		}
	}
	rep.ChunksPresent = len(distinct) - len(todo)

	// The copy, as stored.
	prog.report(Progress{Phase: PhaseTransfer, BytesTotal: total}, true)
	var mu sync.Mutex
	bufs := make([]copyBufs, e.opts.Concurrency)
	err = parallel(ctx, e.opts.Concurrency, len(todo), func(ctx context.Context, w, i int) error {
		c := todo[i]
		if err := e.copyChunk(ctx, dst, m, c, &bufs[w]); err != nil {
			return err
		}
		mu.Lock()
		rep.ChunksCopied++
		rep.BytesCopied += c.StoredSize
		prog.report(Progress{Phase: PhaseTransfer, BytesDone: rep.BytesCopied, BytesTotal: total}, false)
		mu.Unlock()
		return nil
	})
	if err != nil {
		return fail(err)
	}

	// The commit point, as a backup's: every chunk confirmed in the destination (copied again if missing),
	// then the manifest, re-encoded from its verified decode, which is byte-identical to what Backup wrote
	// (the encoding is canonical) and can never be a torn copy.
	prog.report(Progress{Phase: PhaseCommit, BytesDone: total, BytesTotal: total}, true)
	recopy := func(ctx context.Context, refs []ChunkRef) ([]ChunkRef, error) {
		var b copyBufs
		return refs, e.copyChunk(ctx, dst, m, refs[0], &b)
	}
	if _, err := dst.commit(ctx, lock, m, recopy); err != nil {
		return fail(err)
	}

	v, err := dst.Verify(ctx, VerifyRequest{VolumeID: volumeID, BackupID: backupID, Deep: true,
		SamplePercent: replicaSamplePercent, Progress: progress})
	if err != nil {
		return fail(fmt.Errorf("verify replica: %w", err))
	}
	rep.DeepChecked = v.DeepChecked
	if !v.OK() {
		return fail(dst.unreplicate(ctx, v))
	}
	rep.Verified = true
	prog.report(Progress{Phase: PhaseDone, BytesDone: total, BytesTotal: total}, true)
	e.opts.Logger.Info("replicate done", "volume_id", volumeID, "backup_id", backupID, "to", dst.store.String(),
		"chunks_copied", rep.ChunksCopied, "chunks_present", rep.ChunksPresent, "bytes_copied", rep.BytesCopied)
	return rep, nil
}

// unreplicate removes a replica that failed verification: its manifest, so no broken replica stays
// visible, and its corrupt chunks, so that the retry the returned error asks for copies them again.
func (e *Engine) unreplicate(ctx context.Context, v *VerifyReport) error {
	bad := fmt.Errorf("replica failed verification (%d chunks missing, %d corrupt)", len(v.Missing), len(v.Corrupt))
	if err := e.Delete(ctx, v.VolumeID, v.BackupID); err != nil {
		return errors.Join(bad, fmt.Errorf("remove its manifest: %w", err))
	}
	for _, p := range v.Corrupt {
		if err := e.store.Delete(ctx, chunkName(v.VolumeID, p.ID)); err != nil {
			return errors.Join(bad, fmt.Errorf("remove corrupt chunk %s: %w", p.ID, err))
		}
	}
	return fmt.Errorf("%w; removed it, a retry copies it again", bad)
}

// copyBufs are one worker's reusable buffers for copyChunk.
type copyBufs struct{ obj, check, plain []byte }

// copyChunk copies chunk c of m from e's store to dst's as stored, after checking it against its hash, within
// e's bandwidth budget.
func (e *Engine) copyChunk(ctx context.Context, dst *Engine, m *Manifest, c ChunkRef, b *copyBufs) error {
	if err := e.throttle(ctx, c.StoredSize); err != nil {
		return err
	}
	name := chunkName(m.VolumeID, c.ID)
	obj, err := readSized(ctx, e.store, name, c.StoredSize, &b.obj)
	if err == nil {
		// open decrypts in place: check a copy, send the object as stored.
		b.check = append(b.check[:0], obj...)
		b.plain, err = e.codec.open(m.Hash, c.ID, b.check, c.PlainLength(), b.plain)
	}
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return &ChunkError{VolumeID: m.VolumeID, Offset: c.Offset, ID: c.ID, Err: err}
	}
	return PutBytes(ctx, dst.store, name, obj)
}
