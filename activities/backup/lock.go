package backup

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"
)

// Volume locks: why GC cannot lose a chunk a backup needs.
//
// A chunk is garbage only when no manifest references it and no backup is about to write a manifest that
// will. The first half is a mark; the second cannot be read from the store's contents at all. Grace periods
// (kopia's safety margins: nothing younger than N hours is deleted) only approximate it: they assume no backup
// outlives the grace, and that a chunk's age tells when it was last needed — but a backup that deduplicates
// against an old unreferenced chunk needs it again without touching it (S3 has no cheap "touch"), and a
// crashed backup may wait longer than any grace to be resumed. So, as restic does with its lock files, the
// engine keeps per-volume lock objects in the store itself, where every agent and every admin command sees
// them, and GC never sweeps a volume while a backup of it holds one:
//
//	volumes/{volume_id}/locks/shared/{backup_id}/{holder}.json   a running backup, or a replication into this store
//	volumes/{volume_id}/locks/exclusive/{holder}.json            a GC or an Abandon
//
// The protocol (each side creates its lock, then checks the other side; since the stores list every
// completed Put — storetest checks it — two that start at once each see the other, and neither misses both):
//   - Shared (Backup, Replicate): put the lock, list the locks; while a fresh exclusive lock exists, wait
//     (polling, bounded by Options.LockWait, honouring ctx), then fail with ErrLocked, retryably. Locks of
//     earlier attempts of the same backup (same backup_id, another holder) are taken over: removed.
//   - Exclusive (GC, Abandon): put the lock, list the locks; any other fresh lock means a backup (or another
//     GC) is running: remove ours, touch nothing else, and fail with ErrLocked. Otherwise stale locks are
//     removed, and Abandon removes those of the backup it abandons (its in-progress marker). GC never waits,
//     so a backup waiting for a GC always gets through once that GC is done.
//   - Every holder re-puts its lock every Options.LockRefresh. A lock is stale once its age reaches
//     Options.LockStale, measured in the store's own clock: the other lock's ModTime against that of the
//     checker's own just-written lock, so no two hosts' clocks are ever compared.
//   - A holder trusts its lock (holds the lease) only while its last successful refresh began less than
//     LockStale/2 ago, leaving LockStale/2 for any request sent under the lease to land. A holder whose lock
//     object disappeared (taken over, abandoned, or removed as stale) stops with ErrLockLost at its next
//     refresh (within LockRefresh) or at its commit, whichever comes first.
//   - A backup commits under the lease: it refreshes, waits out any exclusive lock, confirms that every chunk
//     its manifest lists is stored (one listing; a missing one is read from the source and uploaded again),
//     and writes the manifest only if the lease still holds, else it starts the commit over. So even a backup
//     that stalled past LockStale while a GC swept — the one case the lock alone cannot cover — never becomes
//     available with a chunk missing. GC checks its lease before every delete and stops when it lapsed.
//
// What is left is timing, as with any lease: a request sent under a valid lease that lands more than
// LockStale/2 later (with the defaults, a PUT or DELETE five minutes in flight).

// ErrLocked is wrapped by the failure of an operation that could not get its volume's lock: a backup that
// waited Options.LockWait for a GC or abandon to finish, or a GC or abandon that found a backup (or another
// GC) running. It is temporary: a retry later succeeds.
var ErrLocked = errors.New("volume is locked")

// ErrLockLost is wrapped by the failure of an operation whose lock was removed under it (an abandon of its
// backup, a newer attempt of it, or another operation that found it stale) or that could not refresh it in
// time. Retrying is safe: a backup resumes from its journal and confirms every chunk again.
var ErrLockLost = errors.New("lost its volume lock")

// Lock timing defaults; see Options.
const (
	DefaultLockRefresh = 30 * time.Second
	DefaultLockStale   = 10 * time.Minute
	DefaultLockWait    = 15 * time.Minute // longer than DefaultLockStale: a dead GC's lock never fails a backup
)

// lockRecord is what a lock object says, for an operator wondering who holds a volume. The engine decides
// by the object's name and ModTime only, never by what is written in it.
type lockRecord struct {
	Operation string    `json:"operation"`
	VolumeID  string    `json:"volume_id"`
	BackupID  string    `json:"backup_id,omitempty"`
	Holder    string    `json:"holder"`
	Host      string    `json:"host"`
	PID       int       `json:"pid"`
	Since     time.Time `json:"since"`
}

// lockObject is one lock found in the store.
type lockObject struct {
	ObjectInfo
	exclusive bool
	backupID  string // shared locks: the backup holding it ("" for an object of unknown shape: a lock all the same)
}

// parseLock reads a lock's kind from its name. Anything else under locks/ counts as a shared lock: an
// object there that the engine cannot read blocks GC while it is fresh, which errs on the safe side.
func parseLock(volumeID, name string) lockObject {
	rest := strings.TrimPrefix(name, locksPrefix(volumeID))
	parts := strings.Split(rest, "/")
	if len(parts) == 2 && parts[0] == "exclusive" {
		return lockObject{exclusive: true}
	}
	if len(parts) == 3 && parts[0] == "shared" {
		return lockObject{backupID: parts[1]}
	}
	return lockObject{}
}

// volumeLock is one held lock: its object, its refresher and its lease.
type volumeLock struct {
	e        *Engine
	volumeID string
	name     string
	body     []byte

	// ctx is the operation's context, cancelled with ErrLockLost when the lock object disappears: work
	// under the lock runs on it, so a holder whose lock was broken stops within one request.
	ctx    context.Context
	cancel context.CancelCauseFunc

	mu        sync.Mutex
	leaseFrom time.Time // when the last successful put of the lock began (monotonic clock)

	stop chan struct{}
	done chan struct{}
}

var hostname = func() string {
	h, err := os.Hostname()
	if err != nil {
		return "unknown"
	}
	return h
}()

func (e *Engine) newLock(ctx context.Context, volumeID, backupID, op string, exclusive bool) (*volumeLock, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	holder := hex.EncodeToString(b[:])
	name := locksPrefix(volumeID) + "exclusive/" + holder + ".json"
	if !exclusive {
		name = sharedLocksPrefix(volumeID, backupID) + holder + ".json"
	}
	body, err := json.Marshal(lockRecord{Operation: op, VolumeID: volumeID, BackupID: backupID, Holder: holder,
		Host: hostname, PID: os.Getpid(), Since: e.opts.Now().UTC()})
	if err != nil {
		return nil, err
	}
	l := &volumeLock{e: e, volumeID: volumeID, name: name, body: body}
	l.ctx, l.cancel = context.WithCancelCause(ctx)
	return l, nil
}

// put writes the lock object; a success renews the lease.
func (l *volumeLock) put(ctx context.Context) error {
	start := l.e.leaseClock()
	if err := PutBytes(ctx, l.e.store, l.name, l.body); err != nil {
		return fmt.Errorf("lock volume %s: %w", l.volumeID, err)
	}
	l.mu.Lock()
	l.leaseFrom = start
	l.mu.Unlock()
	return nil
}

// refresh re-puts the lock if it is still there. A lock that disappeared was broken by someone who had the
// right to: the holder must stop, so refresh cancels l.ctx with ErrLockLost and returns it.
func (l *volumeLock) refresh(ctx context.Context) error {
	if _, err := l.e.store.Stat(ctx, l.name); err != nil {
		if errors.Is(err, ErrNotExist) {
			return l.lose("its lock object was removed (taken over, abandoned, or found stale)")
		}
		return fmt.Errorf("refresh lock of volume %s: %w", l.volumeID, err)
	}
	return l.put(ctx)
}

func (l *volumeLock) lose(why string) error {
	err := fmt.Errorf("%w: %s", ErrLockLost, why)
	l.cancel(err)
	return err
}

// held reports whether the lease holds: the lock was not lost and was last written recently enough that no
// other operation can have judged it stale.
func (l *volumeLock) held() bool {
	l.mu.Lock()
	from := l.leaseFrom
	l.mu.Unlock()
	return l.ctx.Err() == nil && l.e.leaseClock().Sub(from) < l.e.opts.LockStale/2
}

// checkHeld fails with ErrLockLost unless the lease holds.
func (l *volumeLock) checkHeld() error {
	if l.held() {
		return nil
	}
	if cause := context.Cause(l.ctx); cause != nil {
		return cause
	}
	return fmt.Errorf("%w: not refreshed for %s", ErrLockLost, l.e.opts.LockStale/2)
}

// startRefresh keeps the lock fresh until release. A failed refresh is retried at the next tick; the lease
// lapses by itself if none succeeds in time.
func (l *volumeLock) startRefresh() {
	l.stop, l.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(l.done)
		t := time.NewTicker(l.e.opts.LockRefresh)
		defer t.Stop()
		for {
			select {
			case <-l.stop:
				return
			case <-l.ctx.Done():
				return
			case <-t.C:
				if err := l.refresh(l.ctx); err != nil && l.ctx.Err() == nil {
					l.e.opts.Logger.Warn("backup: lock refresh failed", "volume_id", l.volumeID, "lock", l.name, "err", err)
				}
			}
		}
	}()
}

// release stops refreshing and removes the lock, even when the operation's context is already done.
func (l *volumeLock) release() {
	if l.stop != nil {
		close(l.stop)
		<-l.done
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(l.ctx), 10*time.Second)
	defer cancel()
	if err := l.e.store.Delete(ctx, l.name); err != nil {
		l.e.opts.Logger.Warn("backup: lock release failed; it goes stale by itself", "volume_id", l.volumeID,
			"lock", l.name, "err", err)
	}
	l.cancel(nil)
}

// scan lists the volume's locks other than l, and the store's clock: the ModTime of l's own lock object,
// which was just written. l's object missing from the listing means it was removed: ErrLockLost.
func (l *volumeLock) scan(ctx context.Context) (now time.Time, others []lockObject, err error) {
	found := false
	err = l.e.store.List(ctx, locksPrefix(l.volumeID), func(oi ObjectInfo) error {
		if oi.Name == l.name {
			now, found = oi.ModTime, true
			return nil
		}
		o := parseLock(l.volumeID, oi.Name)
		o.ObjectInfo = oi
		others = append(others, o)
		return nil
	})
	if err != nil {
		return time.Time{}, nil, fmt.Errorf("list locks of volume %s: %w", l.volumeID, err)
	}
	if !found {
		return time.Time{}, nil, l.lose("its lock object is not in the store's listing")
	}
	return now, others, nil
}

func (l *volumeLock) stale(now time.Time, o lockObject) bool {
	return now.Sub(o.ModTime) >= l.e.opts.LockStale
}

func describeLock(now time.Time, o lockObject) string {
	age := now.Sub(o.ModTime).Round(time.Second)
	switch {
	case o.exclusive:
		return fmt.Sprintf("a garbage collection or abandon (%s, refreshed %s ago)", o.Name, age)
	case o.backupID != "":
		return fmt.Sprintf("backup %s (%s, refreshed %s ago)", o.backupID, o.Name, age)
	}
	return fmt.Sprintf("an unknown lock %s (refreshed %s ago)", o.Name, age)
}

// lockShared takes a backup's shared lock on its volume (see the protocol above): it waits, up to
// Options.LockWait, while a GC or abandon holds the volume. Release it with release.
func (e *Engine) lockShared(ctx context.Context, volumeID, backupID, op string) (*volumeLock, error) {
	l, err := e.newLock(ctx, volumeID, backupID, op, false)
	if err != nil {
		return nil, err
	}
	if err := l.put(ctx); err != nil {
		return nil, err
	}
	l.startRefresh()
	if err := l.takeOver(ctx, backupID); err != nil {
		l.release()
		return nil, err
	}
	if err := l.awaitNoExclusive(ctx); err != nil {
		l.release()
		return nil, err
	}
	return l, nil
}

// takeOver removes the locks of earlier attempts of the same backup: Temporal runs one attempt at a time,
// so an older one is dead or a zombie, which then stops at its next refresh.
func (l *volumeLock) takeOver(ctx context.Context, backupID string) error {
	var old []string
	err := l.e.store.List(ctx, sharedLocksPrefix(l.volumeID, backupID), func(oi ObjectInfo) error {
		if oi.Name != l.name {
			old = append(old, oi.Name)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("list locks of volume %s: %w", l.volumeID, err)
	}
	for _, n := range old {
		if err := l.e.store.Delete(ctx, n); err != nil {
			return err
		}
		l.e.opts.Logger.Info("backup: took over the lock of an earlier attempt", "volume_id", l.volumeID,
			"backup_id", backupID, "lock", n)
	}
	return nil
}

// awaitNoExclusive returns once no fresh exclusive lock is on the volume, or ErrLocked after LockWait.
func (l *volumeLock) awaitNoExclusive(ctx context.Context) error {
	deadline := time.Now().Add(l.e.opts.LockWait)
	poll := max(l.e.opts.LockRefresh/6, time.Millisecond)
	for {
		now, others, err := l.scan(ctx)
		if err != nil {
			return err
		}
		var blocking []string
		for _, o := range others {
			if o.exclusive && !l.stale(now, o) {
				blocking = append(blocking, describeLock(now, o))
			}
		}
		if len(blocking) == 0 {
			return nil
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("%w by %s (waited %s)", ErrLocked, strings.Join(blocking, ", "), l.e.opts.LockWait)
		}
		t := time.NewTimer(poll)
		select {
		case <-t.C:
		case <-l.ctx.Done():
			t.Stop()
			return context.Cause(l.ctx)
		}
	}
}

// lockExclusive takes a GC's or abandon's exclusive lock on a volume, or fails at once with ErrLocked when
// any other operation holds a fresh lock there. Stale locks are removed; so are the shared locks of backup
// abandoning (when not ""), whatever their age: the backup is being abandoned, and a zombie of it stops
// at its next refresh. It returns how many locks it removed.
func (e *Engine) lockExclusive(ctx context.Context, volumeID, op, abandoning string) (*volumeLock, int, error) {
	l, err := e.newLock(ctx, volumeID, abandoning, op, true)
	if err != nil {
		return nil, 0, err
	}
	if err := l.put(ctx); err != nil {
		return nil, 0, err
	}
	fail := func(err error) (*volumeLock, int, error) {
		l.release()
		return nil, 0, err
	}
	now, others, err := l.scan(ctx)
	if err != nil {
		return fail(err)
	}
	var busy []string
	var breaking, stale []lockObject
	for _, o := range others {
		switch {
		case abandoning != "" && !o.exclusive && o.backupID == abandoning:
			breaking = append(breaking, o)
		case l.stale(now, o):
			stale = append(stale, o)
		default:
			busy = append(busy, describeLock(now, o))
		}
	}
	if len(busy) > 0 { // refused: nothing removed
		return fail(fmt.Errorf("%w by %s", ErrLocked, strings.Join(busy, ", ")))
	}
	removed := 0
	for _, o := range breaking { // the abandoned backup's markers: they must go
		if err := e.store.Delete(ctx, o.Name); err != nil {
			return fail(err)
		}
		removed++
	}
	for _, o := range stale { // housekeeping: a stale lock blocks nobody, so one that will not go stays
		if err := e.store.Delete(ctx, o.Name); err != nil {
			e.opts.Logger.Warn("backup: could not remove a stale lock", "volume_id", volumeID, "lock", o.Name, "err", err)
			continue
		}
		removed++
		e.opts.Logger.Info("backup: removed a stale lock", "volume_id", volumeID, "lock", o.Name,
			"age", now.Sub(o.ModTime).Round(time.Second), "by", op)
	}
	l.startRefresh()
	return l, removed, nil
}
