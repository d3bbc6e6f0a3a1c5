package file

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	"golang.org/x/time/rate"

	"github.com/holdfast/holdfast/activities/volume"
)

// The driver's long operations are copies: a raw volume's snapshot (the image into its metadata directory),
// a raw rollback (the snapshot back over the image) and a new volume made from a snapshot. Each checks ctx
// between blocks, so that an abort stops it within one block, and each removes what it wrote when it fails
// or is cancelled. What a killed process leaves is removed by the matching delete:
//
//   - a snapshot's copy is written as <snapshot>.raw.<random>.partial in the metadata directory, renamed to
//     <snapshot>.raw when complete. DeleteSnapshot (the compensation of a snapshot) removes that snapshot's
//     partial copies, and so does the next CreateSnapshot of the same name before it starts.
//   - a rollback's copy is .rollback.<random>.partial, renamed over the image. The next RollbackSnapshot (the
//     compensation of an in-place restore rolls back to its safety snapshot) removes any left over.
//   - a new volume is written in place, at its final path: its compensation, DeleteVolume, removes it.
//
// The random part (os.CreateTemp's, digits) makes every attempt's file its own: a retry never writes into
// a file that an earlier attempt, abandoned but still running, also writes. Removing that earlier attempt's
// file makes its final rename fail, so an abandoned copy can never bring back a deleted snapshot nor roll a
// volume back behind its compensation. Agents before random names used <snapshot>.raw.partial and
// .rollback.partial; those are removed the same way.

const (
	partialSuffix   = ".partial"
	rollbackPrefix  = ".rollback." // snapshot names never start with a dot
	snapshotPartial = ".raw."      // after the snapshot's name
)

// progressKey carries the report function of WithProgress.
type progressKey struct{}

// WithProgress returns a context under which the driver's long copies (a raw volume's snapshot and rollback,
// a new volume made from a snapshot) report, after every block, the bytes copied so far and the bytes the
// copy moves in all (the allocated bytes, not the volume's size). report runs on the copying goroutine and
// must return quickly.
func (d *Driver) WithProgress(ctx context.Context, report func(done, total int64)) context.Context {
	return context.WithValue(ctx, progressKey{}, report)
}

// limiterKey carries the driver's Limiter to its copies.
type limiterKey struct{}

// throttled returns ctx carrying the driver's limiter for the copies made under it.
func (d *Driver) throttled(ctx context.Context) context.Context {
	if d.Limiter == nil {
		return ctx
	}
	return context.WithValue(ctx, limiterKey{}, d.Limiter)
}

// throttle waits until n more bytes may be copied under ctx's limiter (none: at once), in pieces no larger
// than the limiter's burst.
func throttle(ctx context.Context, n int64) error {
	l, _ := ctx.Value(limiterKey{}).(*rate.Limiter)
	if l == nil || l.Limit() == rate.Inf {
		return nil
	}
	if l.Burst() < 1 {
		return fmt.Errorf("copy throttle: limiter burst %d lets nothing through", l.Burst())
	}
	for n > 0 {
		k := min(n, int64(l.Burst()))
		if err := l.WaitN(ctx, int(k)); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// progressOf returns the report function of ctx (never nil).
func progressOf(ctx context.Context) func(done, total int64) {
	if f, ok := ctx.Value(progressKey{}).(func(done, total int64)); ok && f != nil {
		return f
	}
	return func(int64, int64) {}
}

// copyAtomically copies src to dst through a new temporary file prefix<random>suffix in dir (dst's
// filesystem, the volume's metadata directory, so that no name next to the image is ever written): a crash
// never leaves a partial copy that looks like a snapshot or a half rolled back volume. A copy that fails or
// is cancelled removes its temporary file; one cancelled after its last block is not made visible either.
func copyAtomically(ctx context.Context, src, dst, dir, prefix, suffix string) (err error) {
	out, err := os.CreateTemp(dir, prefix+"*"+suffix) // O_EXCL: never a file or link already there
	if err != nil {
		return err
	}
	closed := false
	defer func() {
		if !closed {
			out.Close()
		}
		if err != nil {
			os.Remove(out.Name())
		}
	}()
	if err := copySparse(ctx, src, out); err != nil {
		return err
	}
	closed = true
	if err := out.Close(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return os.Rename(out.Name(), dst)
}

// isPartial reports whether file is a temporary copy named prefix<random>suffix by copyAtomically, or
// prefix+suffix less its dot (the fixed name older agents used). The random part is digits, so a file of
// another snapshot never matches: cutting suffix and the last dot-separated digits leaves exactly prefix.
func isPartial(file, prefix, suffix string) bool {
	if file == strings.TrimSuffix(prefix, ".")+suffix {
		return true
	}
	mid, ok := strings.CutPrefix(file, prefix)
	if !ok {
		return false
	}
	mid, ok = strings.CutSuffix(mid, suffix)
	if !ok || mid == "" {
		return false
	}
	for _, c := range mid {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// removePartials removes the temporary copies prefix<random>suffix in dir (see isPartial). A missing
// directory has none.
func removePartials(dir, prefix, suffix string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !isPartial(e.Name(), prefix, suffix) {
			continue
		}
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// removeSnapshotPartials removes what interrupted attempts to create snapshot name left in the metadata
// directory of the image at path: partial copies and a snapshot record not yet renamed into place.
func removeSnapshotPartials(path, name string) error {
	dir := metaDir(path)
	if err := removePartials(dir, name+snapshotPartial, partialSuffix); err != nil {
		return err
	}
	if err := os.Remove(recordPath(path, name) + ".tmp"); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// copySnapshot makes a raw volume's snapshot name: a copy of the image in its metadata directory. What an
// interrupted attempt of the same snapshot left goes first.
func copySnapshot(ctx context.Context, img image, name string) error {
	if err := removeSnapshotPartials(img.path, name); err != nil {
		return err
	}
	return copyAtomically(ctx, img.path, rawSnapPath(img.path, name), metaDir(img.path), name+snapshotPartial, partialSuffix)
}

// copyRollback makes a raw image equal to its snapshot name by copying the snapshot beside it and renaming
// the copy over it: the volume is never half rolled back. A rollback's copy an interrupted attempt left (of
// any snapshot: one volume is rolled back by one operation at a time) goes first.
func copyRollback(ctx context.Context, img image, name string) error {
	dir := metaDir(img.path)
	if err := removePartials(dir, rollbackPrefix, partialSuffix); err != nil {
		return err
	}
	return copyAtomically(ctx, rawSnapPath(img.path, name), img.path, dir, rollbackPrefix, partialSuffix)
}

// progressReader reports the allocated bytes read through it, which is how far volume.CopyAllocated got.
type progressReader struct {
	volume.Reader
	report      func(done, total int64)
	done, total atomic.Int64
	// ctx carries the copy's throttle (see throttled).
	ctx context.Context
}

func (r *progressReader) Allocated(ctx context.Context) ([]volume.Extent, error) {
	exts, err := r.Reader.Allocated(ctx)
	var total int64
	for _, e := range exts {
		total += e.Length
	}
	r.total.Store(total)
	return exts, err
}

func (r *progressReader) ReadAt(p []byte, off int64) (int, error) {
	if err := throttle(r.ctx, int64(len(p))); err != nil {
		return 0, err
	}
	n, err := r.Reader.ReadAt(p, off)
	r.report(r.done.Add(int64(n)), r.total.Load())
	return n, err
}
