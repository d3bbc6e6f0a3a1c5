package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"
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
}

// RestoreResult says what a successful restore wrote.
type RestoreResult struct {
	Manifest     *Manifest
	BytesWritten int64 // chunk bytes plus zero bytes written
	Chunks       int   // chunks fetched, verified and written
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
// target must be treated as garbage. Restores are idempotent: a retry starts over and writes the same bytes.
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
	rep := newReporter(req.Progress, e.opts, 0)
	var done atomic.Int64
	var total = m.Size
	if req.TargetZeroed {
		total = 0
		for _, c := range m.Chunks {
			total += c.Length
		}
	}
	rep.report(Progress{Phase: PhaseTransfer, BytesTotal: total}, true)
	progress := make(chan struct{}, 1)
	progressDone := make(chan struct{})
	go func() { // one goroutine calls Progress, so callers need no locking
		defer close(progressDone)
		for range progress {
			rep.report(Progress{Phase: PhaseTransfer, BytesDone: done.Load(), BytesTotal: total}, false)
		}
	}()
	tick := func(n int64) {
		done.Add(n)
		select {
		case progress <- struct{}{}:
		default:
		}
	}

	bufs := make([]struct{ plain, obj []byte }, e.opts.Concurrency)
	err = parallel(ctx, e.opts.Concurrency, len(m.Chunks), func(ctx context.Context, w, i int) error {
		c := m.Chunks[i]
		obj, err := readSized(ctx, e.store, chunkName(m.VolumeID, c.ID), c.StoredSize, &bufs[w].obj)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return &ChunkError{VolumeID: m.VolumeID, Offset: c.Offset, ID: c.ID, Err: err}
		}
		plain, err := e.codec.open(m.Hash, c.ID, obj, c.Length, bufs[w].plain)
		if err != nil {
			return &ChunkError{VolumeID: m.VolumeID, Offset: c.Offset, ID: c.ID, Err: err}
		}
		bufs[w].plain = plain
		if err := e.throttle(ctx, c.Length); err != nil {
			return err
		}
		if _, err := req.Target.WriteAt(plain, c.Offset); err != nil {
			return fmt.Errorf("write target at %d: %w", c.Offset, err)
		}
		tick(c.Length)
		return nil
	})
	if err == nil && !req.TargetZeroed {
		err = e.writeZeros(ctx, req.Target, m.ZeroRanges, tick)
	}
	close(progress)
	<-progressDone
	if err != nil {
		return nil, fmt.Errorf("restore %s of volume %s: %w", req.BackupID, req.VolumeID, err)
	}
	// Final check: every byte the manifest accounts for went out.
	if done.Load() != total {
		return nil, fmt.Errorf("restore %s: wrote %d of %d bytes", req.BackupID, done.Load(), total)
	}
	rep.report(Progress{Phase: PhaseDone, BytesDone: total, BytesTotal: total, NextOffset: m.Size}, true)
	e.opts.Logger.Info("restore done", "volume_id", req.VolumeID, "backup_id", req.BackupID, "size", m.Size)
	return &RestoreResult{Manifest: m, BytesWritten: total, Chunks: len(m.Chunks)}, nil
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
