package backup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"sort"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Options configure an Engine. The zero value is usable: 4 MiB chunks, 4 chunks in flight, no throttle,
// no encryption.
type Options struct {
	// Concurrency is the number of chunks in flight (read → hash → compress → upload, or fetch → write).
	// Memory is about 3 × Concurrency × ChunkSize, whatever the volume size. Default 4.
	Concurrency int
	// Limiter bounds bytes/s read from the source (backup) or written to the target (restore). Share one
	// limiter between all engines of a hypervisor to get a per-hypervisor bound (see NewLimiter). nil = none.
	Limiter *rate.Limiter
	// Key is the store's 32-byte encryption key; nil disables encryption. Chunk names are then keyed.
	Key []byte
	// ChunkSize overrides DefaultChunkSize (tests only: the format's chunks are 4 MiB).
	ChunkSize int64
	// CheckpointEvery is how many chunks go between resume points: a backup's journal writes, a restore's
	// flushes (default 64 = 256 MiB).
	CheckpointEvery int
	// CheckpointInterval bounds the time between two resume points while a backup or restore makes
	// progress (default 5 s): on a throttled or slow link a killed agent redoes at most that much.
	CheckpointInterval time.Duration
	// ProgressInterval is the minimum time between two Progress calls within a phase (default 1 s).
	ProgressInterval time.Duration
	// Now is the clock (tests pin it); default time.Now.
	Now func() time.Time
	// Logger gets one line per finished operation; default slog.Default().
	Logger *slog.Logger
	// OnDeduplicated, when set, is told the plaintext length of each chunk a backup found already stored.
	OnDeduplicated func(bytes int64)
	// OnThrottled, when set, is told how long each wait for bandwidth budget took.
	OnThrottled func(time.Duration)
	// LockRefresh is how often a running backup, GC or abandon re-writes its volume lock (lock.go); default
	// DefaultLockRefresh (30 s).
	LockRefresh time.Duration
	// LockStale is the age at which a lock that was not refreshed counts as its holder's death: GC then
	// sweeps past it, and the holder, if it still runs, stops or confirms every chunk again before it commits.
	// Default DefaultLockStale (10 min); at least 4 × LockRefresh.
	LockStale time.Duration
	// LockWait is how long a backup waits for a GC or abandon of its volume to finish before it fails with
	// ErrLocked; default DefaultLockWait (15 min: longer than LockStale, so that the lock of a GC that died
	// goes stale before a backup waiting for it gives up).
	LockWait time.Duration
}

// NewLimiter returns a token bucket for bytesPerSecond, with a burst of one chunk so a whole chunk can
// always be admitted at once.
func NewLimiter(bytesPerSecond float64) *rate.Limiter {
	return rate.NewLimiter(rate.Limit(bytesPerSecond), DefaultChunkSize)
}

// Engine streams volume images into a Store and back. It is safe for concurrent use by several operations,
// and several engines (agents, admin commands) may work on one store at once: backups, GC and abandons of a
// volume coordinate through lock objects in the store (lock.go), not through the control plane.
type Engine struct {
	store Store
	opts  Options
	codec *codec
	// leaseClock times lock leases (lock.go): the monotonic clock, never Options.Now, which tests pin to
	// judge chunk ages. Internal tests replace it to let a lease lapse without waiting.
	leaseClock func() time.Time
}

// New returns an engine on store.
func New(store Store, opts Options) (*Engine, error) {
	if store == nil {
		return nil, errors.New("backup: nil store")
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = 4
	}
	if opts.ChunkSize == 0 {
		opts.ChunkSize = DefaultChunkSize
	}
	if opts.ChunkSize < 4096 || opts.ChunkSize > maxChunkSize {
		return nil, fmt.Errorf("backup: chunk size %d out of range", opts.ChunkSize)
	}
	if opts.CheckpointEvery <= 0 {
		opts.CheckpointEvery = 64
	}
	if opts.CheckpointInterval <= 0 {
		opts.CheckpointInterval = 5 * time.Second
	}
	if opts.ProgressInterval <= 0 {
		opts.ProgressInterval = time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.LockRefresh <= 0 {
		opts.LockRefresh = DefaultLockRefresh
	}
	if opts.LockStale <= 0 {
		opts.LockStale = max(DefaultLockStale, 4*opts.LockRefresh)
	}
	if opts.LockStale < 4*opts.LockRefresh {
		return nil, fmt.Errorf("backup: lock stale timeout %s must be at least 4 × the refresh interval %s",
			opts.LockStale, opts.LockRefresh)
	}
	if opts.LockWait <= 0 {
		opts.LockWait = max(DefaultLockWait, opts.LockStale+opts.LockRefresh)
	}
	if l := opts.Limiter; l != nil && l.Limit() != rate.Inf && l.Burst() <= 0 {
		return nil, errors.New("backup: limiter needs a positive burst")
	}
	c, err := newCodec(opts.Key, maxChunkSize, min(opts.Concurrency, runtime.GOMAXPROCS(0)))
	if err != nil {
		return nil, err
	}
	return &Engine{store: store, opts: opts, codec: c, leaseClock: time.Now}, nil
}

// Store is the store the engine writes to.
func (e *Engine) Store() Store { return e.store }

// Progress is reported during long operations; it is JSON-serialisable so activities can put it in
// Temporal heartbeat details as is.
type Progress struct {
	Phase          string  `json:"phase"` // PhasePrepare, PhaseTransfer, PhaseCommit, PhaseDone
	BytesDone      int64   `json:"bytes_done"`
	BytesTotal     int64   `json:"bytes_total"`
	NextOffset     int64   `json:"next_offset"` // backup: everything below is durably journalled; resume from here
	BytesPerSecond float64 `json:"bytes_per_second"`
}

// Phases reported in Progress.
const (
	PhasePrepare  = "prepare"
	PhaseTransfer = "transfer"
	PhaseVerify   = "verify"
	PhaseCommit   = "commit"
	PhaseDone     = "done"
)

// Checkpoint resumes a backup that crashed: pass the last heartbeat's progress through Checkpoint().
type Checkpoint struct {
	NextOffset int64 `json:"next_offset"`
}

// Checkpoint is the resume point this progress report vouches for.
func (p Progress) Checkpoint() *Checkpoint { return &Checkpoint{NextOffset: p.NextOffset} }

// Offset is where a run given this checkpoint resumes: its NextOffset, or 0 without one.
func (c *Checkpoint) Offset() int64 {
	if c == nil {
		return 0
	}
	return c.NextOffset
}

// progressReporter rate-limits calls to a Progress callback.
type progressReporter struct {
	fn       func(Progress)
	now      func() time.Time
	interval time.Duration
	start    time.Time
	base     int64 // bytes already done when this run started (resume), excluded from the rate
	last     time.Time
}

func newReporter(fn func(Progress), o Options, base int64) *progressReporter {
	n := o.Now()
	return &progressReporter{fn: fn, now: o.Now, interval: o.ProgressInterval, start: n, base: base}
}

func (r *progressReporter) report(p Progress, force bool) {
	if r.fn == nil {
		return
	}
	n := r.now()
	if !force && n.Sub(r.last) < r.interval {
		return
	}
	r.last = n
	if el := n.Sub(r.start).Seconds(); el > 0 {
		p.BytesPerSecond = float64(p.BytesDone-r.base) / el
	}
	r.fn(p)
}

// throttle waits for n bytes of budget, in burst-sized pieces.
func (e *Engine) throttle(ctx context.Context, n int64) error {
	l := e.opts.Limiter
	if l == nil || l.Limit() == rate.Inf {
		return ctx.Err()
	}
	if hook := e.opts.OnThrottled; hook != nil {
		start := time.Now()
		defer func() { hook(time.Since(start)) }()
	}
	for n > 0 {
		k := min(n, int64(l.Burst()))
		if err := l.WaitN(ctx, int(k)); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		n -= k
	}
	return nil
}

// Manifest reads and validates one backup's manifest. A missing backup wraps ErrNotExist. In an encrypted
// store the manifest must carry a valid MAC (see Manifest.MAC), else the error wraps ErrUnauthenticated: every
// reader of manifests (restore, verify, replicate, catalog, scrub, GC) goes through here.
func (e *Engine) Manifest(ctx context.Context, volumeID, backupID string) (*Manifest, error) {
	if err := checkIDs(volumeID, backupID); err != nil {
		return nil, err
	}
	data, err := ReadAll(ctx, e.store, manifestName(volumeID, backupID), maxManifestSize)
	if err != nil {
		if errors.Is(err, ErrNotExist) {
			return nil, fmt.Errorf("backup %s of volume %s not found: %w", backupID, volumeID, err)
		}
		return nil, err
	}
	m, err := DecodeManifest(data)
	if err == nil && e.codec.macKey != nil {
		err = m.authenticate(e.codec.macKey, e.codec.keyID)
	}
	if err != nil {
		return nil, fmt.Errorf("manifest of backup %s of volume %s: %w", backupID, volumeID, err)
	}
	if m.VolumeID != volumeID || m.BackupID != backupID {
		return nil, fmt.Errorf("manifest %s names volume %s backup %s: %w",
			manifestName(volumeID, backupID), m.VolumeID, m.BackupID, ErrInvalidManifest)
	}
	return m, nil
}

// checkKey makes sure this engine can read m's chunks.
func (e *Engine) checkKey(m *Manifest) error {
	if m.Encryption == "" {
		return nil
	}
	if e.codec.aead == nil {
		return fmt.Errorf("backup %s is encrypted and no key is configured: %w", m.BackupID, ErrWrongKey)
	}
	if m.KeyID != e.codec.keyID {
		return fmt.Errorf("backup %s: %w", m.BackupID, ErrWrongKey)
	}
	return nil
}

// List returns the manifests of every backup of every volume in the store, sorted by volume then creation
// time: the catalog a new control plane rebuilds from after a disaster. It returns every manifest it can
// read; err (non-nil) names the unreadable ones, so one damaged manifest never hides the others.
// It lists the whole store (chunks included), so it is meant for recovery, not for hot paths.
func (e *Engine) List(ctx context.Context) ([]*Manifest, error) {
	return e.listManifests(ctx, volumesDir)
}

// ListVolume is List for one volume.
func (e *Engine) ListVolume(ctx context.Context, volumeID string) ([]*Manifest, error) {
	if err := validComponent(volumeID); err != nil {
		return nil, fmt.Errorf("backup: volume_id: %w", err)
	}
	return e.listManifests(ctx, manifestsPrefix(volumeID))
}

func (e *Engine) listManifests(ctx context.Context, prefix string) ([]*Manifest, error) {
	var names []string
	err := e.store.List(ctx, prefix, func(oi ObjectInfo) error {
		if _, _, ok := parseManifestName(oi.Name); ok {
			names = append(names, oi.Name)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var out []*Manifest
	var errs []error
	for _, n := range names {
		vol, b, _ := parseManifestName(n)
		m, err := e.Manifest(ctx, vol, b)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			errs = append(errs, err)
			continue
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].VolumeID != out[j].VolumeID {
			return out[i].VolumeID < out[j].VolumeID
		}
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.Before(out[j].CreatedAt)
		}
		return out[i].BackupID < out[j].BackupID
	})
	return out, errors.Join(errs...)
}

// Delete removes a backup: its manifest (the backup ceases to exist at that moment) and any resume journal.
// Its chunks stay until GC, because other backups may share them. Deleting a missing backup succeeds.
// (A failed backup's compensation is Abandon, which takes its chunks too.)
func (e *Engine) Delete(ctx context.Context, volumeID, backupID string) error {
	if err := checkIDs(volumeID, backupID); err != nil {
		return err
	}
	if err := e.store.Delete(ctx, manifestName(volumeID, backupID)); err != nil {
		return err
	}
	return e.deleteJournal(ctx, volumeID, backupID)
}

// parallel runs fn(i) for i in [0, n) on up to workers goroutines, stopping at the first error (which it
// returns) or when ctx is done.
func parallel(ctx context.Context, workers, n int, fn func(ctx context.Context, worker, i int) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	next := make(chan int)
	var wg sync.WaitGroup
	for w := range min(workers, max(n, 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := fn(ctx, w, i); err != nil {
					cancel(err)
					return
				}
			}
		}()
	}
feed:
	for i := range n {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return err
	}
	return nil
}

// readFull reads len(p) bytes at off, accepting io.EOF only together with a full buffer.
func readFull(r io.ReaderAt, p []byte, off int64) error {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("read source at %d: %w", off, err)
}

// isZero reports whether b is all zero bytes (bytes.Equal against a zero block is vectorised).
func isZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroBlock))
		if !bytes.Equal(b[:n], zeroBlock[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

var zeroBlock = make([]byte, 1<<20)
