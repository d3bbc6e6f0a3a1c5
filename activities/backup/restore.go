package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// RestoreRequest restores one backup onto a target.
type RestoreRequest struct {
	VolumeID string
	BackupID string
	// Target receives the image at offsets [0, Size). It must be at least the backup's size (a regular file
	// that is shorter is extended).
	Target io.WriterAt
	// TargetZeroed promises the target reads as zeros (a freshly created volume or sparse file): zero
	// ranges are then skipped, keeping the target sparse. Without it zero ranges are written, so an in-place
	// restore over old data is still byte-identical.
	TargetZeroed bool
	Progress     func(Progress)
	// Flush, when given, makes every write to Target so far durable (the volume writer's Flush). It lets the
	// restore vouch for a resume point: a progress report's NextOffset is set only once the chunks below it
	// were written and flushed. Without it NextOffset stays 0 (a retry starts over).
	Flush func() error
	// Resume continues a restore whose earlier attempt, onto the same Target, reported NextOffset: the
	// chunks below it are not fetched or written again (zero ranges, when written, always are).
	Resume *Checkpoint
}

// RestoreResult says what a successful restore wrote.
type RestoreResult struct {
	Manifest     *Manifest
	BytesWritten int64 // chunk bytes plus zero bytes written, by this attempt
	BytesSkipped int64 // chunk bytes below the resume point, written by an earlier attempt
	Chunks       int   // chunks fetched, verified and written by this attempt
}

// ChunkError names the chunk an operation failed on; it wraps ErrCorrupt, ErrNotExist or an I/O error.
type ChunkError struct {
	VolumeID string
	Offset   int64
	ID       string
	Err      error
}

func (e *ChunkError) Error() string {
	return fmt.Sprintf("volume %s: chunk %s at offset %d: %v", e.VolumeID, e.ID, e.Offset, e.Err)
}

func (e *ChunkError) Unwrap() error { return e.Err }

// Restore writes backup BackupID onto req.Target. Every chunk is verified against its hash before it is
// written; on any failure Restore returns an error (a *ChunkError for a bad or missing chunk) and the
// target must be treated as garbage. Restores are idempotent: a retry writes the same bytes, from
// req.Resume's offset when an earlier attempt reported one (see RestoreRequest.Flush).
func (e *Engine) Restore(ctx context.Context, req RestoreRequest) (*RestoreResult, error) {
	m, err := e.Manifest(ctx, req.VolumeID, req.BackupID)
	if err != nil {
		return nil, err
	}
	if err := e.checkKey(m); err != nil {
		return nil, err
	}
	if req.Target == nil {
		return nil, errors.New("restore: nil target")
	}
	if err := extendTarget(req.Target, m.Size); err != nil {
		return nil, fmt.Errorf("restore %s: %w", req.BackupID, err)
	}
	var total = m.Size
	if req.TargetZeroed {
		total = 0
		for _, c := range m.Chunks {
			total += c.Length
		}
	}
	// Resume: the chunks below the checkpoint are on the target already.
	first := 0
	var skipped int64
	if req.Resume.Offset() > 0 {
		for first < len(m.Chunks) && m.Chunks[first].Offset < req.Resume.NextOffset {
			skipped += m.Chunks[first].Length
			first++
		}
	}
	rep := newReporter(req.Progress, e.opts, skipped)
	var done atomic.Int64
	done.Store(skipped)
	wm := newWatermark(m, first, e.opts.CheckpointEvery, e.opts.CheckpointInterval, e.opts.Now)
	rep.report(Progress{Phase: PhaseTransfer, BytesDone: skipped, BytesTotal: total, NextOffset: wm.durable}, true)
	progress := make(chan struct{}, 1)
	progressDone := make(chan struct{})
	var moved atomic.Bool // a flush moved the resume point since the last report
	go func() {           // one goroutine calls Progress, so callers need no locking
		defer close(progressDone)
		for range progress {
			// A new resume point is always reported (a retry resumes from the last one heartbeated).
			rep.report(Progress{Phase: PhaseTransfer, BytesDone: done.Load(), BytesTotal: total,
				NextOffset: wm.durableOffset()}, moved.Swap(false))
		}
	}()
	tick := func(n int64) {
		done.Add(n)
		select {
		case progress <- struct{}{}:
		default:
		}
	}

	// One task per cell of the chunk grid: its refs, by offset. A v2 cell may slice one chunk more than
	// once; the chunk is fetched once for all of them.
	cells := cellGroups(m, first)
	bufs := make([]struct{ plain, obj []byte }, e.opts.Concurrency)
	err = parallel(ctx, e.opts.Concurrency, len(cells)-1, func(ctx context.Context, w, k int) error {
		refs := m.Chunks[cells[k]:cells[k+1]]
		for i, c := range refs {
			if i > 0 && slices.ContainsFunc(refs[:i], func(p ChunkRef) bool { return p.ID == c.ID }) {
				continue // written with the first ref of its chunk
			}
			obj, err := readSized(ctx, e.store, chunkName(m.VolumeID, c.ID), c.StoredSize, &bufs[w].obj)
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return &ChunkError{VolumeID: m.VolumeID, Offset: c.Offset, ID: c.ID, Err: err}
			}
			plain, err := e.codec.open(m.Hash, c.ID, obj, c.PlainLength(), bufs[w].plain)
			if err != nil {
				return &ChunkError{VolumeID: m.VolumeID, Offset: c.Offset, ID: c.ID, Err: err}
			}
			bufs[w].plain = plain
			for _, s := range refs[i:] {
				if s.ID != c.ID {
					continue
				}
				if err := e.throttle(ctx, s.Length); err != nil {
					return err
				}
				if _, err := req.Target.WriteAt(plain[s.Skip:s.Skip+s.Length], s.Offset); err != nil {
					return fmt.Errorf("write target at %d: %w", s.Offset, err)
				}
				tick(s.Length)
			}
		}
		for i := cells[k]; i < cells[k+1]; i++ {
			wm.written(i)
		}
		if req.Flush != nil && wm.due() && wm.flush(req.Flush) {
			moved.Store(true)
		}
		return nil
	})
	if err == nil && !req.TargetZeroed {
		err = e.writeZeros(ctx, req.Target, m.ZeroRanges, tick)
	}
	close(progress)
	<-progressDone
	if err != nil {
		// The last resume point, whatever the rate limit let through: the retry starts from it.
		rep.report(Progress{Phase: PhaseTransfer, BytesDone: done.Load(), BytesTotal: total,
			NextOffset: wm.durableOffset()}, true)
		return nil, fmt.Errorf("restore %s of volume %s: %w", req.BackupID, req.VolumeID, err)
	}
	// Final check: every byte the manifest accounts for went out (in this attempt or, below the resume
	// point, in the one before).
	if done.Load() != total {
		return nil, fmt.Errorf("restore %s: wrote %d of %d bytes", req.BackupID, done.Load(), total)
	}
	// The end is a resume point only once flushed (the caller's Close flushes again, and must succeed).
	var end int64
	if req.Flush != nil {
		if err := req.Flush(); err != nil {
			return nil, fmt.Errorf("restore %s: flush target: %w", req.BackupID, err)
		}
		end = m.Size
	}
	rep.report(Progress{Phase: PhaseDone, BytesDone: total, BytesTotal: total, NextOffset: end}, true)
	e.opts.Logger.Info("restore done", "volume_id", req.VolumeID, "backup_id", req.BackupID, "size", m.Size,
		"resumed_at", req.Resume.Offset())
	return &RestoreResult{Manifest: m, BytesWritten: total - skipped, BytesSkipped: skipped,
		Chunks: len(m.Chunks) - first}, nil
}

// cellGroups splits m.Chunks from first into runs of refs in the same cell of the chunk grid: run k is
// m.Chunks[g[k]:g[k+1]].
func cellGroups(m *Manifest, first int) []int {
	g := []int{first}
	for i := first + 1; i < len(m.Chunks); i++ {
		if m.Chunks[i].Offset/m.ChunkSize != m.Chunks[i-1].Offset/m.ChunkSize {
			g = append(g, i)
		}
	}
	if first < len(m.Chunks) {
		g = append(g, len(m.Chunks))
	}
	return g
}

// watermark tracks which chunks of a restore are written, and the resume point a flush made durable: the
// offset below which every chunk was written before the last successful flush began.
type watermark struct {
	m *Manifest
	// every and interval bound the chunks and the time between two flushes that move the resume point
	// (Options.CheckpointEvery and CheckpointInterval, as for a backup's journal): a flush syncs the
	// target, and a resumed restore redoes at most that much.
	every     int
	interval  time.Duration
	now       func() time.Time
	lastFlush time.Time
	flushing  sync.Mutex // one flush at a time
	mu        sync.Mutex
	done      []bool
	next      int   // first chunk not yet written (all before it are)
	durable   int64 // NextOffset vouched for by a flush
	flushed   int   // next at the last flush
}

func newWatermark(m *Manifest, first, every int, interval time.Duration, now func() time.Time) *watermark {
	w := &watermark{m: m, every: every, interval: interval, now: now, lastFlush: now(),
		done: make([]bool, len(m.Chunks)), next: first, flushed: first}
	if first > 0 {
		w.durable = w.offset(first)
	}
	return w
}

// offset is where chunk i starts (the backup's size past the last chunk).
func (w *watermark) offset(i int) int64 {
	if i >= len(w.m.Chunks) {
		return w.m.Size
	}
	return w.m.Chunks[i].Offset
}

func (w *watermark) written(i int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.done[i] = true
	for w.next < len(w.done) && w.done[w.next] {
		w.next++
	}
}

// due says whether enough was written since the last flush to move the resume point.
func (w *watermark) due() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.next-w.flushed >= w.every || (w.next > w.flushed && w.now().Sub(w.lastFlush) >= w.interval)
}

// flush makes what is written durable and moves the resume point to the watermark taken before it, and says
// whether it did; a failed flush leaves the resume point where it was (the restore itself fails at Close).
func (w *watermark) flush(fn func() error) bool {
	if !w.flushing.TryLock() {
		return false // another worker is flushing
	}
	defer w.flushing.Unlock()
	w.mu.Lock()
	next := w.next
	w.mu.Unlock()
	if fn() != nil {
		return false
	}
	w.mu.Lock()
	w.flushed, w.durable, w.lastFlush = next, w.offset(next), w.now()
	w.mu.Unlock()
	return true
}

func (w *watermark) durableOffset() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.durable
}

func (e *Engine) writeZeros(ctx context.Context, w io.WriterAt, zs []Extent, tick func(int64)) error {
	for _, z := range zs {
		for off := z.Offset; off < z.End(); {
			n := min(int64(len(zeroBlock)), z.End()-off)
			if err := e.throttle(ctx, n); err != nil {
				return err
			}
			if _, err := w.WriteAt(zeroBlock[:n], off); err != nil {
				return fmt.Errorf("write zeros at %d: %w", off, err)
			}
			tick(n)
			off += n
		}
	}
	return nil
}

// extendTarget grows a regular file to size, so trailing zero ranges exist (as holes) without writes.
func extendTarget(t io.WriterAt, size int64) error {
	f, ok := t.(*os.File)
	if !ok {
		return nil
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() || fi.Size() >= size {
		return err
	}
	return f.Truncate(size)
}
