package backup_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/holdfast/holdfast/activities/backup"
)

// The tests in this file hold the engine to "no chunk lost, by construction": whatever a garbage collection
// (with no grace at all) does while a backup runs, the backup either ends available with every chunk it
// lists stored and restores byte-identical, or fails and is not available. They interleave the two at exact
// points through hookStore, never by sleeping, and run on fs and on both S3 servers.

// hookStore runs test code at chosen points of a store's calls, in the calling goroutine, so that a test
// can put another operation exactly between two steps of the engine.
type hookStore struct {
	backup.Store
	mu        sync.Mutex // serialises the hooks: the engine calls the store from several goroutines
	beforePut func(name string)
	afterPut  func(name string)
	afterStat func(name string, err error)
	afterList func(prefix string)
}

func (h *hookStore) Put(ctx context.Context, name string, r io.Reader, size int64) error {
	h.run(func() {
		if h.beforePut != nil {
			h.beforePut(name)
		}
	})
	err := h.Store.Put(ctx, name, r, size)
	if err == nil {
		h.run(func() {
			if h.afterPut != nil {
				h.afterPut(name)
			}
		})
	}
	return err
}

func (h *hookStore) Stat(ctx context.Context, name string) (backup.ObjectInfo, error) {
	oi, err := h.Store.Stat(ctx, name)
	h.run(func() {
		if h.afterStat != nil {
			h.afterStat(name, err)
		}
	})
	return oi, err
}

func (h *hookStore) List(ctx context.Context, prefix string, fn func(backup.ObjectInfo) error) error {
	err := h.Store.List(ctx, prefix, fn)
	h.run(func() {
		if h.afterList != nil {
			h.afterList(prefix)
		}
	})
	return err
}

func (h *hookStore) run(fn func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	fn()
}

func isChunk(name string) bool { return strings.Contains(name, "/chunks/") }

// requireNoLoss checks the outcome of a backup that raced something: failed and not available, or available
// with every chunk it lists stored (at its recorded size) and restoring to exactly img. It reads through a
// plain engine on st, not through the test's hooks. It reports whether the backup is available.
func requireNoLoss(t *testing.T, st backup.Store, vol, id string, img []byte, backupErr error) bool {
	t.Helper()
	ctx := context.Background()
	e := newEngine(t, st, nil)
	m, err := e.Manifest(ctx, vol, id)
	if backupErr != nil {
		if !errors.Is(err, backup.ErrNotExist) {
			t.Fatalf("backup failed (%v) yet its manifest is there (err %v)", backupErr, err)
		}
		t.Logf("backup failed cleanly: %v", backupErr)
		return false
	}
	if err != nil {
		t.Fatalf("backup succeeded but its manifest is unreadable: %v", err)
	}
	missing := 0
	for _, c := range m.Chunks {
		info, err := st.Stat(ctx, chunkObject(vol, c.ID))
		if err != nil || info.Size != c.StoredSize {
			missing++
		}
	}
	if missing > 0 {
		t.Fatalf("backup %s is available with %d of its %d chunks missing", id, missing, len(m.Chunks))
	}
	if got := restoreBytes(t, e, vol, id, int64(len(img))); !bytes.Equal(got, img) {
		t.Fatalf("backup %s restores differently", id)
	}
	return true
}

// A GC with no grace runs while a backup is between uploading chunks and writing its manifest: after each
// chunk upload (so the last one runs once every chunk is stored) and right before the manifest write.
func TestGCDuringBackupLosesNoChunk(t *testing.T) {
	eachStore(t, func(t *testing.T, st backup.Store) {
		for i, point := range []string{"after-each-chunk-upload", "before-the-manifest-write"} {
			t.Run(point, func(t *testing.T) {
				ctx := context.Background()
				vol := "vol-race-" + string(rune('a'+i))
				collector := newEngine(t, st, nil) // another agent serving the storage's queue
				gcs := 0
				var gcErrs []string
				gc := func() {
					gcs++
					if _, err := collector.GC(ctx, vol, 0); err != nil {
						gcErrs = append(gcErrs, err.Error())
					}
				}
				hs := &hookStore{Store: st}
				if point == "after-each-chunk-upload" {
					hs.afterPut = func(name string) {
						if isChunk(name) {
							gc()
						}
					}
				} else {
					hs.beforePut = func(name string) {
						if strings.Contains(name, "/manifests/") {
							gc()
						}
					}
				}
				e := newEngine(t, hs, func(o *backup.Options) { o.Concurrency = 1 })
				img := makeImage(41, testChunk, "RRZA", 8*testChunk)
				_, err := e.Backup(ctx, backup.BackupRequest{VolumeID: vol, BackupID: "b1", Source: bytes.NewReader(img),
					Size: int64(len(img))})
				if gcs == 0 {
					t.Fatal("the hook never ran a GC")
				}
				t.Logf("%d GCs ran; refusals: %v", gcs, gcErrs)
				requireNoLoss(t, st, vol, "b1", img, err)
			})
		}
	})
}

// A backup deduplicates against an old chunk no manifest references any more (its backup was deleted), and a
// GC with no grace runs right after the backup found it stored.
func TestGCDuringReuseOfOldChunkLosesNoChunk(t *testing.T) {
	eachStore(t, func(t *testing.T, st backup.Store) {
		ctx := context.Background()
		const vol = "vol-reuse"
		img := makeImage(42, testChunk, "RRA", 6*testChunk)
		old := newEngine(t, st, nil)
		doBackup(t, old, vol, "old", img, nil)
		if err := old.Delete(ctx, vol, "old"); err != nil {
			t.Fatal(err)
		}
		collector := newEngine(t, st, nil)
		ran := false
		hs := &hookStore{Store: st, afterStat: func(name string, err error) {
			if err == nil && isChunk(name) && !ran {
				ran = true
				_, gcErr := collector.GC(ctx, vol, 0)
				t.Logf("GC after the reuse: %v", gcErr)
			}
		}}
		e := newEngine(t, hs, func(o *backup.Options) { o.Concurrency = 1 })
		_, err := e.Backup(ctx, backup.BackupRequest{VolumeID: vol, BackupID: "new", Source: bytes.NewReader(img),
			Size: int64(len(img))})
		if !ran {
			t.Fatal("the backup never found an old chunk stored")
		}
		requireNoLoss(t, st, vol, "new", img, err)
	})
}

// A crashed backup is resumed after the chunks its journal names were removed (a GC that swept them and
// died before it removed the journal, or any other loss): the resumed backup must not trust the journal
// into an available backup with missing chunks.
func TestResumeAfterJournalledChunksWentLosesNoChunk(t *testing.T) {
	eachStore(t, func(t *testing.T, st backup.Store) {
		ctx := context.Background()
		const vol = "vol-resume"
		e := newEngine(t, st, func(o *backup.Options) {
			o.Concurrency = 1
			o.CheckpointEvery = 2
			o.ProgressInterval = time.Nanosecond
		})
		img := makeImage(43, testChunk, "R", 10*testChunk)
		var last backup.Progress
		_, err := e.Backup(ctx, backup.BackupRequest{VolumeID: vol, BackupID: "b1", Size: int64(len(img)),
			Source: &readCounter{r: bytes.NewReader(img), failAt: 7 * testChunk}, Progress: func(p backup.Progress) { last = p }})
		if err == nil || last.NextOffset == 0 {
			t.Fatalf("crash: %v, checkpoint %d", err, last.NextOffset)
		}
		for _, n := range objects(t, st, "volumes/"+vol+"/chunks/") {
			if err := st.Delete(ctx, n); err != nil {
				t.Fatal(err)
			}
		}
		_, err = e.Backup(ctx, backup.BackupRequest{VolumeID: vol, BackupID: "b1", Size: int64(len(img)),
			Source: bytes.NewReader(img), Resume: last.Checkpoint()})
		requireNoLoss(t, st, vol, "b1", img, err)
	})
}

// A resumed backup whose journal names lost chunks that its source no longer holds either (the range
// changed) fails cleanly and drops the journal, so that the next attempt reads everything again and
// completes, instead of failing the same way on every retry.
func TestResumeWhoseSourceNoLongerHoldsALostChunk(t *testing.T) {
	eachStore(t, func(t *testing.T, st backup.Store) {
		ctx := context.Background()
		const vol = "vol-changed"
		e := newEngine(t, st, func(o *backup.Options) {
			o.Concurrency = 1
			o.CheckpointEvery = 2
			o.ProgressInterval = time.Nanosecond
		})
		img := makeImage(44, testChunk, "R", 8*testChunk)
		var last backup.Progress
		_, err := e.Backup(ctx, backup.BackupRequest{VolumeID: vol, BackupID: "b1", Size: int64(len(img)),
			Source: &readCounter{r: bytes.NewReader(img), failAt: 5 * testChunk}, Progress: func(p backup.Progress) { last = p }})
		if err == nil || last.NextOffset == 0 {
			t.Fatalf("crash: %v, checkpoint %d", err, last.NextOffset)
		}
		for _, n := range objects(t, st, "volumes/"+vol+"/chunks/") {
			if err := st.Delete(ctx, n); err != nil {
				t.Fatal(err)
			}
		}
		changed := bytes.Clone(img)
		changed[10] ^= 0xff // inside the journalled range
		req := backup.BackupRequest{VolumeID: vol, BackupID: "b1", Size: int64(len(changed)),
			Source: bytes.NewReader(changed), Resume: last.Checkpoint()}
		_, err = e.Backup(ctx, req)
		if err == nil {
			t.Fatal("a backup recording a chunk neither the store nor the source holds succeeded")
		}
		requireNoLoss(t, st, vol, "b1", changed, err)
		if left := objects(t, st, "volumes/"+vol+"/inprogress/"); len(left) != 0 {
			t.Fatalf("journal kept: %v", left)
		}
		_, err = e.Backup(ctx, req)
		if !requireNoLoss(t, st, vol, "b1", changed, err) {
			t.Fatal("the retry failed again")
		}
	})
}
