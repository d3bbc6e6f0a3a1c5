package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"
	"time"
)

// BackupRequest is one backup of one volume image.
type BackupRequest struct {
	VolumeID string
	BackupID string
	// Source is a point-in-time image of the volume (the volume driver's snapshot reader), Size bytes long.
	Source io.ReaderAt
	Size   int64
	// Parent is an earlier backup of the same volume. Its chunks are known to be stored (no Stat needed),
	// and with Changed it lets unchanged ranges be taken from it without reading them.
	Parent string
	// Changed, if non-nil, lists every range that may differ from Parent (RBD diff, libvirt checkpoint
	// dirty bitmap). Chunks outside it are copied from Parent's manifest. nil = no hint: read everything.
	Changed    []Extent
	Labels     map[string]string
	SourceType string // e.g. "rbd", "qcow2"; recorded for the catalog
	// Resume continues a backup that crashed, from the checkpoint of its last progress report. The same
	// request must be given again; the result is the manifest an uninterrupted run would have written.
	Resume   *Checkpoint
	Progress func(Progress)
}

// chunkResult is what a worker learned about one cell of the chunk grid, [off, off+length): the chunk refs
// and zero ranges that cover it, each by offset.
type chunkResult struct {
	off, length int64
	refs        []ChunkRef
	zeros       []Extent
}

// Backup streams req.Source into the store and writes the manifest last; the backup exists once Backup
// returns without error. Chunks already stored (by the parent or any earlier backup of the volume) are not
// uploaded again. Memory stays bounded by Concurrency chunks; a cancelled ctx stops within one chunk and
// leaves no manifest. Idempotent: a retry with the same ids writes the same backup again.
//
// It runs under the volume's shared lock (lock.go): it waits up to Options.LockWait for a GC or abandon of
// the volume to finish (then fails with ErrLocked), and fails with ErrLockLost if its lock is removed under
// it (its backup abandoned, or a newer attempt of it started). Both are retryable. The manifest is written
// only once every chunk it lists is confirmed stored (commit).
//
// The stages, in order: committedBackup (a retry of a backup that already committed is done), then under
// the lock planBackup (the parent and the chunks known to be stored), resumeBackup (the journal of a crashed
// run), transfer (read, upload and journal every chunk) and commitBackup (confirm, write the manifest).
func (e *Engine) Backup(ctx context.Context, req BackupRequest) (*Manifest, error) {
	if err := checkIDs(req.VolumeID, req.BackupID); err != nil {
		return nil, err
	}
	if req.Source == nil || req.Size < 0 {
		return nil, errors.New("backup: a source and a non-negative size are required")
	}
	rep := newReporter(req.Progress, e.opts, 0)
	rep.report(Progress{Phase: PhasePrepare, BytesTotal: req.Size}, true)

	// A retried activity whose first attempt committed but never reported back: the backup exists, done.
	if m, done, err := e.committedBackup(ctx, req, rep); done || err != nil {
		return m, err
	}

	// From here on the backup holds its volume's shared lock (lock.go), so no GC sweeps the volume while it
	// reads its parent, replays its journal, finds chunks already stored and uploads the others. The lock
	// object is the backup's in-progress marker; a lost lock cancels ctx with ErrLockLost.
	lock, err := e.lockShared(ctx, req.VolumeID, req.BackupID, "backup")
	if err != nil {
		return nil, fmt.Errorf("backup %s of volume %s: %w", req.BackupID, req.VolumeID, err)
	}
	defer lock.release()
	ctx = lock.ctx

	plan, err := e.planBackup(ctx, req)
	if err != nil {
		return nil, err
	}
	if plan.batch, err = e.newBatch(ctx, req); err != nil {
		return nil, err
	} else if plan.batch != nil {
		defer plan.batch.Discard() // a failed backup leaves no chunk it did not flush
	}
	st, err := e.resumeBackup(ctx, req, plan.known)
	if err != nil {
		return nil, err
	}
	st.batch = plan.batch
	if err := e.transfer(ctx, req, plan, st, rep); err != nil {
		return nil, err
	}
	return e.commitBackup(ctx, lock, req, st, rep)
}

// committedBackup looks for the manifest of req's backup, which exists when an earlier attempt committed but
// never reported back. It returns that manifest and true, having reported PhaseDone, when it exists with
// req's size; an error when it exists with another size or the store cannot say; nil, false, nil when
// there is none and the backup goes on. It writes nothing.
func (e *Engine) committedBackup(ctx context.Context, req BackupRequest, rep *progressReporter) (*Manifest, bool, error) {
	if m, err := e.Manifest(ctx, req.VolumeID, req.BackupID); err == nil && m.Size == req.Size {
		rep.report(Progress{Phase: PhaseDone, BytesDone: req.Size, BytesTotal: req.Size, NextOffset: req.Size}, true)
		return m, true, nil
	} else if err == nil {
		return nil, false, fmt.Errorf("backup %s of volume %s already exists with size %d, not %d",
			req.BackupID, req.VolumeID, m.Size, req.Size)
	} else if !errors.Is(err, ErrNotExist) {
		return nil, false, err
	}
	return nil, false, nil
}

// backupPlan is what a backup knows before it reads its source.
type backupPlan struct {
	// known are chunks known to be stored, with their stored sizes: they are not uploaded (nor Stat-ed) again.
	known *knownSet
	// parent is req.Parent's manifest when its chunks line up with this backup's (same hash, key and chunk
	// size), else nil; changed is req.Changed sorted, kept only with such a parent (nil: read everything).
	parent  *Manifest
	changed []Extent
	// diffs decides whether a changed cell is compared with the parent's (see spliceDiff).
	diffs *diffGate
	// batch defers the durability of the chunks the backup stores (DeferredStore), nil on other stores:
	// it is flushed before each journal segment and before the commit, and discarded when the backup fails.
	batch PutBatch
	// prefetch reads the runs of sparse changed cells ahead of the workers (nil without changed extents).
	prefetch *runPrefetcher
}

// planBackup reads req.Parent's manifest (a parent that cannot be read fails the backup, wrapped "parent:")
// and makes the plan: its chunks are known, and with req.Changed its unchanged chunks are taken from it.
// It writes nothing.
func (e *Engine) planBackup(ctx context.Context, req BackupRequest) (backupPlan, error) {
	cs := e.opts.ChunkSize
	// Known chunks: those of the parent need no Stat. Every backup still restores alone, because a chunk is
	// only deleted by GC once no manifest references it.
	known := &knownSet{m: map[string]int64{}}
	var parent *Manifest
	if req.Parent != "" {
		p, err := e.Manifest(ctx, req.VolumeID, req.Parent)
		if err != nil {
			return backupPlan{}, fmt.Errorf("parent: %w", err)
		}
		if p.Hash == e.codec.hashName() && p.KeyID == e.codec.keyID {
			for _, c := range p.Chunks {
				known.m[c.ID] = c.StoredSize
			}
			if p.ChunkSize == cs {
				parent = p
			}
		}
	}
	var changed []Extent
	if req.Changed != nil && parent != nil {
		changed = mergeExtents(req.Changed) // non-nil even when empty: "nothing changed" is a hint too
	}
	return backupPlan{known: known, parent: parent, changed: changed, diffs: &diffGate{}}, nil
}

// resumeBackup returns the backup's state to continue from: what the journal of a crashed run covers when
// req.Resume points past 0 (loadJournal: only segments that chain and authenticate count), else nothing,
// after deleting any journal left by an earlier attempt so that it is never replayed. The chunks the state
// lists join known.
func (e *Engine) resumeBackup(ctx context.Context, req BackupRequest, known *knownSet) (*backupState, error) {
	// Resume: replay the journal of the crashed run, or start clean.
	st := &backupState{createdAt: e.opts.Now().UTC(), lastJournal: e.opts.Now()}
	if req.Resume.Offset() > 0 {
		if err := e.loadJournal(ctx, req, st); err != nil {
			return nil, err
		}
	} else if err := e.deleteJournal(ctx, req.VolumeID, req.BackupID); err != nil {
		return nil, err
	}
	for _, c := range st.chunks {
		known.put(c.ID, c.StoredSize)
	}
	return st, nil
}

// transfer backs up every chunk from st.next to req.Size: Concurrency workers read and upload them
// (uploadChunks) while this goroutine puts their results in order, journals and reports progress (collect).
// It returns nil only with st covering all of req.Size, and only once every worker has stopped. On failure
// it keeps what is done resumable (a last journal write, best effort, off the dead ctx, reported as a
// checkpoint when it lands) and returns, wrapped with the backup's ids, the cause of a cancelled or
// lost-lock ctx, else the first failure.
func (e *Engine) transfer(ctx context.Context, req BackupRequest, plan backupPlan, st *backupState, rep *progressReporter) error {
	cs := e.opts.ChunkSize
	start := st.next
	rep.base = start

	// The pipeline: a feeder hands chunk offsets to Concurrency workers; each reads, zero-checks, hashes,
	// dedups, compresses, encrypts and uploads its chunk; the collector (this goroutine) puts results back
	// in offset order, journals them every CheckpointEvery chunks and reports progress.
	nChunks := 0
	if req.Size > start {
		nChunks = int((req.Size - start + cs - 1) / cs)
	}
	results := make(chan chunkResult, e.opts.Concurrency)
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		err := e.uploadChunks(wctx, req, plan, start, nChunks, results)
		if err != nil {
			cancel(err)
		}
		close(results)
	}()

	collectErr := e.collect(wctx, cancel, req, st, rep, results)
	wg.Wait()
	if cause := context.Cause(wctx); cause != nil || collectErr != nil {
		if cause != nil {
			collectErr = cause // the first failure, not a journal write it made fail
		}
		// Keep what is done resumable: everything below st.next is uploaded. Best effort, off the dead ctx.
		if st.unjournalled > 0 {
			jctx, jcancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			if e.writeJournal(jctx, req, st) == nil {
				rep.report(Progress{Phase: PhaseTransfer, BytesDone: st.next, BytesTotal: req.Size, NextOffset: st.journalled}, true)
			}
			jcancel()
		}
		if ctx.Err() != nil {
			return fmt.Errorf("backup %s of volume %s: %w", req.BackupID, req.VolumeID, context.Cause(ctx))
		}
		return fmt.Errorf("backup %s of volume %s: %w", req.BackupID, req.VolumeID, collectErr)
	}
	if st.next != req.Size {
		return fmt.Errorf("backup %s: internal error: covered %d of %d bytes", req.BackupID, st.next, req.Size)
	}
	return nil
}

// uploadChunks backs up the nChunks chunks from start with Concurrency workers (backupChunk), each with its
// own buffers, and sends each chunk's result on results as soon as it is done, in any order. It returns
// the first worker's error, once every worker has stopped; it neither closes results nor cancels ctx.
func (e *Engine) uploadChunks(ctx context.Context, req BackupRequest, plan backupPlan, start int64, nChunks int,
	results chan<- chunkResult) error {
	cs := e.opts.ChunkSize
	bufs := make([]cellBufs, e.opts.Concurrency)
	if plan.parent != nil && plan.changed != nil {
		pctx, cancel := context.WithCancel(ctx)
		plan.prefetch = e.startPrefetch(pctx, req, plan, start, nChunks)
		defer plan.prefetch.wait() // runs after cancel: nothing reads the source once this returns
		defer cancel()
	}
	return parallel(ctx, e.opts.Concurrency, nChunks, func(ctx context.Context, w, i int) error {
		off := start + int64(i)*cs
		r, err := e.backupChunk(ctx, req, plan, off, min(cs, req.Size-off), &bufs[w])
		if err != nil {
			return err
		}
		// Always deliver: the chunk is stored, and the collector drains until close, so even after a
		// failure elsewhere it lands in the final journal write and a resume need not redo it.
		results <- r
		return nil
	})
}

// collect is the collector: it puts the chunks of results back in offset order into st, writes a journal
// segment every CheckpointEvery chunks or CheckpointInterval, and reports progress after each result,
// forcing the report at every new resume point so that heartbeats carry the latest. A journal write that
// fails cancels the workers (through cancel) and is returned; results is drained until the workers close it,
// whatever happens.
func (e *Engine) collect(wctx context.Context, cancel context.CancelCauseFunc, req BackupRequest, st *backupState,
	rep *progressReporter, results <-chan chunkResult) error {
	pending := map[int64]chunkResult{}
	var collectErr error
	for r := range results {
		if collectErr != nil {
			continue // drain
		}
		pending[r.off] = r
		for {
			r, ok := pending[st.next]
			if !ok {
				break
			}
			delete(pending, st.next)
			st.add(r)
		}
		checkpoint := false
		if now := e.opts.Now(); st.unjournalled >= e.opts.CheckpointEvery ||
			(st.unjournalled > 0 && now.Sub(st.lastJournal) >= e.opts.CheckpointInterval) {
			if err := e.writeJournal(wctx, req, st); err != nil {
				collectErr = err
				cancel(err)
				continue
			}
			st.lastJournal = now
			checkpoint = true // every new resume point is reported, so heartbeats carry the latest
		}
		rep.report(Progress{Phase: PhaseTransfer, BytesDone: st.next, BytesTotal: req.Size, NextOffset: st.journalled}, checkpoint)
	}
	return collectErr
}

// commitBackup makes the transferred backup available: it reports PhaseCommit, then commits the manifest of
// st (every chunk it lists confirmed stored, a missing one read from the source and uploaded again, the
// manifest written last, under lock), drops the journal and reports PhaseDone. A commit failing because the
// journal named a chunk the store lost and the source no longer holds drops the journal too, so the retry
// reads everything again. A journal left after a commit is only logged: GC removes it.
func (e *Engine) commitBackup(ctx context.Context, lock *volumeLock, req BackupRequest, st *backupState,
	rep *progressReporter) (*Manifest, error) {
	rep.report(Progress{Phase: PhaseCommit, BytesDone: req.Size, BytesTotal: req.Size, NextOffset: st.journalled}, true)
	m := e.backupManifest(req, st)
	if err := flush(ctx, st.batch); err != nil {
		return nil, fmt.Errorf("backup %s of volume %s: commit: %w", req.BackupID, req.VolumeID, err)
	}
	// Every chunk m lists is confirmed stored (missing ones read from the source and uploaded again) and
	// then the manifest is written, under the lock: see commit.
	if _, err := e.commit(ctx, lock, m, e.repairFromSource(req)); err != nil {
		if errors.Is(err, errSourceChanged) {
			// The journal names a chunk the store lost and the source no longer holds: a retry resuming from it
			// would fail the same way, so it goes, and the retry reads everything again.
			jctx, jcancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			if jerr := e.deleteJournal(jctx, req.VolumeID, req.BackupID); jerr != nil {
				e.opts.Logger.Warn("backup: could not drop a journal naming a lost chunk", "volume_id", req.VolumeID,
					"backup_id", req.BackupID, "err", jerr)
			}
			jcancel()
		}
		return nil, fmt.Errorf("backup %s of volume %s: commit: %w", req.BackupID, req.VolumeID, err)
	}
	if err := e.deleteJournal(ctx, req.VolumeID, req.BackupID); err != nil {
		e.opts.Logger.Warn("backup: journal cleanup failed; GC will remove it", "volume_id", req.VolumeID,
			"backup_id", req.BackupID, "err", err)
	}
	rep.report(Progress{Phase: PhaseDone, BytesDone: req.Size, BytesTotal: req.Size, NextOffset: req.Size}, true)
	e.opts.Logger.Info("backup done", "volume_id", req.VolumeID, "backup_id", req.BackupID,
		"size", req.Size, "chunks", len(m.Chunks), "stored_bytes", m.StoredBytes)
	return m, nil
}

// backupManifest is the manifest of the backup st covers, completed now.
func (e *Engine) backupManifest(req BackupRequest, st *backupState) *Manifest {
	cs := e.opts.ChunkSize
	m := &Manifest{
		FormatVersion: FormatVersion,
		VolumeID:      req.VolumeID,
		BackupID:      req.BackupID,
		Parent:        req.Parent,
		Size:          req.Size,
		ChunkSize:     cs,
		Hash:          e.codec.hashName(),
		Compression:   CompressionZstd,
		KeyID:         e.codec.keyID,
		SourceType:    req.SourceType,
		CreatedAt:     st.createdAt,
		CompletedAt:   e.opts.Now().UTC(),
		Labels:        req.Labels,
		Chunks:        st.chunks,
		ZeroRanges:    st.zeros,
		StoredBytes:   storedBytes(st.chunks),
	}
	if e.codec.aead != nil {
		m.Encryption = EncryptionAES
	}
	return m
}

// backupChunk backs up the cell [off, off+length). Without a parent it reads the cell and stores it as
// one chunk (or a zero range). With one, only what changed is stored (see splice): a cell outside
// plan.changed is the parent's pieces, unread; a cell that changed in at most half of it is read only where
// it changed (spliceRuns); a cell read whole whose chunk is not stored already is compared with the
// parent's, block by block (spliceDiff).
func (e *Engine) backupChunk(ctx context.Context, req BackupRequest, plan backupPlan, off, length int64,
	b *cellBufs) (chunkResult, error) {
	res := chunkResult{off: off, length: length}
	parent := plan.parent
	if parent != nil && plan.changed != nil {
		runs := changedRuns(plan.changed, off, length, runAlign)
		if len(runs) == 0 {
			if refs, zeros, ok := parent.piecesIn(off, length); ok {
				res.refs, res.zeros = refs, zeros
				return res, nil
			}
		} else if worthSplicing(extentsLength(runs), length) {
			if r, ok, err := e.spliceRuns(ctx, req, plan, off, length, runs, b); err != nil || ok {
				return r, err
			}
		}
	}
	if err := e.throttle(ctx, length); err != nil {
		return res, err
	}
	buf := b.cell(e.opts.ChunkSize)[:length]
	if err := readFull(req.Source, buf, off); err != nil {
		return res, err
	}
	if isZero(buf) {
		res.zeros = []Extent{{Offset: off, Length: length}}
		return res, nil
	}
	id, err := e.codec.id(e.codec.hashName(), buf)
	if err != nil {
		return res, err
	}
	ref := ChunkRef{Offset: off, Length: length, ID: id}
	if size, ok := plan.known.get(id); ok {
		ref.StoredSize = size
		e.deduplicated(length)
		res.refs = []ChunkRef{ref}
		return res, nil
	}
	if parent != nil {
		if r, ok, err := e.spliceDiff(ctx, req, plan, off, buf, b); err != nil || ok {
			return r, err
		}
	}
	if ref.StoredSize, err = e.storeChunk(ctx, plan.batch, req.VolumeID, plan.known, id, buf, &b.seal); err != nil {
		return res, err
	}
	res.refs = []ChunkRef{ref}
	return res, nil
}

// storeChunk stores plain as chunk id unless it is known or found stored already, and returns the stored
// object's size. With a batch the put is deferred: durable and visible once the batch is flushed.
func (e *Engine) storeChunk(ctx context.Context, batch PutBatch, volumeID string, known *knownSet, id string,
	plain []byte, sb *sealBufs) (int64, error) {
	if size, ok := known.get(id); ok {
		e.deduplicated(int64(len(plain)))
		return size, nil
	}
	name := chunkName(volumeID, id)
	info, err := e.store.Stat(ctx, name)
	if err == nil {
		known.put(id, info.Size)
		e.deduplicated(int64(len(plain)))
		return info.Size, nil
	} else if !errors.Is(err, ErrNotExist) {
		return 0, err
	}
	size, err := e.putChunk(ctx, batch, volumeID, id, plain, sb)
	if err != nil {
		return 0, err
	}
	known.put(id, size)
	return size, nil
}

// putChunk seals plain as chunk id and stores it, whatever is stored under its name already, and returns
// the stored object's size. With a batch the put is deferred: durable and visible once the batch is flushed
// (before a journal segment or the manifest names it).
func (e *Engine) putChunk(ctx context.Context, batch PutBatch, volumeID, id string, plain []byte, sb *sealBufs) (int64, error) {
	obj := e.codec.seal(id, plain, sb)
	var err error
	if batch != nil {
		err = batch.Put(ctx, chunkName(volumeID, id), obj)
	} else {
		err = PutBytes(ctx, e.store, chunkName(volumeID, id), obj)
	}
	if err != nil {
		return 0, err
	}
	return int64(len(obj)), nil
}

// newBatch returns a batch of deferred puts for req's backup on a store that has them (DeferredStore), else
// nil, after removing what an earlier attempt of the backup, killed before it flushed, left: this attempt
// holds the backup's lock, so that one is dead or about to find its lock lost.
func (e *Engine) newBatch(ctx context.Context, req BackupRequest) (PutBatch, error) {
	d, ok := e.store.(DeferredStore)
	if !ok {
		return nil, nil
	}
	if n, err := d.RemoveTemp(ctx, volumePrefix(req.VolumeID), req.BackupID); err != nil {
		return nil, fmt.Errorf("backup %s of volume %s: remove an earlier attempt's temporary files: %w",
			req.BackupID, req.VolumeID, err)
	} else if n > 0 {
		e.opts.Logger.Info("backup: removed an earlier attempt's temporary files", "volume_id", req.VolumeID,
			"backup_id", req.BackupID, "files", n)
	}
	return d.Batch(req.BackupID), nil
}

// flush makes batch's puts durable and visible; nothing to do without a batch.
func flush(ctx context.Context, batch PutBatch) error {
	if batch == nil {
		return nil
	}
	if err := batch.Flush(ctx); err != nil {
		return fmt.Errorf("flush chunks: %w", err)
	}
	return nil
}

func (e *Engine) deduplicated(n int64) {
	if e.opts.OnDeduplicated != nil {
		e.opts.OnDeduplicated(n)
	}
}

// mergeExtents returns es sorted, without empty extents, and with overlapping or adjacent ones merged, so
// that their ends ascend too (changedRuns searches by end). Never nil.
func mergeExtents(es []Extent) []Extent {
	sorted := make([]Extent, 0, len(es))
	for _, e := range es {
		if e.Length > 0 {
			sorted = append(sorted, e)
		}
	}
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Offset < sorted[j].Offset })
	out := sorted[:0]
	for _, e := range sorted {
		if n := len(out); n > 0 && e.Offset <= out[n-1].End() {
			out[n-1].Length = max(out[n-1].End(), e.End()) - out[n-1].Offset
			continue
		}
		out = append(out, e)
	}
	return out
}

type knownSet struct {
	mu sync.Mutex
	m  map[string]int64
}

func (k *knownSet) get(id string) (int64, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	v, ok := k.m[id]
	return v, ok
}

func (k *knownSet) put(id string, size int64) {
	k.mu.Lock()
	k.m[id] = size
	k.mu.Unlock()
}

// backupState is the in-order result of a backup so far.
type backupState struct {
	batch        PutBatch // the plan's: flushed before a journal segment names its chunks
	createdAt    time.Time
	lastJournal  time.Time // when the last journal segment was written (or the state made)
	next         int64     // everything below is done (uploaded or zero), in order
	journalled   int64     // everything below is in the journal
	seq          int       // next journal segment number
	unjournalled int       // chunks done since the last segment
	chunks       []ChunkRef
	zeros        []Extent
	segChunks    int // index into chunks where the current segment starts
	segZeros     []Extent
}

func (s *backupState) add(r chunkResult) {
	for _, z := range r.zeros {
		s.zeros = mergeZero(s.zeros, z)
		s.segZeros = mergeZero(s.segZeros, z)
	}
	s.chunks = append(s.chunks, r.refs...)
	s.next += r.length
	s.unjournalled++
}
