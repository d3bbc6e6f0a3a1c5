package backup_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/holdfast/holdfast/activities/backup"
)

// The volume-lock protocol (lock.go), on fs and both S3 servers. Interleavings are fixed through hookStore,
// and a lease lapses through the engine's lease clock, never by sleeping.

// requireNoLocks fails if any lock object of vol is left: every operation releases its lock, whatever its
// outcome.
func requireNoLocks(t *testing.T, st backup.Store, vol string) {
	t.Helper()
	if left := objects(t, st, "volumes/"+vol+"/locks/"); len(left) != 0 {
		t.Fatalf("locks left behind: %v", left)
	}
}

func volumeObjects(t *testing.T, st backup.Store, vol string) []string {
	t.Helper()
	names := objects(t, st, "volumes/"+vol+"/")
	sort.Strings(names)
	return names
}

// backupObjects is what a volume holding exactly ms has: their manifests and the chunks they reference.
func backupObjects(vol string, ms ...*backup.Manifest) []string {
	set := map[string]bool{}
	for _, m := range ms {
		set["volumes/"+vol+"/manifests/"+m.BackupID+".json"] = true
		for _, c := range m.Chunks {
			set[chunkObject(vol, c.ID)] = true
		}
	}
	var names []string
	for n := range set {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// agedLocks shows the backups' (shared) locks older than they are: what a GC on another host sees when
// their holder stalled past LockStale.
type agedLocks struct {
	backup.Store
	by time.Duration
}

func (a agedLocks) List(ctx context.Context, prefix string, fn func(backup.ObjectInfo) error) error {
	return a.Store.List(ctx, prefix, func(oi backup.ObjectInfo) error {
		if strings.Contains(oi.Name, "/locks/shared/") {
			oi.ModTime = oi.ModTime.Add(-a.by)
		}
		return fn(oi)
	})
}

// stuckLocks cannot remove backups' lock objects (the process died before its release, or a GC could not
// remove a stale lock): Delete of a shared lock fails.
type stuckLocks struct{ backup.Store }

func (s stuckLocks) Delete(ctx context.Context, name string) error {
	if strings.Contains(name, "/locks/shared/") {
		return errors.New("simulated: process gone before it released its lock")
	}
	return s.Store.Delete(ctx, name)
}

// fastLocks polls and refreshes locks in milliseconds (waits in these tests are bounded by hooks, not time).
func fastLocks(o *backup.Options) {
	o.LockRefresh = 20 * time.Millisecond
	o.LockStale = time.Hour
	o.Concurrency = 1
}

// A backup that finds a GC (or abandon) holding its volume waits for it, then completes; with a short
// LockWait it gives up with ErrLocked and leaves nothing, not even its lock.
func TestBackupWaitsOutAGC(t *testing.T) {
	eachStore(t, func(t *testing.T, st backup.Store) {
		ctx := context.Background()
		const vol = "vol-wait"
		gcLock := "volumes/" + vol + "/locks/exclusive/0123456789abcdef.json"
		putBytes(t, st, gcLock, []byte(`{"operation":"gc"}`))
		scans := 0
		hs := &hookStore{Store: st, afterList: func(prefix string) {
			if strings.HasSuffix(prefix, "/locks/") {
				if scans++; scans == 3 { // the GC elsewhere finishes while the backup polls
					if err := st.Delete(ctx, gcLock); err != nil {
						t.Error(err)
					}
				}
			}
		}}
		img := makeImage(51, testChunk, "RA", 4*testChunk)
		_, err := newEngine(t, hs, fastLocks).Backup(ctx, backup.BackupRequest{VolumeID: vol, BackupID: "b1",
			Source: bytes.NewReader(img), Size: int64(len(img))})
		if err != nil || scans < 3 {
			t.Fatalf("backup after waiting: %v (%d lock scans)", err, scans)
		}
		requireNoLoss(t, st, vol, "b1", img, err)
		requireNoLocks(t, st, vol)

		putBytes(t, st, gcLock, []byte(`{"operation":"gc"}`))
		impatient := newEngine(t, st, func(o *backup.Options) { fastLocks(o); o.LockWait = 50 * time.Millisecond })
		_, err = impatient.Backup(ctx, backup.BackupRequest{VolumeID: vol, BackupID: "b2", Source: bytes.NewReader(img),
			Size: int64(len(img))})
		if !errors.Is(err, backup.ErrLocked) {
			t.Fatalf("backup against a GC that does not finish: %v, want ErrLocked", err)
		}
		requireNoLoss(t, st, vol, "b2", img, err)
		if left := objects(t, st, "volumes/"+vol+"/locks/"); len(left) != 1 || left[0] != gcLock {
			t.Fatalf("locks after giving up: %v, want only the GC's", left)
		}
	})
}

// A GC and a backup that start at once — the backup writes its lock and checks between the GC's write and
// check — each see the other: the GC collects nothing, the backup waits for the GC's lock to go and
// completes.
func TestGCAndBackupStartingAtOnceSeeEachOther(t *testing.T) {
	eachStore(t, func(t *testing.T, st backup.Store) {
		ctx := context.Background()
		const vol = "vol-both"
		old := newEngine(t, st, nil)
		img := makeImage(52, testChunk, "RRA", 6*testChunk)
		doBackup(t, old, vol, "old", img, nil)
		if err := old.Delete(ctx, vol, "old"); err != nil { // everything is garbage to a GC with no grace
			t.Fatal(err)
		}

		scanned := make(chan struct{})
		var once sync.Once
		bs := &hookStore{Store: st, afterList: func(prefix string) {
			if strings.HasSuffix(prefix, "/locks/") {
				once.Do(func() { close(scanned) })
			}
		}}
		be := newEngine(t, bs, fastLocks)
		var backupErr error
		done := make(chan struct{})
		started := false
		gs := &hookStore{Store: st, afterPut: func(name string) {
			if strings.Contains(name, "/locks/exclusive/") && !started {
				started = true
				go func() {
					defer close(done)
					_, backupErr = be.Backup(ctx, backup.BackupRequest{VolumeID: vol, BackupID: "new",
						Source: bytes.NewReader(img), Size: int64(len(img))})
				}()
				<-scanned // the backup wrote its lock and looked for exclusive ones
			}
		}}
		rep, err := newEngine(t, gs, nil).GC(ctx, vol, 0)
		if !errors.Is(err, backup.ErrLocked) || rep == nil || rep.Busy == "" || rep.DeletedChunks != 0 {
			t.Fatalf("GC racing a backup's start: %+v %v, want it busy", rep, err)
		}
		<-done
		if backupErr != nil {
			t.Fatalf("backup racing a GC's start: %v", backupErr)
		}
		requireNoLoss(t, st, vol, "new", img, backupErr)
		requireNoLocks(t, st, vol)
	})
}

// A backup whose host stalls past LockStale loses its lease; a GC elsewhere then finds its lock stale and
// sweeps. Wherever that happens — during the transfer, or after the commit confirmed every chunk — the
// backup fails cleanly (its lock is gone: ErrLockLost) or, when its lock survived the sweep, stores the
// swept chunks again before it commits. A retry then completes it.
func TestBackupThatOutlivedItsLeaseLosesNoChunk(t *testing.T) {
	eachStore(t, func(t *testing.T, st backup.Store) {
		for i, tc := range []struct {
			name       string
			stuckLocks bool // the GC cannot remove the stale lock
			at         func(h *hookStore, stall func())
		}{
			{name: "during-transfer", at: func(h *hookStore, stall func()) {
				puts := 0
				h.afterPut = func(name string) {
					if isChunk(name) {
						if puts++; puts == 2 {
							stall()
						}
					}
				}
			}},
			{name: "after-confirming-chunks", at: func(h *hookStore, stall func()) {
				h.afterList = func(prefix string) {
					if strings.HasSuffix(prefix, "/chunks/") {
						stall()
					}
				}
			}},
			{name: "stale-lock-not-removed", stuckLocks: true, at: func(h *hookStore, stall func()) {
				h.afterList = func(prefix string) {
					if strings.HasSuffix(prefix, "/chunks/") {
						stall()
					}
				}
			}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				ctx := context.Background()
				vol := "vol-lease-" + string(rune('a'+i))
				img := makeImage(53, testChunk, "RRZA", 8*testChunk)
				var gcStore backup.Store = agedLocks{Store: st, by: 2 * time.Hour}
				if tc.stuckLocks {
					gcStore = stuckLocks{Store: gcStore}
				}
				collector := newEngine(t, gcStore, nil)
				var mu sync.Mutex
				skew := time.Duration(0)
				clock := func() time.Time {
					mu.Lock()
					defer mu.Unlock()
					return time.Now().Add(skew)
				}
				stalled := false
				var swept *backup.GCReport
				stall := func() {
					if stalled {
						return
					}
					stalled = true
					mu.Lock()
					skew += 2 * time.Hour // the host slept: its lease is long gone
					mu.Unlock()
					var err error
					if swept, err = collector.GC(ctx, vol, 0); err != nil {
						t.Fatalf("GC past a stale lock: %v", err)
					}
				}
				hs := &hookStore{Store: st}
				tc.at(hs, stall)
				e := newEngine(t, hs, func(o *backup.Options) { o.Concurrency = 1; o.LockStale = time.Hour })
				backup.SetLeaseClock(e, clock)
				_, err := e.Backup(ctx, backup.BackupRequest{VolumeID: vol, BackupID: "b1", Source: bytes.NewReader(img),
					Size: int64(len(img))})
				if !stalled || swept.DeletedChunks == 0 {
					t.Fatalf("the stale-lock GC did not sweep: %+v", swept)
				}
				if ok := requireNoLoss(t, st, vol, "b1", img, err); !ok && !errors.Is(err, backup.ErrLockLost) {
					t.Fatalf("backup failed with %v, want ErrLockLost", err)
				}
				if tc.stuckLocks && err != nil {
					t.Fatalf("a backup whose lock survived must store the swept chunks again, not fail: %v", err)
				}
				requireNoLocks(t, st, vol)
				if err != nil {
					_, err = newEngine(t, st, nil).Backup(ctx, backup.BackupRequest{VolumeID: vol, BackupID: "b1",
						Source: bytes.NewReader(img), Size: int64(len(img))})
					if !requireNoLoss(t, st, vol, "b1", img, err) {
						t.Fatal("the retry failed")
					}
				}
			})
		}
	})
}

// A newer attempt of a backup (Temporal retried it while the old one still ran) takes the old attempt's lock
// over; the old attempt stops with ErrLockLost before it commits.
func TestNewerAttemptTakesTheLockOver(t *testing.T) {
	eachStore(t, func(t *testing.T, st backup.Store) {
		ctx := context.Background()
		const vol = "vol-attempts"
		img := makeImage(54, testChunk, "RA", 6*testChunk)
		var second error
		ran := false
		hs := &hookStore{Store: st, afterPut: func(name string) {
			if isChunk(name) && !ran {
				ran = true
				_, second = newEngine(t, st, nil).Backup(ctx, backup.BackupRequest{VolumeID: vol, BackupID: "b1",
					Source: bytes.NewReader(img), Size: int64(len(img))})
			}
		}}
		_, first := newEngine(t, hs, func(o *backup.Options) { o.Concurrency = 1 }).Backup(ctx,
			backup.BackupRequest{VolumeID: vol, BackupID: "b1", Source: bytes.NewReader(img), Size: int64(len(img))})
		if second != nil || !errors.Is(first, backup.ErrLockLost) {
			t.Fatalf("old attempt: %v (want ErrLockLost); new attempt: %v", first, second)
		}
		requireNoLoss(t, st, vol, "b1", img, nil)
		requireNoLocks(t, st, vol)
	})
}

// A GC of the whole store skips a volume with a running backup (its report says why) and collects the others;
// it removes locks that went stale.
func TestGCStoreSkipsBusyVolumes(t *testing.T) {
	eachStore(t, func(t *testing.T, st backup.Store) {
		ctx := context.Background()
		e := newEngine(t, st, nil)
		for _, vol := range []string{"vol-busy", "vol-idle", "vol-dead"} {
			doBackup(t, e, vol, "b1", makeImage(55, testChunk, "R", 3*testChunk), nil)
			if err := e.Delete(ctx, vol, "b1"); err != nil {
				t.Fatal(err)
			}
		}
		running := "volumes/vol-busy/locks/shared/b2/00000000000000aa.json"
		dead := "volumes/vol-dead/locks/shared/b2/00000000000000bb.json"
		putBytes(t, st, running, []byte(`{}`))
		putBytes(t, st, dead, []byte(`{}`))
		// vol-dead's backup stopped refreshing two hours ago: to the collector its lock is stale.
		collector := newEngine(t, agedOnly{Store: st, name: dead, by: 2 * time.Hour}, nil)
		reps, err := collector.GCStore(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]*backup.GCReport{}
		for _, r := range reps {
			got[r.VolumeID] = r
		}
		if r := got["vol-busy"]; r == nil || r.Busy == "" || !strings.Contains(r.Busy, "backup b2") || r.DeletedChunks != 0 {
			t.Fatalf("busy volume: %+v", r)
		}
		if r := got["vol-idle"]; r == nil || r.Busy != "" || r.DeletedChunks != 3 {
			t.Fatalf("idle volume: %+v", r)
		}
		if r := got["vol-dead"]; r == nil || r.Busy != "" || r.DeletedChunks != 3 || r.StaleLocks != 1 {
			t.Fatalf("volume with a dead backup's lock: %+v", r)
		}
		if n := len(objects(t, st, "volumes/vol-busy/chunks/")); n != 3 {
			t.Fatalf("GC swept a busy volume: %d chunks left of 3", n)
		}
		requireNoLocks(t, st, "vol-dead")
		requireNoLocks(t, st, "vol-idle")
		if _, err := collector.GC(ctx, "vol-busy", 0); !errors.Is(err, backup.ErrLocked) {
			t.Fatalf("GC of a busy volume: %v, want ErrLocked", err)
		}
	})
}

// agedOnly shows one object older than it is.
type agedOnly struct {
	backup.Store
	name string
	by   time.Duration
}

func (a agedOnly) List(ctx context.Context, prefix string, fn func(backup.ObjectInfo) error) error {
	return a.Store.List(ctx, prefix, func(oi backup.ObjectInfo) error {
		if oi.Name == a.name {
			oi.ModTime = oi.ModTime.Add(-a.by)
		}
		return fn(oi)
	})
}

// A replication into a store holds the volume's lock there like a backup: a GC of the destination with no
// grace, run while chunks are being copied, takes none of them.
func TestGCDuringReplicationLosesNoChunk(t *testing.T) {
	eachStore(t, func(t *testing.T, st backup.Store) {
		ctx := context.Background()
		const vol = "vol-repl"
		src := newEngine(t, fsStore(t), nil)
		img := makeImage(56, testChunk, "RA", 6*testChunk)
		doBackup(t, src, vol, "b1", img, nil)
		collector := newEngine(t, st, nil)
		gcs := 0
		hs := &hookStore{Store: st, afterPut: func(name string) {
			if isChunk(name) {
				gcs++
				if _, err := collector.GC(ctx, vol, 0); !errors.Is(err, backup.ErrLocked) {
					t.Errorf("GC during a replication: %v, want ErrLocked", err)
				}
			}
		}}
		_, err := src.Replicate(ctx, newEngine(t, hs, func(o *backup.Options) { o.Concurrency = 1 }), vol, "b1", nil)
		if gcs == 0 {
			t.Fatal("no GC ran")
		}
		requireNoLoss(t, st, vol, "b1", img, err)
		requireNoLocks(t, st, vol)
	})
}

// Abandon removes everything a failed backup left — its journal, its in-progress marker (a lock its dead
// process never released), the chunks no other backup references, its manifest if it committed — and keeps
// what the volume's other backups need. It is idempotent, refuses while another backup of the volume runs,
// and deletes no chunk while a manifest of the volume is unreadable.
func TestAbandonLeavesNothingOfItsOwn(t *testing.T) {
	eachStore(t, func(t *testing.T, st backup.Store) {
		ctx := context.Background()
		const vol = "vol-ab"
		e := newEngine(t, st, nil)
		keepImg := makeImage(57, testChunk, "R", 6*testChunk)
		keep := doBackup(t, e, vol, "b1", keepImg, nil)
		other := doBackup(t, e, "vol-other", "b1", keepImg, nil)

		// b2 shares b1's first three chunks and crashes in its fifth, in a process that dies before it
		// releases its lock.
		img := append(bytes.Clone(keepImg[:3*testChunk]), makeImage(58, testChunk, "R", 5*testChunk)...)
		dying := newEngine(t, stuckLocks{st}, func(o *backup.Options) { o.CheckpointEvery = 2; o.Concurrency = 1 })
		_, err := dying.Backup(ctx, backup.BackupRequest{VolumeID: vol, BackupID: "b2", Size: int64(len(img)),
			Source: &readCounter{r: bytes.NewReader(img), failAt: 5 * testChunk}})
		if err == nil {
			t.Fatal("the crashing backup succeeded")
		}
		if len(objects(t, st, "volumes/"+vol+"/locks/shared/b2/")) != 1 ||
			len(objects(t, st, "volumes/"+vol+"/inprogress/b2/")) == 0 {
			t.Fatal("the crash did not leave its marker and journal")
		}

		// While another backup of the volume runs, Abandon refuses and removes nothing.
		ran := false
		hs := &hookStore{Store: st, afterPut: func(name string) {
			if isChunk(name) && !ran {
				ran = true
				if _, err := e.Abandon(ctx, vol, "b2"); !errors.Is(err, backup.ErrLocked) {
					t.Errorf("abandon during another backup: %v, want ErrLocked", err)
				}
			}
		}}
		b3Img := makeImage(59, testChunk, "R", 2*testChunk)
		doBackup(t, newEngine(t, hs, nil), vol, "b3", b3Img, nil)
		if !ran || len(objects(t, st, "volumes/"+vol+"/inprogress/b2/")) == 0 {
			t.Fatal("abandon during another backup removed b2's journal")
		}

		for _, id := range []string{"b2", "b3"} {
			rep, err := e.Abandon(ctx, vol, id)
			if err != nil {
				t.Fatalf("abandon %s: %v", id, err)
			}
			t.Logf("abandon %s: %+v", id, rep)
			if id == "b2" && (rep.LocksRemoved != 1 || rep.JournalSegments == 0 || rep.DeletedChunks != 2 || rep.ManifestRemoved) {
				t.Fatalf("abandon of the crashed backup: %+v", rep)
			}
			if id == "b3" && (!rep.ManifestRemoved || rep.DeletedChunks != 2) {
				t.Fatalf("abandon of the committed backup: %+v", rep)
			}
			again, err := e.Abandon(ctx, vol, id)
			if err != nil || again.DeletedChunks != 0 || again.JournalSegments != 0 || again.ManifestRemoved {
				t.Fatalf("abandoning %s again: %+v %v", id, again, err)
			}
		}
		if got, want := volumeObjects(t, st, vol), backupObjects(vol, keep); strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Fatalf("left after abandoning:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		if got := restoreBytes(t, e, vol, "b1", int64(len(keepImg))); !bytes.Equal(got, keepImg) {
			t.Fatal("the remaining backup differs")
		}
		if got, want := volumeObjects(t, st, "vol-other"), backupObjects("vol-other", other); strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Fatalf("another volume changed: %v", got)
		}

		// A manifest it cannot read: the backup's own objects go, no chunk does.
		_, err = e.Backup(ctx, backup.BackupRequest{VolumeID: vol, BackupID: "b4", Size: int64(len(img)),
			Source: &readCounter{r: bytes.NewReader(img), failAt: 5 * testChunk}})
		if err == nil {
			t.Fatal("the crashing backup succeeded")
		}
		putBytes(t, st, "volumes/"+vol+"/manifests/torn.json", []byte("{"))
		chunks := len(objects(t, st, "volumes/"+vol+"/chunks/"))
		if _, err := e.Abandon(ctx, vol, "b4"); !errors.Is(err, backup.ErrInvalidManifest) {
			t.Fatalf("abandon with an unreadable manifest: %v, want ErrInvalidManifest", err)
		}
		if n := len(objects(t, st, "volumes/"+vol+"/chunks/")); n != chunks {
			t.Fatalf("abandon swept %d chunks against an incomplete mark", chunks-n)
		}
		if left := objects(t, st, "volumes/"+vol+"/inprogress/"); len(left) != 0 {
			t.Fatalf("journal left: %v", left)
		}
		requireNoLocks(t, st, vol)
	})
}

// An abandon against a store that is down fails (retryably: no ErrLocked, no ErrInvalidManifest), so the
// workflow retries it.
func TestAbandonOnAStoreThatIsDownFails(t *testing.T) {
	e := newEngine(t, downStore{fsStore(t)}, nil)
	if _, err := e.Abandon(context.Background(), "vol", "b1"); err == nil {
		t.Fatal("abandon on a store that is down succeeded")
	}
}

type downStore struct{ backup.Store }

var errDown = errors.New("simulated: store unreachable")

func (downStore) Put(context.Context, string, io.Reader, int64) error { return errDown }
func (downStore) Get(context.Context, string) (io.ReadCloser, error)  { return nil, errDown }
func (downStore) Stat(context.Context, string) (backup.ObjectInfo, error) {
	return backup.ObjectInfo{}, errDown
}
func (downStore) List(context.Context, string, func(backup.ObjectInfo) error) error { return errDown }
func (downStore) Delete(context.Context, string) error                              { return errDown }
