package volume

import (
	"context"
	"fmt"
	"io"
)

// CopyBlock is the unit in which CopyAllocated moves data; it matches the backup format's chunk size.
const CopyBlock = 4 << 20

// CopyAllocated copies the allocated extents of r into w, which must read as zeros everywhere else (a new
// volume). Blocks of zeros are skipped so that the destination stays thin. It checks ctx between blocks.
func CopyAllocated(ctx context.Context, w Writer, r Reader) error {
	if w.Size() < r.Size() {
		return fmt.Errorf("copy: destination is %d bytes, source %d", w.Size(), r.Size())
	}
	exts, err := r.Allocated(ctx)
	if err != nil {
		return err
	}
	buf := make([]byte, CopyBlock)
	for _, e := range exts {
		for off := e.Offset; off < e.End(); off += CopyBlock {
			if err := ctx.Err(); err != nil {
				return err
			}
			b := buf[:min(CopyBlock, e.End()-off)]
			if _, err := r.ReadAt(b, off); err != nil {
				return fmt.Errorf("copy: read at %d: %w", off, err)
			}
			if IsZero(b) {
				continue
			}
			if _, err := w.WriteAt(b, off); err != nil {
				return fmt.Errorf("copy: write at %d: %w", off, err)
			}
		}
	}
	return nil
}

// IsZero reports whether b holds only zero bytes.
func IsZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// ClampRead trims a ReadAt buffer to a volume of size bytes. It returns the part of p to fill and the error
// the read must end with when it succeeds: io.EOF when p reached past the end (io.ReaderAt's contract).
// An empty result means nothing is left to read at off.
func ClampRead(p []byte, off, size int64) ([]byte, error) {
	if off >= size {
		return nil, io.EOF
	}
	if rem := size - off; int64(len(p)) > rem {
		return p[:rem], io.EOF
	}
	return p, nil
}

// CheckWrite refuses a write of n bytes at off that does not fit a volume of size bytes: restores must never
// grow a volume by accident.
func CheckWrite(off int64, n int, size int64) error {
	if off < 0 || off+int64(n) > size {
		return fmt.Errorf("write [%d,%d) beyond volume size %d", off, off+int64(n), size)
	}
	return nil
}
