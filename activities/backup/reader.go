package backup

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
)

// BackupReader reads a backup at any offset, as the volume it restores to, without restoring it: what an
// instant restore serves (an NBD export that a new volume's overlay reads through while it hydrates). Each
// cell of the chunk grid is assembled once from its chunks (fetched, decrypted and verified as a restore
// does) and kept in a bounded LRU cache; reads that walk forwards fetch the next cells ahead of the reader.
// It is read-only and safe for concurrent use; it never writes to the store and takes no lock, so a backup
// deleted while it is open fails the reads of cells not yet cached (DeleteBackup refuses a backup in use by
// an operation above the engine).
type BackupReader struct {
	e      *Engine
	m      *Manifest
	ctx    context.Context
	cancel context.CancelFunc
	opts   ReaderOptions

	mu       sync.Mutex
	cache    map[int64]*list.Element // cell index → element of lru (value *readerCell)
	lru      *list.List              // most recently used first
	loading  map[int64]*cellLoad
	lastCell int64 // the cell the last read ended in, for read-ahead
	ahead    int   // read-ahead loads in flight
	wg       sync.WaitGroup
}

// ReaderOptions bound a BackupReader's memory: (CacheCells + ReadAhead + one per concurrent ReadAt) × the
// backup's chunk size at most.
type ReaderOptions struct {
	// CacheCells is how many assembled cells are kept (default 16: 64 MiB with 4 MiB chunks).
	CacheCells int
	// ReadAhead is how many cells past a forward read are fetched before they are asked for (default 4;
	// negative: none).
	ReadAhead int
}

type readerCell struct {
	index int64
	data  []byte
}

type cellLoad struct {
	done chan struct{}
	data []byte
	err  error
}

// OpenBackup opens backup backupID of volumeID for reading (its manifest read and checked against the
// engine's key). Close releases it.
func (e *Engine) OpenBackup(ctx context.Context, volumeID, backupID string, opts ReaderOptions) (*BackupReader, error) {
	m, err := e.Manifest(ctx, volumeID, backupID)
	if err != nil {
		return nil, err
	}
	if err := e.checkKey(m); err != nil {
		return nil, err
	}
	if m.ChunkSize <= 0 || m.ChunkSize > maxChunkSize {
		return nil, fmt.Errorf("open backup %s: chunk size %d: %w", backupID, m.ChunkSize, ErrCorrupt)
	}
	if opts.CacheCells <= 0 {
		opts.CacheCells = 16
	}
	if opts.ReadAhead == 0 {
		opts.ReadAhead = 4
	}
	opts.ReadAhead = max(opts.ReadAhead, 0)
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	return &BackupReader{e: e, m: m, ctx: rctx, cancel: cancel, opts: opts, cache: map[int64]*list.Element{},
		lru: list.New(), loading: map[int64]*cellLoad{}, lastCell: -2}, nil
}

// Size is the volume's size in bytes.
func (r *BackupReader) Size() int64 { return r.m.Size }

// Close stops the read-ahead and waits for it; reads after Close fail.
func (r *BackupReader) Close() error {
	r.cancel()
	r.wg.Wait()
	return nil
}

// ReadAt reads len(p) bytes of the volume at off. A chunk that cannot be fetched or verified fails the read
// with a *ChunkError; nothing is ever made up.
func (r *BackupReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read backup %s at %d: negative offset", r.m.BackupID, off)
	}
	n := 0
	cs := r.m.ChunkSize
	for n < len(p) && off+int64(n) < r.m.Size {
		pos := off + int64(n)
		k := pos / cs
		data, err := r.cell(k)
		if err != nil {
			return n, err
		}
		n += copy(p[n:], data[pos-k*cs:])
	}
	if n < len(p) {
		return n, io.EOF
	}
	r.readAhead(off/cs, (off+int64(n)-1)/cs)
	return n, nil
}

// cell returns cell k's bytes, from the cache or assembled now (once, whoever asks).
func (r *BackupReader) cell(k int64) ([]byte, error) {
	r.mu.Lock()
	if el, ok := r.cache[k]; ok {
		r.lru.MoveToFront(el)
		r.mu.Unlock()
		return el.Value.(*readerCell).data, nil
	}
	l, ok := r.loading[k]
	if !ok {
		l = r.startLoad(k)
	}
	r.mu.Unlock()
	if !ok {
		r.load(k, l)
	}
	select {
	case <-l.done:
	case <-r.ctx.Done():
		return nil, fmt.Errorf("read backup %s: %w", r.m.BackupID, errReaderClosed)
	}
	return l.data, l.err
}

// startLoad registers the load of cell k; r.mu is held.
func (r *BackupReader) startLoad(k int64) *cellLoad {
	l := &cellLoad{done: make(chan struct{})}
	r.loading[k] = l
	return l
}

// load assembles cell k, caches it and wakes whoever waits for it.
func (r *BackupReader) load(k int64, l *cellLoad) {
	cs := r.m.ChunkSize
	off := k * cs
	b := &cellBufs{parent: make([]byte, cs)}
	data, err := r.e.parentCell(r.ctx, r.m, off, min(cs, r.m.Size-off), b)
	if err != nil {
		var ce *ChunkError
		if !errors.As(err, &ce) && r.ctx.Err() == nil {
			err = &ChunkError{VolumeID: r.m.VolumeID, Offset: off, Err: err}
		}
	}
	r.mu.Lock()
	delete(r.loading, k)
	if err == nil {
		r.cache[k] = r.lru.PushFront(&readerCell{index: k, data: data})
		for r.lru.Len() > r.opts.CacheCells {
			old := r.lru.Remove(r.lru.Back()).(*readerCell)
			delete(r.cache, old.index)
		}
	}
	r.mu.Unlock()
	l.data, l.err = data, err
	close(l.done)
}

// readAhead starts loading the cells after last when the read [first, last] followed the one before it
// (a forward walk: a hydration, a guest booting or copying), at most ReadAhead at a time.
func (r *BackupReader) readAhead(first, last int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	forward := first == r.lastCell || first == r.lastCell+1
	r.lastCell = last
	if !forward || r.ctx.Err() != nil {
		return
	}
	nCells := (r.m.Size + r.m.ChunkSize - 1) / r.m.ChunkSize
	for k := last + 1; k <= last+int64(r.opts.ReadAhead) && k < nCells && r.ahead < r.opts.ReadAhead; k++ {
		if _, ok := r.cache[k]; ok {
			continue
		}
		if _, ok := r.loading[k]; ok {
			continue
		}
		l := r.startLoad(k)
		r.ahead++
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.load(k, l)
			r.mu.Lock()
			r.ahead--
			r.mu.Unlock()
		}()
	}
}

var errReaderClosed = errors.New("backup reader closed")

// Run is a stretch of a backup read through a BackupReader: Zero when the backup records it as zeros (no
// chunk holds it), which a copy may skip.
type Run struct {
	Length int64
	Zero   bool
}

// Runs describes [off, off+length) in order from off, from the manifest alone (nothing is fetched):
// adjacent pieces of one kind merged. Bytes the manifest covers with neither a chunk nor a zero range are
// reported as data, which is always safe (they read as zeros).
func (r *BackupReader) Runs(off, length int64) []Run {
	end := min(off+length, r.m.Size)
	if off < 0 || off >= end {
		return nil
	}
	_, zeros, _ := r.m.piecesIn(off, end-off)
	var out []Run
	add := func(n int64, zero bool) {
		if n <= 0 {
			return
		}
		if k := len(out) - 1; k >= 0 && out[k].Zero == zero {
			out[k].Length += n
			return
		}
		out = append(out, Run{Length: n, Zero: zero})
	}
	pos := off
	for _, z := range zeros {
		add(z.Offset-pos, false)
		add(z.Length, true)
		pos = z.End()
	}
	add(end-pos, false)
	return out
}
