package backup_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/holdfast/holdfast/activities/backup"
	"github.com/holdfast/holdfast/activities/backup/fs"
)

// chunkBytes sums the sizes of the chunk objects stored for vol.
func chunkBytes(t *testing.T, st backup.Store, vol string) (n int64, objects int) {
	t.Helper()
	err := st.List(context.Background(), "volumes/"+vol+"/chunks/", func(oi backup.ObjectInfo) error {
		n += oi.Size
		objects++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n, objects
}

// scribble writes n random blocks of 4 KiB at random 4 KiB-aligned offsets of img, each in its own cell,
// and returns the extents written.
func scribble(rng *rand.Rand, img []byte, n int) []backup.Extent {
	cells := len(img) / testChunk
	var out []backup.Extent
	for _, c := range rng.Perm(cells)[:n] {
		off := int64(c)*testChunk + int64(rng.IntN(testChunk/4096))*4096
		for i := range 4096 {
			img[off+int64(i)] = byte(rng.Uint32())
		}
		out = append(out, backup.Extent{Offset: off, Length: 4096})
	}
	return out
}

// TestIncrementalStoresOnlyChangedBlocks: after 4 KiB writes in 10 cells, a backup read in full (no
// changed-extent hint, as for a raw file) stores one small chunk per changed cell, not the cells: the
// bytes added are about the bytes written, not 10 cells.
func TestIncrementalStoresOnlyChangedBlocks(t *testing.T) {
	for _, enc := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "encrypted"}[enc], func(t *testing.T) {
			st := fsStore(t)
			e := newEngine(t, st, func(o *backup.Options) {
				if enc {
					o.Key = bytes.Repeat([]byte{7}, 32)
				}
			})
			img := makeImage(11, testChunk, "R", 40*testChunk)
			doBackup(t, e, "vol-s", "b1", img, nil)
			before, objs := chunkBytes(t, st, "vol-s")

			img2 := bytes.Clone(img)
			written := scribble(rand.New(rand.NewPCG(1, 2)), img2, 10)
			m := doBackup(t, e, "vol-s", "b2", img2, func(r *backup.BackupRequest) { r.Parent = "b1" })
			after, objs2 := chunkBytes(t, st, "vol-s")
			added := after - before
			if objs2-objs != len(written) {
				t.Errorf("stored %d new objects, want one per changed cell (%d)", objs2-objs, len(written))
			}
			// Random 4 KiB blocks do not compress: 10 × 4 KiB plus framing, far from 10 × 64 KiB cells.
			if limit := int64(len(written)) * 4096 * 3 / 2; added > limit {
				t.Errorf("added %d bytes for %d bytes written, want ≤ %d", added, len(written)*4096, limit)
			}
			if m.FormatVersion != backup.FormatVersion {
				t.Errorf("format_version %d", m.FormatVersion)
			}
			if got := restoreBytes(t, e, "vol-s", "b2", int64(len(img2))); !bytes.Equal(got, img2) {
				t.Fatal("b2 restores wrong bytes")
			}
			if got := restoreBytes(t, e, "vol-s", "b1", int64(len(img))); !bytes.Equal(got, img) {
				t.Fatal("b1 restores wrong bytes after b2")
			}
		})
	}
}

// TestTenGenerationsRestoreIdentical writes between ten backups — small blocks, zeros, runs across cell
// boundaries, whole cells — with and without a changed-extent hint, then deletes every other generation,
// runs GC, and checks that every remaining one restores byte-identical, verifies deep, and draws on no more
// than 8 chunks per cell.
func TestTenGenerationsRestoreIdentical(t *testing.T) {
	st := fsStore(t)
	e := newEngine(t, st, func(o *backup.Options) { o.Key = bytes.Repeat([]byte{9}, 32) })
	rng := rand.New(rand.NewPCG(3, 4))
	img := makeImage(5, testChunk, "RRZAB", 24*testChunk+8192)
	images := map[string][]byte{}
	parent := ""
	for g := range 10 {
		id := "g" + string(rune('0'+g))
		var changed []backup.Extent
		if g > 0 {
			for range 1 + rng.IntN(12) {
				off := int64(rng.IntN(len(img)/512)) * 512
				n := min(int64(512*(1+rng.IntN(300))), int64(len(img))-off)
				switch rng.IntN(4) {
				case 0: // zeros
					clear(img[off : off+n])
				default:
					for i := range n {
						img[off+i] = byte(rng.Uint32())
					}
				}
				changed = append(changed, backup.Extent{Offset: off, Length: n})
			}
		}
		hint := g%2 == 1
		m := doBackup(t, e, "vol-g", id, img, func(r *backup.BackupRequest) {
			r.Parent = parent
			if hint {
				r.Changed = changed
			}
		})
		checkCellChunks(t, m)
		if got := restoreBytes(t, e, "vol-g", id, int64(len(img))); !bytes.Equal(got, img) {
			for i := range got {
				if got[i] != img[i] {
					t.Logf("first difference at %d (cell %d), hint %v", i, i/testChunk, hint)
					break
				}
			}
			for _, mid := range []string{parent, id} {
				mm, _ := e.Manifest(context.Background(), "vol-g", mid)
				for _, c := range mm.Chunks {
					if c.Offset/testChunk == 19 {
						t.Logf("%s %+v", mid, c)
					}
				}
				for _, z := range mm.ZeroRanges {
					if z.Offset/testChunk <= 19 && (z.End()-1)/testChunk >= 19 {
						t.Logf("%s zero %+v", mid, z)
					}
				}
			}
			t.Fatalf("%s restores wrong bytes right after its backup; changes %v", id, changed)
		}
		images[id] = bytes.Clone(img)
		parent = id
	}
	for _, id := range []string{"g0", "g2", "g4", "g6", "g8"} {
		if err := e.Delete(context.Background(), "vol-g", id); err != nil {
			t.Fatal(err)
		}
		delete(images, id)
	}
	if _, err := e.GC(context.Background(), "vol-g", -time.Hour); err != nil {
		t.Fatal(err)
	}
	for id, want := range images {
		if got := restoreBytes(t, e, "vol-g", id, int64(len(want))); !bytes.Equal(got, want) {
			t.Fatalf("%s restores wrong bytes", id)
		}
		v, err := e.Verify(context.Background(), backup.VerifyRequest{VolumeID: "vol-g", BackupID: id, Deep: true})
		if err != nil || !v.OK() {
			t.Fatalf("verify %s: %+v, %v", id, v, err)
		}
	}
}

// checkCellChunks fails when a cell of m draws on more than 8 chunks.
func checkCellChunks(t *testing.T, m *backup.Manifest) {
	t.Helper()
	cells := map[int64]map[string]bool{}
	for _, c := range m.Chunks {
		k := c.Offset / m.ChunkSize
		if cells[k] == nil {
			cells[k] = map[string]bool{}
		}
		cells[k][c.ID] = true
	}
	for k, ids := range cells {
		if len(ids) > 8 {
			t.Errorf("%s: cell %d draws on %d chunks", m.BackupID, k, len(ids))
		}
	}
}

// TestFormatV1Reads: a manifest of the first format restores, and serves as the parent of an incremental;
// a v1 manifest with v2 slices is refused.
func TestFormatV1Reads(t *testing.T) {
	st := fsStore(t)
	e := newEngine(t, st, nil)
	img := makeImage(8, testChunk, "RZA", 9*testChunk+100)
	m := doBackup(t, e, "vol-v1", "b1", img, nil)
	m.FormatVersion = backup.FormatVersion1
	data, err := backup.EncodeManifest(m)
	if err != nil {
		t.Fatalf("a full backup's manifest is a valid v1 manifest: %v", err)
	}
	if err := backup.PutBytes(context.Background(), st, "volumes/vol-v1/manifests/b1.json", data); err != nil {
		t.Fatal(err)
	}
	if got, err := e.Manifest(context.Background(), "vol-v1", "b1"); err != nil || got.FormatVersion != 1 {
		t.Fatalf("manifest: %v, %v", got, err)
	}
	if got := restoreBytes(t, e, "vol-v1", "b1", int64(len(img))); !bytes.Equal(got, img) {
		t.Fatal("v1 backup restores wrong bytes")
	}
	img2 := bytes.Clone(img)
	img2[3*testChunk+5000] ^= 1
	m2 := doBackup(t, e, "vol-v1", "b2", img2, func(r *backup.BackupRequest) {
		r.Parent = "b1"
		r.Changed = []backup.Extent{{Offset: 3*testChunk + 5000, Length: 1}}
	})
	if got := restoreBytes(t, e, "vol-v1", "b2", int64(len(img2))); !bytes.Equal(got, img2) {
		t.Fatal("incremental of a v1 parent restores wrong bytes")
	}
	sliced := false
	for _, c := range m2.Chunks {
		sliced = sliced || c.ChunkLength > 0
	}
	if !sliced {
		t.Fatal("the incremental has no slice: it stored the changed cell whole")
	}
	m2.FormatVersion = backup.FormatVersion1
	if _, err := backup.EncodeManifest(m2); !errors.Is(err, backup.ErrInvalidManifest) {
		t.Fatalf("v1 manifest with slices: %v, want refused", err)
	}
}

// TestManifestV2Geometry refuses slices that do not fit: across a cell, past their chunk, skip without a
// chunk length, off a sector.
func TestManifestV2Geometry(t *testing.T) {
	id := strings.Repeat("ab", 32)
	base := func() *backup.Manifest {
		return &backup.Manifest{FormatVersion: backup.FormatVersion, VolumeID: "v", BackupID: "b", Size: 8192,
			ChunkSize: 4096, Hash: backup.HashBLAKE3, Compression: backup.CompressionZstd,
			Chunks: []backup.ChunkRef{
				{Offset: 0, Length: 1024, ID: id, StoredSize: 10, Skip: 512, ChunkLength: 4096},
				{Offset: 1024, Length: 3072, ID: id, StoredSize: 10},
			},
			ZeroRanges: []backup.Extent{{Offset: 4096, Length: 4096}},
		}
	}
	if _, err := backup.EncodeManifest(base()); err != nil {
		t.Fatalf("valid v2 manifest refused: %v", err)
	}
	for name, mod := range map[string]func(m *backup.Manifest){
		"across a cell": func(m *backup.Manifest) {
			m.Chunks[1].Length = 4096
			m.ZeroRanges[0] = backup.Extent{Offset: 5120, Length: 3072}
		},
		"past its chunk":      func(m *backup.Manifest) { m.Chunks[0].Skip = 3584 },
		"skip without length": func(m *backup.Manifest) { m.Chunks[0].ChunkLength = 0 },
		"off a sector": func(m *backup.Manifest) {
			m.Chunks[0].Length = 1000
			m.Chunks[1].Offset = 1000
			m.Chunks[1].Length = 3096
		},
		"negative skip": func(m *backup.Manifest) { m.Chunks[0].Skip = -512 },
		"huge chunk":    func(m *backup.Manifest) { m.Chunks[0].ChunkLength = 1 << 40 },
	} {
		m := base()
		mod(m)
		if _, err := backup.EncodeManifest(m); !errors.Is(err, backup.ErrInvalidManifest) {
			js, _ := json.Marshal(m.Chunks)
			t.Errorf("%s: %v, want refused (%s)", name, err, js)
		}
	}
}

// TestLostParentChunkUnderASlice: a parent chunk that the store lost, which the new backup only slices, is
// not made again from the source (the source no longer holds the rest of it); each slice is stored alone,
// and the backup restores byte-identical and verifies.
func TestLostParentChunkUnderASlice(t *testing.T) {
	st := fsStore(t)
	e := newEngine(t, st, nil)
	img := makeImage(12, testChunk, "R", 6*testChunk)
	m1 := doBackup(t, e, "vol-l", "b1", img, nil)
	lost := m1.Chunks[2]
	if err := st.Delete(context.Background(), "volumes/vol-l/chunks/"+lost.ID[:2]+"/"+lost.ID); err != nil {
		t.Fatal(err)
	}
	img2 := bytes.Clone(img)
	img2[2*testChunk+100] ^= 1
	m2 := doBackup(t, e, "vol-l", "b2", img2, func(r *backup.BackupRequest) {
		r.Parent = "b1"
		r.Changed = []backup.Extent{{Offset: 2*testChunk + 100, Length: 1}}
	})
	for _, c := range m2.Chunks {
		if c.ID == lost.ID {
			t.Fatalf("b2 still names the lost chunk at %d", c.Offset)
		}
	}
	if got := restoreBytes(t, e, "vol-l", "b2", int64(len(img2))); !bytes.Equal(got, img2) {
		t.Fatal("b2 restores wrong bytes")
	}
	if v, err := e.Verify(context.Background(), backup.VerifyRequest{VolumeID: "vol-l", BackupID: "b2", Deep: true}); err != nil || !v.OK() {
		t.Fatalf("verify b2: %+v, %v", v, err)
	}
}

// TestOverlappingChangedExtents: a hint whose extents overlap (sorted by offset, their ends do not ascend)
// still counts every one of them; the change inside the long first extent is backed up.
func TestOverlappingChangedExtents(t *testing.T) {
	e := newEngine(t, fsStore(t), nil)
	img := makeImage(13, testChunk, "R", 8*testChunk)
	doBackup(t, e, "vol-o", "b1", img, nil)
	img2 := bytes.Clone(img)
	img2[3*testChunk+100] ^= 1
	doBackup(t, e, "vol-o", "b2", img2, func(r *backup.BackupRequest) {
		r.Parent = "b1"
		r.Changed = []backup.Extent{{Offset: 0, Length: 4 * testChunk}, {Offset: testChunk, Length: 1}}
	})
	if got := restoreBytes(t, e, "vol-o", "b2", int64(len(img2))); !bytes.Equal(got, img2) {
		t.Fatal("the change inside the first of two overlapping extents was lost")
	}
}

// TestDeferredChunksAndTheJournal: on a local directory chunks are put deferred (fs batches). A backup that
// crashes has journalled only chunks that are durable and visible, and leaves no temporary file behind (its
// last journal write flushes what it put; fs's TestBatchPutsAreInvisibleUntilFlushed checks Discard); a
// temporary file a dead process left is removed by GC.
func TestDeferredChunksAndTheJournal(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	st, err := fs.New(fs.Config{Path: root})
	if err != nil {
		t.Fatal(err)
	}
	e := newEngine(t, st, func(o *backup.Options) { o.CheckpointEvery = 2 })
	img := makeImage(21, testChunk, "R", 30*testChunk)
	checkpointed := make(chan struct{}) // the crash waits for a first checkpoint (see TestResumeAfterCrash)
	var once sync.Once
	crashing := &readCounter{r: bytes.NewReader(img), failAt: 17 * testChunk, failAfter: checkpointed}
	if _, err := e.Backup(ctx, backup.BackupRequest{VolumeID: "vol-j", BackupID: "b1", Source: crashing,
		Size: int64(len(img)), Progress: func(p backup.Progress) {
			if p.NextOffset > 0 {
				once.Do(func() { close(checkpointed) })
			}
		}}); err == nil {
		t.Fatal("the crashing backup succeeded")
	}
	journalled := 0
	err = st.List(ctx, "volumes/vol-j/inprogress/", func(oi backup.ObjectInfo) error {
		data, err := backup.ReadAll(ctx, st, oi.Name, 1<<20)
		if err != nil {
			return err
		}
		var seg struct{ Chunks []backup.ChunkRef }
		if err := json.Unmarshal(data, &seg); err != nil {
			return err
		}
		for _, c := range seg.Chunks {
			journalled++
			if _, err := st.Stat(ctx, "volumes/vol-j/chunks/"+c.ID[:2]+"/"+c.ID); err != nil {
				t.Errorf("the journal names chunk %s at %d, which is not stored: %v", c.ID, c.Offset, err)
			}
		}
		return nil
	})
	if err != nil || journalled == 0 {
		t.Fatalf("journal: %d chunks, %v", journalled, err)
	}
	if left := tempFiles(t, root); len(left) != 0 {
		t.Fatalf("the failed backup left temporary files: %v", left)
	}

	// A process that died with puts pending (another Store on the same directory stands for it).
	dead, err := fs.New(fs.Config{Path: root})
	if err != nil {
		t.Fatal(err)
	}
	if err := dead.Batch("b1").Put(ctx, "volumes/vol-j/chunks/ab/"+strings.Repeat("ab", 32), []byte("x")); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	for _, p := range tempFiles(t, root) {
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := e.GC(ctx, "vol-j", time.Hour)
	if err != nil || rep.StaleTemp != 1 {
		t.Fatalf("gc: %+v, %v; want the dead process's temporary file removed", rep, err)
	}
	if left := tempFiles(t, root); len(left) != 0 {
		t.Fatalf("left after gc: %v", left)
	}
}

// tempFiles lists the temporary files under root.
func tempFiles(t *testing.T, root string) []string {
	t.Helper()
	out, err := fs.TempFiles(root)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestReplicateSlicedBackup: an incremental that slices its parent's chunks replicates alone (its parent is
// never copied; the chunks it slices go with it, whole) and restores byte-identical from the replica, after
// a GC there.
func TestReplicateSlicedBackup(t *testing.T) {
	key := bytes.Repeat([]byte{5}, 32)
	withKey := func(o *backup.Options) { o.Key = key }
	src := newEngine(t, fsStore(t), withKey)
	dst := newEngine(t, fsStore(t), withKey)
	img := makeImage(31, testChunk, "RRZA", 12*testChunk)
	doBackup(t, src, "vol-rs", "b1", img, nil)
	img2 := bytes.Clone(img)
	scribble(rand.New(rand.NewPCG(5, 6)), img2, 4)
	m := doBackup(t, src, "vol-rs", "b2", img2, func(r *backup.BackupRequest) { r.Parent = "b1" })
	sliced := 0
	for _, c := range m.Chunks {
		if c.ChunkLength > 0 {
			sliced++
		}
	}
	if sliced == 0 {
		t.Fatal("b2 slices nothing: the test would not test slices")
	}
	replicate(t, src, dst, "vol-rs", "b2")
	if _, err := dst.GC(context.Background(), "vol-rs", -time.Hour); err != nil {
		t.Fatal(err)
	}
	if got := restoreBytes(t, dst, "vol-rs", "b2", int64(len(img2))); !bytes.Equal(got, img2) {
		t.Fatal("the replica of a sliced backup restores wrong bytes")
	}
}

// TestKilledAttemptsTempFilesAreRemoved: what an attempt of a backup killed before it flushed left (another
// Store on the same directory stands for the dead process) is removed by the backup's next attempt, and by
// its abandon.
func TestKilledAttemptsTempFilesAreRemoved(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	st, err := fs.New(fs.Config{Path: root})
	if err != nil {
		t.Fatal(err)
	}
	e := newEngine(t, st, nil)
	img := makeImage(41, testChunk, "R", 6*testChunk)
	for _, id := range []string{"b1", "b2"} {
		dead, err := fs.New(fs.Config{Path: root})
		if err != nil {
			t.Fatal(err)
		}
		if err := dead.Batch(id).Put(ctx, "volumes/vol-k/chunks/ab/"+strings.Repeat("ab", 32), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	doBackup(t, e, "vol-k", "b1", img, nil)
	if left := tempFiles(t, root); len(left) != 1 {
		t.Fatalf("after b1's next attempt: %v; want only b2's", left)
	}
	rep, err := e.Abandon(ctx, "vol-k", "b2")
	if err != nil || rep.TempFiles != 1 {
		t.Fatalf("abandon b2: %+v, %v", rep, err)
	}
	if left := tempFiles(t, root); len(left) != 0 {
		t.Fatalf("after b2's abandon: %v", left)
	}
}

// latencySource is a volume on the network: every read waits a round trip. It counts the reads in flight.
type latencySource struct {
	*bytes.Reader
	inFlight, most atomic.Int64
}

func (s *latencySource) ReadAt(p []byte, off int64) (int, error) {
	n := s.inFlight.Add(1)
	defer s.inFlight.Add(-1)
	for m := s.most.Load(); n > m && !s.most.CompareAndSwap(m, n); m = s.most.Load() {
	}
	time.Sleep(20 * time.Millisecond)
	return s.Reader.ReadAt(p, off)
}

// TestChangedRunsAreReadAhead: an incremental with changed extents scattered one per cell has more reads
// in flight than it has workers (on RBD each is a round trip, and waiting on them one per worker made a
// 1 %-changed backup latency-bound), and restores byte-identical.
func TestChangedRunsAreReadAhead(t *testing.T) {
	const workers = 2
	e := newEngine(t, fsStore(t), func(o *backup.Options) { o.Concurrency = workers })
	img := makeImage(17, testChunk, "R", 64*testChunk)
	doBackup(t, e, "vol-p", "b1", img, nil)
	img2 := bytes.Clone(img)
	written := scribble(rand.New(rand.NewPCG(3, 4)), img2, 48)
	src := &latencySource{Reader: bytes.NewReader(img2)}
	doBackup(t, e, "vol-p", "b2", img2, func(r *backup.BackupRequest) {
		r.Parent, r.Changed, r.Source = "b1", written, src
	})
	if most := src.most.Load(); most <= workers {
		t.Errorf("at most %d reads in flight with %d workers: the changed runs are not read ahead", most, workers)
	}
	if got := restoreBytes(t, e, "vol-p", "b2", int64(len(img2))); !bytes.Equal(got, img2) {
		t.Fatal("b2 restores wrong bytes")
	}
}
