package file

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/holdfast/holdfast/activities/volume"
)

// Raw images have no snapshot mechanism of their own. A snapshot of a raw volume is a sparse copy kept in the
// volume's metadata directory. A reflink copy would make that instant, but the filesystems Holdfast met so far
// (ext4, overlayfs) refuse reflinks, and a qcow2 overlay would change which file the domain writes to (and so
// the volume's identity). The copy uses copy_file_range over data extents only, so it costs the allocated
// bytes, not the volume size; a running domain is paused for that time (see Driver.CreateSnapshot).

const (
	seekData = 3 // SEEK_DATA
	seekHole = 4 // SEEK_HOLE
)

// dataExtents lists the data (non-hole) extents of f up to size.
func dataExtents(ctx context.Context, f *os.File, size int64) ([]volume.Extent, error) {
	var out []volume.Extent
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		start, err := f.Seek(off, seekData)
		if err != nil {
			// ENXIO: no data after off.
			break
		}
		end, err := f.Seek(start, seekHole)
		if err != nil {
			return nil, fmt.Errorf("seek hole in %s: %w", f.Name(), err)
		}
		end = min(end, size)
		if start < end {
			out = append(out, volume.Extent{Offset: start, Length: end - start})
		}
		off = end
	}
	return out, nil
}

// copyBlock is how much copySparse moves between two looks at ctx: a cancelled copy stops within one block
// (a fraction of a second even on a slow disk), and the system calls cost nothing next to the data.
const copyBlock = 8 << 20

// copySparse makes out (new and empty, on the destination's filesystem) a copy of src, holes included, and
// syncs it. It checks ctx between blocks and reports its progress (see WithProgress) after each.
func copySparse(ctx context.Context, src string, out *os.File) error {
	in, err := openNoFollow(src)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return err
	}
	if err := out.Truncate(st.Size()); err != nil {
		return err
	}
	exts, err := dataExtents(ctx, in, st.Size())
	if err != nil {
		return err
	}
	var done, total int64
	for _, e := range exts {
		total += e.Length
	}
	report := progressOf(ctx)
	for _, e := range exts {
		for off := e.Offset; off < e.End(); off += copyBlock {
			if err := ctx.Err(); err != nil {
				return err
			}
			n := min(copyBlock, e.End()-off)
			if err := throttle(ctx, n); err != nil {
				return err
			}
			if err := copyRange(in, out, off, n); err != nil {
				return fmt.Errorf("copy %s to %s: %w", src, out.Name(), err)
			}
			done += n
			report(done, total)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return out.Sync()
}

// copyRange copies n bytes at off from in to out, at the same offset.
func copyRange(in, out *os.File, off, n int64) error {
	if _, err := in.Seek(off, io.SeekStart); err != nil {
		return err
	}
	if _, err := out.Seek(off, io.SeekStart); err != nil {
		return err
	}
	// *os.File to *os.File through a LimitedReader: the kernel copies (copy_file_range).
	_, err := io.CopyN(out, in, n)
	return err
}

// rawReader reads a raw snapshot copy (or any raw image that nobody writes to).
type rawReader struct {
	f       *os.File
	size    int64
	sibling func(name string) string // path of a sibling snapshot's copy, for Changed
}

func openRaw(path string, sibling func(string) string) (*rawReader, error) {
	f, err := openNoFollow(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, volume.NotFound(path)
		}
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &rawReader{f: f, size: st.Size(), sibling: sibling}, nil
}

func (r *rawReader) Size() int64  { return r.size }
func (r *rawReader) Close() error { return r.f.Close() }

func (r *rawReader) ReadAt(p []byte, off int64) (int, error) {
	p, short := volume.ClampRead(p, off, r.size)
	if len(p) == 0 {
		return 0, short
	}
	n, err := r.f.ReadAt(p, off)
	if err == nil {
		err = short
	}
	return n, err
}

func (r *rawReader) Allocated(ctx context.Context) ([]volume.Extent, error) {
	// A separate descriptor: Seek moves the shared offset, and ReadAt callers may run concurrently.
	f, err := os.Open(r.f.Name())
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return dataExtents(ctx, f, r.size)
}

// changedBlock is the granularity of raw change detection.
const changedBlock = 64 << 10

// Changed compares this copy with the parent's, block by block, over the data extents of either. Raw files
// carry no change tracking, so this reads both copies locally; it still returns only the changed blocks, so
// the upload stays small.
func (r *rawReader) Changed(ctx context.Context, parent string) ([]volume.Extent, error) {
	if r.sibling == nil {
		return nil, volume.ErrChangesUnavailable
	}
	p, err := openRaw(r.sibling(parent), nil)
	if err != nil {
		return nil, fmt.Errorf("parent snapshot %q: %v: %w", parent, err, volume.ErrChangesUnavailable)
	}
	defer p.Close()
	a, err := r.Allocated(ctx)
	if err != nil {
		return nil, err
	}
	b, err := p.Allocated(ctx)
	if err != nil {
		return nil, err
	}
	size := max(r.size, p.size)
	var out []volume.Extent
	bufA, bufB := make([]byte, changedBlock), make([]byte, changedBlock)
	for _, e := range union(a, b) {
		for off := e.Offset &^ (changedBlock - 1); off < e.End() && off < size; off += changedBlock {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			n := min(changedBlock, size-off)
			x, y := bufA[:n], bufB[:n]
			clear(x)
			clear(y)
			if _, err := r.ReadAt(x, off); err != nil && err != io.EOF {
				return nil, err
			}
			if _, err := p.ReadAt(y, off); err != nil && err != io.EOF {
				return nil, err
			}
			if bytes.Equal(x, y) {
				continue
			}
			if k := len(out); k > 0 && out[k-1].End() == off {
				out[k-1].Length += n
			} else {
				out = append(out, volume.Extent{Offset: off, Length: n})
			}
		}
	}
	return out, nil
}

// union merges two sorted extent lists.
func union(a, b []volume.Extent) []volume.Extent {
	all := append(append([]volume.Extent{}, a...), b...)
	sortExtents(all)
	var out []volume.Extent
	for _, e := range all {
		if k := len(out); k > 0 && e.Offset <= out[k-1].End() {
			out[k-1].Length = max(out[k-1].End(), e.End()) - out[k-1].Offset
			continue
		}
		out = append(out, e)
	}
	return out
}

// rawWriter writes a raw image in place.
type rawWriter struct {
	f    *os.File
	size int64
}

func (w *rawWriter) Size() int64 { return w.size }

func (w *rawWriter) WriteAt(p []byte, off int64) (int, error) {
	if err := volume.CheckWrite(off, len(p), w.size); err != nil {
		return 0, err
	}
	return w.f.WriteAt(p, off)
}

// Flush syncs the image file.
func (w *rawWriter) Flush() error { return w.f.Sync() }

func (w *rawWriter) Close() error {
	if err := w.f.Sync(); err != nil {
		w.f.Close()
		return err
	}
	return w.f.Close()
}
