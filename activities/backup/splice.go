package backup

import (
	"bytes"
	"context"
	"errors"
	"sort"
	"sync/atomic"
)

// Finer granularity than the chunk grid, without more objects (format v2).
//
// A cell of the chunk grid (4 MiB) is still what a backup reads, hashes and uploads at once, and a full
// backup stores one chunk per cell, as before. An incremental backup looks inside a cell that changed:
// with the driver's changed extents it reads only those (to the 4 KiB page, runAlign); without them it
// reads the cell and compares it with the parent's in blocks of grain() (64 KiB). Blocks that did not
// change stay slices of the parent's chunks, all-zero blocks become zero ranges, and only the blocks that
// changed are stored, together, as one new chunk for the cell. So one 4 KiB write stores 4 KiB (with
// changed extents) or 64 KiB (compared), compressed, not 4 MiB, and an incremental never makes more objects
// than cells it touched: one PUT per changed cell, as before.
//
// Why not smaller chunks (packs of 1 MiB blocks, restic's way, or content-defined chunking): a block device
// does not shift its contents, so fixed blocks find every unchanged byte a CDC would, and slicing keeps GC,
// scrub, replication and recover exactly as they were (they deal in whole chunk objects named by hash;
// a slice only names which bytes of one the volume uses). The price is space held by slices: a chunk stays
// whole while any backup uses any of it. maxCellChunks bounds how many chunks one cell may draw on (a
// restore fetches each once); past it the cell is stored whole again, which also ends the slices' hold.
const maxCellChunks = 8

// grain is the block size within a cell at which a cell read whole is compared with its parent's: 1/64 of
// the chunk grid, at least 4 KiB. Changed extents from a driver are taken at runAlign instead: they were
// found without reading, so reading them more finely costs nothing.
func (e *Engine) grain() int64 { return max(e.opts.ChunkSize/64, runAlign) }

// runAlign is the block size changed extents are widened to: a page, which every driver and target can
// read and write at.
const runAlign = 4096

// cellBufs are one backup worker's buffers, allocated on first use: the cell read from the source, the
// parent's bytes of the cell, the changed blocks to store, and an object being fetched.
type cellBufs struct {
	plain, parent, pack, obj, open []byte
	seal                           sealBufs
}

func (b *cellBufs) cell(cs int64) []byte {
	if b.plain == nil {
		b.plain = make([]byte, cs)
	}
	return b.plain
}

// diffGate stops comparing cells with the parent when it rarely pays: a backup in which nearly every
// cell changed throughout (a volume rewritten) would otherwise fetch its parent's whole content as well.
type diffGate struct{ tried, useful atomic.Int64 }

func (g *diffGate) open() bool {
	t, u := g.tried.Load(), g.useful.Load()
	return t < 16 || 4*u >= t
}

// blockKind is what one block of a cell is in the new backup.
type blockKind byte

const (
	blockParent blockKind = iota // unchanged: the parent's pieces
	blockZero                    // changed to zeros
	blockData                    // changed: stored in the cell's new chunk
)

// changedRuns clips the extents (from mergeExtents: sorted, non-empty, ends ascending) to the cell
// [off, off+length), widens them to whole blocks of grain (counted from the cell's start) and merges them.
func changedRuns(merged []Extent, off, length, grain int64) []Extent {
	var runs []Extent
	end := off + length
	i := sort.Search(len(merged), func(i int) bool { return merged[i].End() > off })
	for ; i < len(merged) && merged[i].Offset < end; i++ {
		from := off + (max(merged[i].Offset, off)-off)/grain*grain
		to := min(off+(min(merged[i].End(), end)-off+grain-1)/grain*grain, end)
		if n := len(runs); n > 0 && runs[n-1].End() >= from {
			runs[n-1].Length = max(runs[n-1].End(), to) - runs[n-1].Offset
			continue
		}
		runs = append(runs, Extent{Offset: from, Length: to - from})
	}
	return runs
}

// worthSplicing says whether a cell of length with changed bytes changed is spliced, not stored whole: when
// at most half of it changed.
func worthSplicing(changed, length int64) bool { return changed <= length/2 }

func extentsLength(es []Extent) int64 {
	var n int64
	for _, e := range es {
		n += e.Length
	}
	return n
}

// spliceRuns backs up a cell of which only runs (whole blocks of runAlign, from changedRuns) may differ from
// the parent: it reads just those, and splices them into the parent's pieces. ok is false when the cell is better read
// and stored whole (the parent does not cover it, or it would draw on too many chunks).
func (e *Engine) spliceRuns(ctx context.Context, req BackupRequest, plan backupPlan, off, length int64,
	runs []Extent, b *cellBufs) (chunkResult, bool, error) {
	buf := b.cell(e.opts.ChunkSize)[:length]
	prefetched, err := plan.prefetch.take(ctx, off, runs, buf)
	if err != nil {
		return chunkResult{}, false, err
	}
	if !prefetched {
		if err := e.throttle(ctx, extentsLength(runs)); err != nil {
			return chunkResult{}, false, err
		}
	}
	g := int64(runAlign)
	kinds := make([]blockKind, (length+g-1)/g)
	for _, r := range runs {
		if !prefetched {
			if err := readFull(req.Source, buf[r.Offset-off:r.End()-off], r.Offset); err != nil {
				return chunkResult{}, false, err
			}
		}
		for k := (r.Offset - off) / g; k*g < r.End()-off; k++ {
			kinds[k] = blockData
			if isZero(buf[k*g : min(k*g+g, length)]) {
				kinds[k] = blockZero
			}
		}
	}
	return e.splice(ctx, req, plan, off, buf, kinds, g, b)
}

// spliceDiff compares a cell read whole (buf) with the parent's content of it, block by block, and splices
// the blocks that differ into the parent's pieces. ok is false when the cell is better stored whole: more
// than half of it changed, the parent's chunks cannot be read, it would draw on too many chunks, or
// comparing has stopped paying in this backup (diffGate).
func (e *Engine) spliceDiff(ctx context.Context, req BackupRequest, plan backupPlan, off int64, buf []byte,
	b *cellBufs) (chunkResult, bool, error) {
	if !plan.diffs.open() {
		return chunkResult{}, false, nil
	}
	plan.diffs.tried.Add(1)
	length := int64(len(buf))
	old, err := e.parentCell(ctx, plan.parent, off, length, b)
	if err != nil {
		if ctx.Err() != nil {
			return chunkResult{}, false, ctx.Err()
		}
		e.opts.Logger.Warn("backup: cannot read the parent's cell; storing it whole", "volume_id", req.VolumeID,
			"parent", plan.parent.BackupID, "offset", off, "err", err)
		return chunkResult{}, false, nil
	}
	g := e.grain()
	kinds := make([]blockKind, (length+g-1)/g)
	var changed int64
	for k := range kinds {
		from, to := int64(k)*g, min(int64(k)*g+g, length)
		switch {
		case bytes.Equal(buf[from:to], old[from:to]):
			kinds[k] = blockParent
		case isZero(buf[from:to]):
			kinds[k] = blockZero
		default:
			kinds[k] = blockData
			changed += to - from
		}
	}
	if !worthSplicing(changed, length) {
		return chunkResult{}, false, nil
	}
	plan.diffs.useful.Add(1)
	return e.splice(ctx, req, plan, off, buf, kinds, g, b)
}

// parentCell reads the parent's content of the cell [off, off+length) from its chunks (each fetched once,
// verified) into b.parent.
func (e *Engine) parentCell(ctx context.Context, parent *Manifest, off, length int64, b *cellBufs) ([]byte, error) {
	if b.parent == nil {
		b.parent = make([]byte, e.opts.ChunkSize)
	}
	out := b.parent[:length]
	refs, zeros, ok := parent.piecesIn(off, length)
	if !ok {
		return nil, errNotCovered
	}
	for _, z := range zeros {
		clear(out[z.Offset-off : z.End()-off])
	}
	fetched := ""
	for _, r := range refs {
		if r.ID != fetched {
			obj, err := readSized(ctx, e.store, chunkName(parent.VolumeID, r.ID), r.StoredSize, &b.obj)
			if err != nil {
				return nil, err
			}
			if b.open, err = e.codec.open(parent.Hash, r.ID, obj, r.PlainLength(), b.open); err != nil {
				return nil, err
			}
			fetched = r.ID
		}
		copy(out[r.Offset-off:r.End()-off], b.open[r.Skip:r.Skip+r.Length])
	}
	return out, nil
}

// splice makes the cell at off from kinds (one per block of g bytes of buf): runs of blockParent are the parent's
// pieces, runs of blockZero zero ranges, and the blockData blocks, in order, one new chunk that the data
// runs are slices of. ok is false when the parent does not cover the cell or the result would draw on more
// than maxCellChunks chunks.
func (e *Engine) splice(ctx context.Context, req BackupRequest, plan backupPlan, off int64, buf []byte,
	kinds []blockKind, g int64, b *cellBufs) (chunkResult, bool, error) {
	length := int64(len(buf))
	res := chunkResult{off: off, length: length}
	pack := b.pack[:0]          // grows to what changed: a cell with one small change holds little
	chunks := map[string]bool{} // the parent's chunks the cell draws on
	data := 0                   // slices of the new chunk
	for k := 0; k < len(kinds); {
		j := k
		for j < len(kinds) && kinds[j] == kinds[k] {
			j++
		}
		from, to := off+int64(k)*g, off+min(int64(j)*g, length)
		switch kinds[k] {
		case blockParent:
			refs, zeros, ok := plan.parent.piecesIn(from, to-from)
			if !ok {
				return res, false, nil
			}
			for _, r := range refs {
				chunks[r.ID] = true
			}
			res.refs = append(res.refs, refs...)
			for _, z := range zeros {
				res.zeros = mergeZero(res.zeros, z)
			}
		case blockZero:
			res.zeros = mergeZero(res.zeros, Extent{Offset: from, Length: to - from})
		case blockData:
			data++
			res.refs = append(res.refs, ChunkRef{Offset: from, Length: to - from, Skip: int64(len(pack))})
			pack = append(pack, buf[from-off:to-off]...)
		}
		k = j
	}
	b.pack = pack
	if n := len(chunks) + min(data, 1); n > maxCellChunks {
		return res, false, nil
	}
	if data == 0 {
		return res, true, nil
	}
	id, err := e.codec.id(e.codec.hashName(), pack)
	if err != nil {
		return res, false, err
	}
	size, err := e.storeChunk(ctx, plan.batch, req.VolumeID, plan.known, id, pack, &b.seal)
	if err != nil {
		return res, false, err
	}
	for i := range res.refs {
		if r := &res.refs[i]; r.ID == "" {
			r.ID, r.StoredSize, r.ChunkLength = id, size, int64(len(pack))
			*r = r.trimmed()
		}
	}
	return res, true, nil
}

// errNotCovered is a parent manifest that does not cover a cell of the backup (the volume grew).
var errNotCovered = errors.New("the parent does not cover this range")
