package file

import (
	"bytes"
	"compress/flate"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/holdfast/holdfast/activities/volume"
)

// A read-only view of qcow2 internal snapshots, read straight from the image file.
//
// Why not qemu-img/qemu-nbd: an internal snapshot's L1 table is a private copy and every cluster it maps has a
// refcount above one, so QEMU copies on write and never changes those bytes in place, even while a running
// domain writes to the image. Reading the mapping and the clusters directly is therefore safe, needs no
// helper process or image lock, runs at file speed, and gives exact allocation and (by comparing two
// snapshots' mappings) changed extents for free.

const (
	qcowMagic        = 0x514649fb
	l1OffsetMask     = 0x00fffffffffffe00
	l2OffsetMask     = 0x00fffffffffffe00
	flagCopied       = uint64(1) << 63
	flagCompressed   = uint64(1) << 62
	flagZero         = uint64(1)
	incompatDataFile = uint64(1) << 2
	incompatExtL2    = uint64(1) << 4
)

type qcowHeader struct {
	version         uint32
	backingOffset   uint64
	clusterBits     uint32
	size            uint64
	cryptMethod     uint32
	l1Size          uint32
	l1Offset        uint64
	nbSnapshots     uint32
	snapshotsOffset uint64
	incompatible    uint64
	compressionType uint8
}

type qcowSnapshot struct {
	name     string
	l1Offset uint64
	l1Size   uint32
	created  time.Time
	diskSize uint64 // 0 when the entry predates the extra data field
}

// errNotQCOW2: a file recorded as qcow2 is not one. Never a reason to read it as raw instead: its format is
// what was recorded, and a mismatch needs an operator.
var errNotQCOW2 = fmt.Errorf("recorded as qcow2 but not a qcow2 image: %w", volume.ErrUnsupported)

// readHeader reads and validates the header of an image recorded as qcow2.
func readHeader(f io.ReaderAt) (qcowHeader, error) {
	var b [105]byte
	if n, err := f.ReadAt(b[:], 0); n < 72 {
		if err == nil || errors.Is(err, io.EOF) {
			return qcowHeader{}, errNotQCOW2 // too short to be one
		}
		return qcowHeader{}, fmt.Errorf("read qcow2 header: %w", err)
	}
	be := binary.BigEndian
	if be.Uint32(b[0:]) != qcowMagic {
		return qcowHeader{}, errNotQCOW2
	}
	h := qcowHeader{
		version:         be.Uint32(b[4:]),
		backingOffset:   be.Uint64(b[8:]),
		clusterBits:     be.Uint32(b[20:]),
		size:            be.Uint64(b[24:]),
		cryptMethod:     be.Uint32(b[32:]),
		l1Size:          be.Uint32(b[36:]),
		l1Offset:        be.Uint64(b[40:]),
		nbSnapshots:     be.Uint32(b[60:]),
		snapshotsOffset: be.Uint64(b[64:]),
	}
	if h.version >= 3 {
		h.incompatible = be.Uint64(b[72:])
		if be.Uint32(b[100:]) > 104 {
			h.compressionType = b[104]
		}
	}
	if h.version < 2 {
		return qcowHeader{}, fmt.Errorf("qcow2 version %d: %w", h.version, volume.ErrUnsupported)
	}
	if h.clusterBits < 9 || h.clusterBits > 21 {
		return qcowHeader{}, fmt.Errorf("qcow2: bad cluster_bits %d: %w", h.clusterBits, volume.ErrUnsupported)
	}
	return h, nil
}

// standalone refuses an image whose data lives partly in another file: a backing file or an external data
// file is a host path written in the image, and opening it (as QEMU would) reads or writes a file that is
// not the volume. The path itself is not repeated in the error.
func (h qcowHeader) standalone() error {
	switch {
	case h.backingOffset != 0:
		return fmt.Errorf("qcow2 image with a backing file: %w", volume.ErrUnsupported)
	case h.incompatible&incompatDataFile != 0:
		return fmt.Errorf("qcow2 image with an external data file: %w", volume.ErrUnsupported)
	}
	return nil
}

// supported says why this reader cannot serve an image, or nil.
func (h qcowHeader) supported() error {
	if err := h.standalone(); err != nil {
		return err
	}
	switch {
	case h.cryptMethod != 0:
		return fmt.Errorf("encrypted qcow2: %w", volume.ErrUnsupported)
	case h.incompatible&incompatExtL2 != 0:
		return fmt.Errorf("qcow2 with extended L2 entries: %w", volume.ErrUnsupported)
	}
	return nil
}

func readSnapshots(f io.ReaderAt, h qcowHeader) ([]qcowSnapshot, error) {
	be := binary.BigEndian
	off := int64(h.snapshotsOffset)
	out := make([]qcowSnapshot, 0, h.nbSnapshots)
	for i := uint32(0); i < h.nbSnapshots; i++ {
		var fix [40]byte
		if _, err := f.ReadAt(fix[:], off); err != nil {
			return nil, fmt.Errorf("qcow2 snapshot table: %w", err)
		}
		idLen, nameLen := int64(be.Uint16(fix[12:])), int64(be.Uint16(fix[14:]))
		extraLen := int64(be.Uint32(fix[36:]))
		rest := make([]byte, extraLen+idLen+nameLen)
		if _, err := f.ReadAt(rest, off+40); err != nil {
			return nil, fmt.Errorf("qcow2 snapshot table: %w", err)
		}
		s := qcowSnapshot{
			l1Offset: be.Uint64(fix[0:]),
			l1Size:   be.Uint32(fix[8:]),
			created:  time.Unix(int64(be.Uint32(fix[16:])), int64(be.Uint32(fix[20:]))).UTC(),
			name:     string(rest[extraLen+idLen:]),
		}
		if extraLen >= 16 {
			s.diskSize = be.Uint64(rest[8:])
		}
		out = append(out, s)
		entry := 40 + extraLen + idLen + nameLen
		off += (entry + 7) &^ 7
	}
	return out, nil
}

// qcowView maps guest offsets of one L1 table (a snapshot's) to host clusters.
type qcowView struct {
	f           *os.File
	h           qcowHeader
	l1          []uint64
	size        int64
	clusterSize int64
	l2Entries   int64

	mu      sync.Mutex
	l2Cache map[uint64][]uint64
}

func openView(f *os.File, h qcowHeader, l1Offset uint64, l1Size uint32, size int64) (*qcowView, error) {
	raw := make([]byte, int(l1Size)*8)
	if _, err := f.ReadAt(raw, int64(l1Offset)); err != nil {
		return nil, fmt.Errorf("qcow2 L1 table: %w", err)
	}
	l1 := make([]uint64, l1Size)
	for i := range l1 {
		l1[i] = binary.BigEndian.Uint64(raw[i*8:])
	}
	cs := int64(1) << h.clusterBits
	return &qcowView{f: f, h: h, l1: l1, size: size, clusterSize: cs, l2Entries: cs / 8,
		l2Cache: map[uint64][]uint64{}}, nil
}

func (v *qcowView) l2(l1Index int64) ([]uint64, error) {
	if l1Index >= int64(len(v.l1)) {
		return nil, nil
	}
	off := v.l1[l1Index] & l1OffsetMask
	if off == 0 {
		return nil, nil
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if t, ok := v.l2Cache[off]; ok {
		return t, nil
	}
	raw := make([]byte, v.clusterSize)
	if _, err := v.f.ReadAt(raw, int64(off)); err != nil {
		return nil, fmt.Errorf("qcow2 L2 table at %d: %w", off, err)
	}
	t := make([]uint64, v.l2Entries)
	for i := range t {
		t[i] = binary.BigEndian.Uint64(raw[i*8:])
	}
	v.l2Cache[off] = t
	return t, nil
}

// entry returns the L2 entry of the cluster holding guest offset off (0: unallocated).
func (v *qcowView) entry(off int64) (uint64, error) {
	c := off / v.clusterSize
	t, err := v.l2(c / v.l2Entries)
	if t == nil || err != nil {
		return 0, err
	}
	return t[c%v.l2Entries], nil
}

func (v *qcowView) Size() int64 { return v.size }

func (v *qcowView) ReadAt(p []byte, off int64) (int, error) {
	p, short := volume.ClampRead(p, off, v.size)
	if len(p) == 0 {
		return 0, short
	}
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		inCluster := pos % v.clusterSize
		e, err := v.entry(pos)
		if err != nil {
			return n, err
		}
		want := min(int64(len(p)-n), v.clusterSize-inCluster)
		switch {
		case e&flagCompressed != 0:
			if err := v.readCompressed(p[n:n+int(want)], e, inCluster); err != nil {
				return n, err
			}
		case e&flagZero != 0 || e&l2OffsetMask == 0:
			clear(p[n : n+int(want)])
		default:
			// Extend over following clusters that are contiguous on the host: one pread instead of many.
			host := int64(e&l2OffsetMask) + inCluster
			for int64(len(p)-n) > want {
				next, err := v.entry(pos + want)
				if err != nil || next&(flagCompressed|flagZero) != 0 || int64(next&l2OffsetMask) != host+want {
					break
				}
				want = min(int64(len(p)-n), want+v.clusterSize)
			}
			if _, err := v.f.ReadAt(p[n:n+int(want)], host); err != nil && err != io.EOF {
				return n, fmt.Errorf("qcow2 data at %d: %w", host, err)
			}
		}
		n += int(want)
	}
	return n, short
}

func (v *qcowView) readCompressed(p []byte, e uint64, inCluster int64) error {
	if v.h.compressionType != 0 {
		return fmt.Errorf("qcow2 compression type %d: %w", v.h.compressionType, volume.ErrUnsupported)
	}
	x := 62 - (v.h.clusterBits - 8)
	host := int64(e & (uint64(1)<<x - 1))
	sectors := int64((e>>x)&(uint64(1)<<(v.h.clusterBits-8)-1)) + 1
	comp := make([]byte, sectors*512-host%512)
	if _, err := v.f.ReadAt(comp, host); err != nil && err != io.EOF {
		return fmt.Errorf("qcow2 compressed cluster at %d: %w", host, err)
	}
	cluster := make([]byte, v.clusterSize)
	zr := flate.NewReader(bytes.NewReader(comp))
	defer zr.Close()
	if _, err := io.ReadFull(zr, cluster); err != nil {
		return fmt.Errorf("qcow2 compressed cluster at %d: %w", host, err)
	}
	copy(p, cluster[inCluster:])
	return nil
}

// extents walks the view's clusters and returns, merged, those for which keep(entry, otherEntry) holds.
// other may be nil. Whole L2 tables shared by both views are skipped without being read.
func (v *qcowView) extents(ctx context.Context, other *qcowView, keep func(a, b uint64) bool) ([]volume.Extent, error) {
	size := v.size
	if other != nil {
		size = max(size, other.size)
	}
	span := v.clusterSize * v.l2Entries
	var out []volume.Extent
	add := func(off int64) {
		length := min(v.clusterSize, size-off)
		if n := len(out); n > 0 && out[n-1].End() == off {
			out[n-1].Length += length
			return
		}
		out = append(out, volume.Extent{Offset: off, Length: length})
	}
	for l1i := int64(0); l1i*span < size; l1i++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if other != nil && l1i < int64(len(v.l1)) && l1i < int64(len(other.l1)) &&
			v.l1[l1i]&^flagCopied == other.l1[l1i]&^flagCopied {
			continue // the same L2 table: the same clusters, nothing changed in this span
		}
		a, err := v.l2(l1i)
		if err != nil {
			return nil, err
		}
		var b []uint64
		if other != nil {
			if b, err = other.l2(l1i); err != nil {
				return nil, err
			}
		}
		for i := int64(0); i < v.l2Entries; i++ {
			off := l1i*span + i*v.clusterSize
			if off >= size {
				break
			}
			var ea, eb uint64
			if a != nil {
				ea = a[i]
			}
			if b != nil {
				eb = b[i]
			}
			if keep(ea&^flagCopied, eb&^flagCopied) {
				add(off)
			}
		}
	}
	return out, nil
}

func allocatedEntry(e, _ uint64) bool {
	return e&flagCompressed != 0 || (e&flagZero == 0 && e&l2OffsetMask != 0)
}

func changedEntry(a, b uint64) bool {
	// Two clusters both reading as zeros are equal whatever their encoding.
	if !allocatedEntry(a, 0) && !allocatedEntry(b, 0) {
		return false
	}
	return a != b
}

// qcowSnapshotReader is a volume.Reader over one internal snapshot.
type qcowSnapshotReader struct {
	*qcowView
	snaps []qcowSnapshot
}

func openQCOWSnapshot(path, name string) (*qcowSnapshotReader, error) {
	f, err := openNoFollow(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, volume.NotFound(path)
		}
		return nil, err
	}
	r, err := newQCOWSnapshotReader(f, name)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return r, nil
}

func newQCOWSnapshotReader(f *os.File, name string) (*qcowSnapshotReader, error) {
	h, err := readHeader(f)
	if err != nil {
		return nil, err
	}
	if err := h.supported(); err != nil {
		return nil, err
	}
	snaps, err := readSnapshots(f, h)
	if err != nil {
		return nil, err
	}
	s, ok := findSnap(snaps, name)
	if !ok {
		return nil, volume.NotFound("snapshot " + name)
	}
	v, err := openView(f, h, s.l1Offset, s.l1Size, snapSize(s, h))
	if err != nil {
		return nil, err
	}
	return &qcowSnapshotReader{qcowView: v, snaps: snaps}, nil
}

func findSnap(snaps []qcowSnapshot, name string) (qcowSnapshot, bool) {
	for _, s := range snaps {
		if s.name == name {
			return s, true
		}
	}
	return qcowSnapshot{}, false
}

func snapSize(s qcowSnapshot, h qcowHeader) int64 {
	if s.diskSize != 0 {
		return int64(s.diskSize)
	}
	return int64(h.size)
}

func (r *qcowSnapshotReader) Close() error { return r.f.Close() }

func (r *qcowSnapshotReader) Allocated(ctx context.Context) ([]volume.Extent, error) {
	return r.extents(ctx, nil, allocatedEntry)
}

func (r *qcowSnapshotReader) Changed(ctx context.Context, parent string) ([]volume.Extent, error) {
	p, ok := findSnap(r.snaps, parent)
	if !ok {
		return nil, fmt.Errorf("parent snapshot %q: %w", parent, volume.ErrChangesUnavailable)
	}
	pv, err := openView(r.f, r.h, p.l1Offset, p.l1Size, snapSize(p, r.h))
	if err != nil {
		return nil, err
	}
	return r.extents(ctx, pv, changedEntry)
}

// sortExtents orders extents by offset.
func sortExtents(e []volume.Extent) {
	sort.Slice(e, func(i, j int) bool { return e[i].Offset < e[j].Offset })
}

// sortSnaps orders snapshots oldest first (the qcow2 table is in creation order already, but deletions and
// equal timestamps make the order worth fixing explicitly).
func sortSnaps(s []volume.Snapshot) {
	sort.SliceStable(s, func(i, j int) bool { return s[i].CreatedAt.Before(s[j].CreatedAt) })
}
