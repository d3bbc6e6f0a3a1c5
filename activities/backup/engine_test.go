package backup_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/holdfast/holdfast/activities/backup"
	"github.com/holdfast/holdfast/activities/backup/fs"
	"github.com/holdfast/holdfast/activities/backup/s3/s3test"
)

const testChunk = 64 << 10 // small chunks keep the tests fast; the format code is the same

// readCounter counts bytes read from a source and can fail reads at or past an offset (a simulated crash).
type readCounter struct {
	r      *bytes.Reader
	read   atomic.Int64
	failAt int64 // 0 = never
	// failAfter, when set, holds the failing read until it is closed (or a minute passes), so that a test
	// can let the chunks read so far reach a checkpoint first, however slow the machine.
	failAfter <-chan struct{}
}

func (r *readCounter) ReadAt(p []byte, off int64) (int, error) {
	if r.failAt > 0 && off >= r.failAt {
		if r.failAfter != nil {
			select {
			case <-r.failAfter:
			case <-time.After(time.Minute):
			}
		}
		return 0, errors.New("simulated crash: source device vanished")
	}
	r.read.Add(int64(len(p)))
	return r.r.ReadAt(p, off)
}

// memTarget is an io.WriterAt over a byte slice of fixed size.
type memTarget struct {
	mu  sync.Mutex
	buf []byte
}

func (m *memTarget) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off+int64(len(p)) > int64(len(m.buf)) {
		return 0, errors.New("write past end of target")
	}
	return copy(m.buf[off:], p), nil
}

func fsStore(t *testing.T) *fs.Store {
	t.Helper()
	st, err := fs.New(fs.Config{Path: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func newEngine(t *testing.T, st backup.Store, mod func(*backup.Options)) *backup.Engine {
	t.Helper()
	o := backup.Options{ChunkSize: testChunk, Concurrency: 3, Logger: slog.New(slog.DiscardHandler)}
	if mod != nil {
		mod(&o)
	}
	e, err := backup.New(st, o)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// makeImage builds a test image: kind is a sequence of per-chunk letters, R random, Z zeros, A/B repeated
// patterns, and the image is cut to size.
func makeImage(seed uint64, chunk int64, kinds string, size int64) []byte {
	img := make([]byte, size)
	rng := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)})
	for i := int64(0); i*chunk < size; i++ {
		part := img[i*chunk : min((i+1)*chunk, size)]
		switch kinds[int(i)%len(kinds)] {
		case 'R':
			_, _ = rng.Read(part)
		case 'Z':
		case 'A':
			for j := range part {
				part[j] = byte(j % 251)
			}
		case 'B':
			copy(part, bytes.Repeat([]byte("holdfast "), len(part)/9+1))
		}
	}
	return img
}

func doBackup(t *testing.T, e *backup.Engine, vol, id string, img []byte, mod func(*backup.BackupRequest)) *backup.Manifest {
	t.Helper()
	req := backup.BackupRequest{VolumeID: vol, BackupID: id, Source: bytes.NewReader(img), Size: int64(len(img)),
		SourceType: "raw", Labels: map[string]string{"test": t.Name()}}
	if mod != nil {
		mod(&req)
	}
	m, err := e.Backup(context.Background(), req)
	if err != nil {
		t.Fatalf("backup %s: %v", id, err)
	}
	return m
}

func restoreBytes(t *testing.T, e *backup.Engine, vol, id string, size int64) []byte {
	t.Helper()
	tgt := &memTarget{buf: bytes.Repeat([]byte{0xEE}, int(size))} // garbage: zero ranges must be written
	if _, err := e.Restore(context.Background(), backup.RestoreRequest{VolumeID: vol, BackupID: id, Target: tgt}); err != nil {
		t.Fatalf("restore %s: %v", id, err)
	}
	return tgt.buf
}

func TestRoundTrip(t *testing.T) {
	cases := []struct {
		name  string
		kinds string
		size  int64
	}{
		{"random", "R", 8 * testChunk},
		{"sparse", "RZZAZB", 12 * testChunk},
		{"all-zero", "Z", 7 * testChunk},
		{"not-multiple-of-chunk", "RZA", 5*testChunk + 12345},
		{"smaller-than-a-chunk", "R", 1000},
		{"trailing-zero-partial", "RZ", 3*testChunk + 77},
		{"empty", "R", 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEngine(t, fsStore(t), nil)
			img := makeImage(1, testChunk, c.kinds, c.size)
			m := doBackup(t, e, "vol-1", "b1", img, nil)
			if m.Size != c.size || m.ChunkSize != testChunk {
				t.Fatalf("manifest size %d chunk %d", m.Size, m.ChunkSize)
			}
			if got := restoreBytes(t, e, "vol-1", "b1", c.size); !bytes.Equal(got, img) {
				t.Fatal("restored image differs from source")
			}
		})
	}
}

// The real format: 4 MiB chunks, sparse file target left sparse.
func TestRoundTripDefaultChunkSparseFile(t *testing.T) {
	e := newEngine(t, fsStore(t), func(o *backup.Options) { o.ChunkSize = 0 })
	const cs = backup.DefaultChunkSize
	img := makeImage(2, cs, "RZZA", 4*cs+4097)
	m := doBackup(t, e, "vol-4m", "b1", img, nil)
	if len(m.Chunks) != 3 || len(m.ZeroRanges) != 1 || m.ZeroRanges[0].Length != 2*cs {
		t.Fatalf("chunks %d zero ranges %+v", len(m.Chunks), m.ZeroRanges)
	}
	path := filepath.Join(t.TempDir(), "restored.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := e.Restore(context.Background(), backup.RestoreRequest{VolumeID: "vol-4m", BackupID: "b1", Target: f, TargetZeroed: true}); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, img) {
		t.Fatal("restored file differs")
	}
}

func TestDedupUnchanged256MiB(t *testing.T) {
	if testing.Short() {
		t.Skip("256 MiB image")
	}
	cs := &putCounter{Store: fsStore(t)}
	e := newEngine(t, cs, func(o *backup.Options) { o.ChunkSize = 0; o.Concurrency = 4 })
	const size = 256 << 20
	img := makeImage(3, backup.DefaultChunkSize, "RRAZ", size)
	m1 := doBackup(t, e, "vol-d", "b1", img, nil)
	first := cs.chunkPuts.Load()
	if first == 0 {
		t.Fatal("first backup uploaded nothing")
	}
	// Second backup of the unchanged image, without a parent hint (dedup by Stat) and with one (by manifest).
	cs.chunkPuts.Store(0)
	m2 := doBackup(t, e, "vol-d", "b2", img, nil)
	m3 := doBackup(t, e, "vol-d", "b3", img, func(r *backup.BackupRequest) { r.Parent = "b2" })
	if n := cs.chunkPuts.Load(); n != 0 {
		t.Fatalf("unchanged backups uploaded %d chunks, want 0", n)
	}
	for _, m := range []*backup.Manifest{m2, m3} {
		if len(m.Chunks) != len(m1.Chunks) || m.StoredBytes != m1.StoredBytes {
			t.Fatalf("%s: %d chunks %d stored bytes; first had %d / %d", m.BackupID, len(m.Chunks), m.StoredBytes,
				len(m1.Chunks), m1.StoredBytes)
		}
	}
	// Each backup restores alone, even after the others are deleted and collected.
	for _, id := range []string{"b1", "b2"} {
		if err := e.Delete(context.Background(), "vol-d", id); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.GC(context.Background(), "vol-d", -time.Hour); err != nil {
		t.Fatal(err)
	}
	if got := restoreBytes(t, e, "vol-d", "b3", size); !bytes.Equal(got, img) {
		t.Fatal("b3 differs after its siblings were deleted and GC ran")
	}
}

// putCounter counts chunk uploads (the decorator shape the engine never notices).
type putCounter struct {
	backup.Store
	chunkPuts atomic.Int64
}

func (p *putCounter) Put(ctx context.Context, name string, r io.Reader, size int64) error {
	if strings.Contains(name, "/chunks/") {
		p.chunkPuts.Add(1)
	}
	return p.Store.Put(ctx, name, r, size)
}

func TestChangedExtentsReadOnlyChanged(t *testing.T) {
	cs := &putCounter{Store: fsStore(t)}
	e := newEngine(t, cs, nil)
	img := makeImage(4, testChunk, "RRZAR", 20*testChunk+500)
	doBackup(t, e, "vol-c", "b1", img, nil)

	// Change bytes inside chunk 3 and chunk 19, and grow nothing.
	img2 := bytes.Clone(img)
	img2[3*testChunk+10] ^= 0xFF
	img2[19*testChunk+1] ^= 0xFF
	src := &readCounter{r: bytes.NewReader(img2)}
	cs.chunkPuts.Store(0)
	m := doBackup(t, e, "vol-c", "b2", img2, func(r *backup.BackupRequest) {
		r.Source = src
		r.Parent = "b1"
		r.Changed = []backup.Extent{{Offset: 19*testChunk + 1, Length: 1}, {Offset: 3*testChunk + 10, Length: 1}}
	})
	// The grain within a cell is 1/64 of it, at least 4 KiB: with 64 KiB test chunks, 4 KiB.
	if got := src.read.Load(); got != 2*4096 {
		t.Fatalf("read %d bytes, want only the 2 changed blocks (%d)", got, 2*4096)
	}
	if n := cs.chunkPuts.Load(); n != 2 {
		t.Fatalf("uploaded %d chunks, want 2 (one per changed cell)", n)
	}
	if got := restoreBytes(t, e, "vol-c", "b2", int64(len(img2))); !bytes.Equal(got, img2) {
		t.Fatal("the spliced backup restores wrong bytes")
	}
	// "Nothing changed" (an empty, non-nil hint) reads nothing at all.
	none := &readCounter{r: bytes.NewReader(img2)}
	doBackup(t, e, "vol-c", "b3", img2, func(r *backup.BackupRequest) { r.Source = none; r.Parent = "b2"; r.Changed = []backup.Extent{} })
	if got := none.read.Load(); got != 0 {
		t.Fatalf("empty changed-extent hint: read %d bytes", got)
	}
	if got := restoreBytes(t, e, "vol-c", "b3", int64(len(img2))); !bytes.Equal(got, img2) {
		t.Fatal("backup from an empty hint restores wrong bytes")
	}
	if m.Parent != "b1" {
		t.Fatalf("parent %q", m.Parent)
	}
	if got := restoreBytes(t, e, "vol-c", "b2", int64(len(img2))); !bytes.Equal(got, img2) {
		t.Fatal("incremental backup restores wrong bytes")
	}
	if got := restoreBytes(t, e, "vol-c", "b1", int64(len(img))); !bytes.Equal(got, img) {
		t.Fatal("parent no longer restores")
	}
}

func TestResumeAfterCrash(t *testing.T) {
	img := makeImage(5, testChunk, "RAZRRBZ", 40*testChunk+999)
	clock := func() time.Time { return time.Date(2025, 6, 1, 2, 3, 4, 0, time.UTC) }
	opts := func(o *backup.Options) { o.CheckpointEvery = 3; o.Now = clock; o.ProgressInterval = time.Nanosecond }

	// Reference: an uninterrupted run in its own store.
	ref := doBackup(t, newEngine(t, fsStore(t), opts), "vol-r", "b1", img, nil)

	st := fsStore(t)
	e := newEngine(t, st, opts)
	// The crash waits for a first checkpoint: with fast workers, the cells past it could otherwise all be read
	// (and the crash happen) while the first cell's worker has yet to run, and there would be nothing to resume.
	checkpointed := make(chan struct{})
	var once sync.Once
	crashing := &readCounter{r: bytes.NewReader(img), failAt: 25 * testChunk, failAfter: checkpointed}
	var last backup.Progress
	_, err := e.Backup(context.Background(), backup.BackupRequest{VolumeID: "vol-r", BackupID: "b1",
		Source: crashing, Size: int64(len(img)), SourceType: "raw", Labels: map[string]string{"test": t.Name()},
		Progress: func(p backup.Progress) {
			last = p
			if p.NextOffset > 0 {
				once.Do(func() { close(checkpointed) })
			}
		}})
	if err == nil || !strings.Contains(err.Error(), "simulated crash") {
		t.Fatalf("crashing backup: %v", err)
	}
	if _, err := e.Manifest(context.Background(), "vol-r", "b1"); !errors.Is(err, backup.ErrNotExist) {
		t.Fatalf("a crashed backup has a manifest: %v", err)
	}
	if last.NextOffset == 0 || last.NextOffset >= int64(len(img)) {
		t.Fatalf("last checkpoint %d", last.NextOffset)
	}
	// The checkpoint travels through heartbeat details as JSON.
	raw, err := json.Marshal(last)
	if err != nil {
		t.Fatal(err)
	}
	var hb backup.Progress
	if err := json.Unmarshal(raw, &hb); err != nil || hb != last {
		t.Fatalf("progress JSON round trip: %+v %v", hb, err)
	}

	resumed := &readCounter{r: bytes.NewReader(img)}
	m := doBackup(t, e, "vol-r", "b1", img, func(r *backup.BackupRequest) { r.Source = resumed; r.Resume = hb.Checkpoint() })
	if got := resumed.read.Load(); got >= int64(len(img)) || got > int64(len(img))-hb.NextOffset {
		t.Fatalf("resumed run read %d bytes; checkpoint was at %d of %d", got, hb.NextOffset, len(img))
	}
	m.CompletedAt, ref.CompletedAt = time.Time{}, time.Time{}
	m.ManifestHash, ref.ManifestHash = "", ""
	a, _ := json.Marshal(m)
	b, _ := json.Marshal(ref)
	if !bytes.Equal(a, b) {
		t.Fatalf("resumed manifest differs from an uninterrupted run:\n%s\n%s", a, b)
	}
	if got := restoreBytes(t, e, "vol-r", "b1", int64(len(img))); !bytes.Equal(got, img) {
		t.Fatal("resumed backup restores wrong bytes")
	}
	// The journal is gone once the manifest is written.
	_ = st.List(context.Background(), "volumes/vol-r/inprogress/", func(oi backup.ObjectInfo) error {
		t.Errorf("journal left behind: %s", oi.Name)
		return nil
	})
}

// A retry after the commit point returns the existing backup without reading the source again.
func TestBackupIdempotentAfterCommit(t *testing.T) {
	e := newEngine(t, fsStore(t), nil)
	img := makeImage(14, testChunk, "RZ", 4*testChunk)
	m1 := doBackup(t, e, "vol-i", "b1", img, nil)
	src := &readCounter{r: bytes.NewReader(img)}
	m2 := doBackup(t, e, "vol-i", "b1", img, func(r *backup.BackupRequest) { r.Source = src })
	if src.read.Load() != 0 || m2.ManifestHash != m1.ManifestHash {
		t.Fatalf("retry re-read %d bytes / changed the manifest", src.read.Load())
	}
}

func TestCancelLeavesNoBackup(t *testing.T) {
	e := newEngine(t, fsStore(t), nil)
	img := makeImage(6, testChunk, "R", 30*testChunk)
	ctx, cancel := context.WithCancel(context.Background())
	var calls atomic.Int64
	src := readerFunc(func(p []byte, off int64) (int, error) {
		if calls.Add(1) == 5 {
			cancel()
		}
		return bytes.NewReader(img).ReadAt(p, off)
	})
	_, err := e.Backup(ctx, backup.BackupRequest{VolumeID: "vol-x", BackupID: "b1", Source: src, Size: int64(len(img))})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled backup: %v", err)
	}
	if n := calls.Load(); n > 5+3 {
		t.Fatalf("read %d chunks after cancel at the 5th; want at most one more per worker", n)
	}
	if _, err := e.Manifest(context.Background(), "vol-x", "b1"); !errors.Is(err, backup.ErrNotExist) {
		t.Fatalf("cancelled backup has a manifest: %v", err)
	}
}

type readerFunc func(p []byte, off int64) (int, error)

func (f readerFunc) ReadAt(p []byte, off int64) (int, error) { return f(p, off) }

func TestCorruptChunk(t *testing.T) {
	dir := t.TempDir()
	st, err := fs.New(fs.Config{Path: dir})
	if err != nil {
		t.Fatal(err)
	}
	e := newEngine(t, st, nil)
	img := makeImage(7, testChunk, "RA", 6*testChunk)
	m := doBackup(t, e, "vol-k", "b1", img, nil)
	victim := m.Chunks[2]
	p := filepath.Join(dir, "volumes", "vol-k", "chunks", victim.ID[:2], victim.ID)
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0x01
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}

	rep, err := e.Verify(context.Background(), backup.VerifyRequest{VolumeID: "vol-k", BackupID: "b1"})
	if err != nil || !rep.OK() {
		t.Fatalf("shallow verify (same size) should pass: %+v %v", rep, err)
	}
	rep, err = e.Verify(context.Background(), backup.VerifyRequest{VolumeID: "vol-k", BackupID: "b1", Deep: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK() || len(rep.Corrupt) != 1 || rep.Corrupt[0].ID != victim.ID || rep.DeepChecked != rep.Chunks {
		t.Fatalf("deep verify report %+v, want exactly chunk %s corrupt", rep, victim.ID)
	}

	tgt := &memTarget{buf: make([]byte, len(img))}
	_, err = e.Restore(context.Background(), backup.RestoreRequest{VolumeID: "vol-k", BackupID: "b1", Target: tgt})
	var ce *backup.ChunkError
	if !errors.As(err, &ce) || !errors.Is(err, backup.ErrCorrupt) || ce.ID != victim.ID || ce.Offset != victim.Offset {
		t.Fatalf("restore of a corrupt backup: %v, want a ChunkError for %s wrapping ErrCorrupt", err, victim.ID)
	}

	// A missing chunk: shallow verify names it; restore fails with ErrNotExist.
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	rep, err = e.Verify(context.Background(), backup.VerifyRequest{VolumeID: "vol-k", BackupID: "b1"})
	if err != nil || len(rep.Missing) != 1 || rep.Missing[0].ID != victim.ID {
		t.Fatalf("verify after delete: %+v %v", rep, err)
	}
	_, err = e.Restore(context.Background(), backup.RestoreRequest{VolumeID: "vol-k", BackupID: "b1", Target: tgt})
	if !errors.As(err, &ce) || !errors.Is(err, backup.ErrNotExist) {
		t.Fatalf("restore with a missing chunk: %v", err)
	}

	// A torn manifest is refused, not half-used.
	mp := filepath.Join(dir, "volumes", "vol-k", "manifests", "b1.json")
	mb, _ := os.ReadFile(mp)
	if err := os.WriteFile(mp, bytes.Replace(mb, []byte(`"raw"`), []byte(`"rbd"`), 1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Manifest(context.Background(), "vol-k", "b1"); !errors.Is(err, backup.ErrInvalidManifest) {
		t.Fatalf("modified manifest: %v", err)
	}
}

func TestVerifySample(t *testing.T) {
	e := newEngine(t, fsStore(t), nil)
	img := makeImage(8, testChunk, "R", 40*testChunk)
	doBackup(t, e, "vol-s", "b1", img, nil)
	rep, err := e.Verify(context.Background(), backup.VerifyRequest{VolumeID: "vol-s", BackupID: "b1", Deep: true, SamplePercent: 25})
	if err != nil || !rep.OK() {
		t.Fatalf("%+v %v", rep, err)
	}
	if rep.DeepChecked == 0 || rep.DeepChecked == rep.Chunks {
		// 40 chunks at 25%: all or none has probability < 1e-5.
		t.Fatalf("sampled %d of %d", rep.DeepChecked, rep.Chunks)
	}
}

func TestGCKeepsLiveChunks(t *testing.T) {
	st := fsStore(t)
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	e := newEngine(t, st, nil)
	imgA := makeImage(9, testChunk, "RRA", 9*testChunk)
	imgB := bytes.Clone(imgA)
	copy(imgB[:2*testChunk], makeImage(10, testChunk, "R", 2*testChunk)) // B shares all but 2 chunks
	mA := doBackup(t, e, "vol-g", "a", imgA, nil)
	mB := doBackup(t, e, "vol-g", "b", imgB, nil)
	doBackup(t, e, "vol-other", "x", imgA, nil)

	// Right after the backups, nothing is old enough: everything survives.
	rep, err := e.GC(context.Background(), "vol-g", time.Hour)
	if err != nil || rep.DeletedChunks != 0 {
		t.Fatalf("GC within grace: %+v %v", rep, err)
	}
	if err := e.Delete(context.Background(), "vol-g", "a"); err != nil {
		t.Fatal(err)
	}
	if err := e.Delete(context.Background(), "vol-g", "a"); err != nil { // idempotent
		t.Fatal(err)
	}
	// Young unreferenced chunks survive a GC whose grace covers them.
	rep, err = e.GC(context.Background(), "vol-g", time.Hour)
	if err != nil || rep.DeletedChunks != 0 || rep.YoungChunks != 2 {
		t.Fatalf("GC after delete, within grace: %+v %v", rep, err)
	}
	late := newEngine(t, st, func(o *backup.Options) { o.Now = func() time.Time { return now.Add(100 * 365 * 24 * time.Hour) } })
	rep, err = late.GC(context.Background(), "vol-g", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if rep.DeletedChunks != 2 || rep.Manifests != 1 {
		t.Fatalf("GC report %+v, want the 2 chunks only a referenced", rep)
	}
	if got := restoreBytes(t, e, "vol-g", "b", int64(len(imgB))); !bytes.Equal(got, imgB) {
		t.Fatal("live backup damaged by GC")
	}
	if v, err := e.Verify(context.Background(), backup.VerifyRequest{VolumeID: "vol-g", BackupID: "b", Deep: true}); err != nil || !v.OK() {
		t.Fatalf("verify after GC: %+v %v", v, err)
	}
	if got := restoreBytes(t, e, "vol-other", "x", int64(len(imgA))); !bytes.Equal(got, imgA) {
		t.Fatal("GC of one volume touched another")
	}
	_ = mA
	_ = mB

	// An unreadable manifest stops GC from sweeping anything.
	if err := backup.PutBytes(context.Background(), st, "volumes/vol-g/manifests/broken.json", []byte("{")); err != nil {
		t.Fatal(err)
	}
	if _, err := late.GC(context.Background(), "vol-g", time.Hour); err == nil {
		t.Fatal("GC swept with an unreadable manifest")
	}
}

func TestEncryption(t *testing.T) {
	dir := t.TempDir()
	st, err := fs.New(fs.Config{Path: dir})
	if err != nil {
		t.Fatal(err)
	}
	key := bytes.Repeat([]byte{7}, 32)
	e := newEngine(t, st, func(o *backup.Options) { o.Key = key })
	img := makeImage(11, testChunk, "AB", 4*testChunk) // compressible, recognisable plaintext
	m := doBackup(t, e, "vol-e", "b1", img, nil)
	if m.Encryption != backup.EncryptionAES || m.Hash != backup.HashBLAKE3Keyed || m.KeyID == "" {
		t.Fatalf("manifest %+v", m)
	}
	if got := restoreBytes(t, e, "vol-e", "b1", int64(len(img))); !bytes.Equal(got, img) {
		t.Fatal("encrypted round trip differs")
	}
	// Names are keyed: the same data unencrypted gets different chunk ids.
	plain := doBackup(t, newEngine(t, fsStore(t), nil), "vol-e", "b1", img, nil)
	if plain.Chunks[0].ID == m.Chunks[0].ID {
		t.Fatal("encrypted chunk names equal the plaintext hashes")
	}
	// No plaintext in any stored chunk.
	err = st.List(context.Background(), "volumes/vol-e/chunks/", func(oi backup.ObjectInfo) error {
		b, err := os.ReadFile(filepath.Join(dir, oi.Name))
		if err != nil {
			return err
		}
		if bytes.Contains(b, []byte("holdfast holdfast")) {
			t.Errorf("plaintext visible in %s", oi.Name)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	wrong := newEngine(t, st, func(o *backup.Options) { o.Key = bytes.Repeat([]byte{8}, 32) })
	tgt := &memTarget{buf: make([]byte, len(img))}
	if _, err := wrong.Restore(context.Background(), backup.RestoreRequest{VolumeID: "vol-e", BackupID: "b1", Target: tgt}); !errors.Is(err, backup.ErrWrongKey) {
		t.Fatalf("restore with the wrong key: %v", err)
	}
	noKey := newEngine(t, st, nil)
	if _, err := noKey.Restore(context.Background(), backup.RestoreRequest{VolumeID: "vol-e", BackupID: "b1", Target: tgt}); !errors.Is(err, backup.ErrWrongKey) {
		t.Fatalf("restore without a key: %v", err)
	}
	if _, err := wrong.Verify(context.Background(), backup.VerifyRequest{VolumeID: "vol-e", BackupID: "b1", Deep: true}); !errors.Is(err, backup.ErrWrongKey) {
		t.Fatalf("deep verify with the wrong key: %v", err)
	}
	if _, err := backup.New(st, backup.Options{Key: []byte("short")}); err == nil {
		t.Fatal("a short key was accepted")
	}
}

func TestListCatalog(t *testing.T) {
	st := fsStore(t)
	e := newEngine(t, st, nil)
	img := makeImage(12, testChunk, "RZ", 3*testChunk)
	doBackup(t, e, "vol-1", "b1", img, nil)
	doBackup(t, e, "vol-2", "b1", img, nil)
	doBackup(t, e, "vol-1", "b2", img, nil)
	// A fresh engine (a new control plane after a disaster) sees the whole catalog from the store alone.
	ms, err := newEngine(t, st, nil).List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range ms {
		got = append(got, m.VolumeID+"/"+m.BackupID+"/"+m.SourceType)
	}
	if strings.Join(got, ",") != "vol-1/b1/raw,vol-1/b2/raw,vol-2/b1/raw" {
		t.Fatalf("catalog %v", got)
	}
	if err := backup.PutBytes(context.Background(), st, "volumes/vol-3/manifests/bad.json", []byte("nope")); err != nil {
		t.Fatal(err)
	}
	ms, err = e.List(context.Background())
	if err == nil || len(ms) != 3 {
		t.Fatalf("a bad manifest must be reported without hiding the good ones: %d %v", len(ms), err)
	}
}

func TestBadRequests(t *testing.T) {
	e := newEngine(t, fsStore(t), nil)
	ctx := context.Background()
	for _, req := range []backup.BackupRequest{
		{VolumeID: "../x", BackupID: "b", Source: bytes.NewReader(nil)},
		{VolumeID: "v", BackupID: "", Source: bytes.NewReader(nil)},
		{VolumeID: "v", BackupID: "b"},
		{VolumeID: "v", BackupID: "b", Source: bytes.NewReader(nil), Parent: "missing"},
	} {
		if _, err := e.Backup(ctx, req); err == nil {
			t.Errorf("Backup(%+v) succeeded", req)
		}
	}
	if _, err := e.Restore(ctx, backup.RestoreRequest{VolumeID: "v", BackupID: "nope", Target: &memTarget{}}); !errors.Is(err, backup.ErrNotExist) {
		t.Errorf("restore of a missing backup: %v", err)
	}
	// A source shorter than the declared size is an error, not a silently padded backup.
	if _, err := e.Backup(ctx, backup.BackupRequest{VolumeID: "v", BackupID: "b", Source: bytes.NewReader(make([]byte, 10)), Size: 100}); err == nil {
		t.Error("short source accepted")
	}
}

// The engine runs the same on real S3 servers.
func TestS3RoundTrip(t *testing.T) {
	for _, srv := range s3test.Servers() {
		t.Run(srv.Name, func(t *testing.T) {
			st := s3test.NewStore(t, srv)
			e := newEngine(t, st, func(o *backup.Options) { o.Key = bytes.Repeat([]byte{1}, 32) })
			img := makeImage(13, testChunk, "RZAB", 10*testChunk+3)
			doBackup(t, e, "vol-s3", "b1", img, nil)
			cs := &putCounter{Store: st}
			e2 := newEngine(t, cs, func(o *backup.Options) { o.Key = bytes.Repeat([]byte{1}, 32) })
			doBackup(t, e2, "vol-s3", "b2", img, nil)
			if n := cs.chunkPuts.Load(); n != 0 {
				t.Fatalf("second backup uploaded %d chunks", n)
			}
			if got := restoreBytes(t, e, "vol-s3", "b2", int64(len(img))); !bytes.Equal(got, img) {
				t.Fatal("S3 round trip differs")
			}
			if err := e.Delete(context.Background(), "vol-s3", "b1"); err != nil {
				t.Fatal(err)
			}
			late := newEngine(t, st, func(o *backup.Options) {
				o.Key = bytes.Repeat([]byte{1}, 32)
				o.Now = func() time.Time { return time.Now().Add(48 * time.Hour) }
			})
			if rep, err := late.GC(context.Background(), "vol-s3", time.Hour); err != nil || rep.DeletedChunks != 0 || rep.Manifests != 1 {
				t.Fatalf("GC: %+v %v", rep, err)
			}
			if v, err := e.Verify(context.Background(), backup.VerifyRequest{VolumeID: "vol-s3", BackupID: "b2", Deep: true}); err != nil || !v.OK() {
				t.Fatalf("verify: %+v %v", v, err)
			}
		})
	}
}

// A backup still running (fresh journal) keeps its already-uploaded chunks through GC, however old they
// are, and the crashed-and-resumed backup completes intact.
func TestGCKeepsChunksOfRunningBackup(t *testing.T) {
	dir := t.TempDir()
	st, err := fs.New(fs.Config{Path: dir})
	if err != nil {
		t.Fatal(err)
	}
	e := newEngine(t, st, func(o *backup.Options) { o.CheckpointEvery = 2; o.ProgressInterval = time.Nanosecond })
	img := makeImage(15, testChunk, "R", 12*testChunk)
	var last backup.Progress
	checkpointed := make(chan struct{})
	var once sync.Once
	_, err = e.Backup(context.Background(), backup.BackupRequest{VolumeID: "vol-j", BackupID: "b1", Size: int64(len(img)),
		Source: &readCounter{r: bytes.NewReader(img), failAt: 7 * testChunk, failAfter: checkpointed},
		Progress: func(p backup.Progress) {
			last = p
			if p.NextOffset > 0 {
				once.Do(func() { close(checkpointed) })
			}
		}})
	if err == nil || last.NextOffset == 0 {
		t.Fatalf("crash: %v, checkpoint %d", err, last.NextOffset)
	}
	old := time.Now().Add(-365 * 24 * time.Hour)
	err = filepath.WalkDir(filepath.Join(dir, "volumes", "vol-j", "chunks"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			err = os.Chtimes(p, old, old)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := e.GC(context.Background(), "vol-j", time.Hour)
	// Journalled chunks are live; chunks uploaded past the last checkpoint are orphans (here aged past grace,
	// so they may go: the resumed run uploads them again).
	if err != nil || rep.LiveChunks < int(last.NextOffset/testChunk) || rep.StaleJournals != 0 {
		t.Fatalf("GC during a running backup: %+v %v", rep, err)
	}
	doBackup(t, e, "vol-j", "b1", img, func(r *backup.BackupRequest) { r.Resume = last.Checkpoint() })
	if got := restoreBytes(t, e, "vol-j", "b1", int64(len(img))); !bytes.Equal(got, img) {
		t.Fatal("resumed backup differs")
	}
	if v, err := e.Verify(context.Background(), backup.VerifyRequest{VolumeID: "vol-j", BackupID: "b1", Deep: true}); err != nil || !v.OK() {
		t.Fatalf("verify: %+v %v", v, err)
	}
}

func TestHooksReportDeduplicatedBytesAndThrottleWaits(t *testing.T) {
	var dedup atomic.Int64
	var waited atomic.Int64
	e := newEngine(t, fsStore(t), func(o *backup.Options) {
		o.Limiter = backup.NewLimiter(float64(64 * testChunk)) // fast, but every chunk waits for budget
		o.OnDeduplicated = func(n int64) { dedup.Add(n) }
		o.OnThrottled = func(d time.Duration) { waited.Add(int64(d) + 1) }
	})
	img := makeImage(9, testChunk, "RRZR", 4*testChunk)
	doBackup(t, e, "vol-h", "b1", img, nil)
	if got := dedup.Load(); got != 0 {
		t.Fatalf("first backup reported %d deduplicated bytes, want 0", got)
	}
	if waited.Load() == 0 {
		t.Fatal("a limited backup reported no throttle wait")
	}
	doBackup(t, e, "vol-h", "b2", img, nil)
	if got, want := dedup.Load(), int64(3*testChunk); got != want {
		t.Fatalf("unchanged backup reported %d deduplicated bytes, want %d (its three non-zero chunks)", got, want)
	}
}

// writeCounter is a restore target that counts the chunk bytes written to it and its flushes, and can fail
// the writes past a point (a crash) once it was flushed at least once.
type writeCounter struct {
	memTarget
	written, flushes atomic.Int64
	failAt           int64 // > 0: writes fail once this many bytes were written and a flush happened
}

func (w *writeCounter) WriteAt(p []byte, off int64) (int, error) {
	if n := w.written.Add(int64(len(p))); w.failAt > 0 && n > w.failAt && w.flushes.Load() > 0 {
		return 0, errors.New("simulated crash")
	}
	return w.memTarget.WriteAt(p, off)
}

// A restore that crashes resumes from the last point it flushed: the retry writes only the chunks from
// there, and the target is byte-identical. Without a Flush there is no resume point.
func TestRestoreResumesFromItsLastFlush(t *testing.T) {
	img := makeImage(6, testChunk, "RAZRRBZR", 40*testChunk+999)
	// One worker: chunks are written in order, so the flushes (every 4 chunks) come where the test expects.
	opts := func(o *backup.Options) {
		o.CheckpointEvery = 4
		o.ProgressInterval = time.Nanosecond
		o.Concurrency = 1
	}
	e := newEngine(t, fsStore(t), opts)
	m := doBackup(t, e, "vol-x", "b1", img, nil)
	var chunkBytes int64
	for _, c := range m.Chunks {
		chunkBytes += c.Length
	}

	target := &writeCounter{memTarget: memTarget{buf: make([]byte, len(img))}, failAt: chunkBytes / 3}
	var last backup.Progress
	_, err := e.Restore(context.Background(), backup.RestoreRequest{VolumeID: "vol-x", BackupID: "b1",
		Target: target, TargetZeroed: true, Progress: func(p backup.Progress) { last = p },
		Flush: func() error { target.flushes.Add(1); return nil }})
	if err == nil || !strings.Contains(err.Error(), "simulated crash") {
		t.Fatalf("crashing restore: %v", err)
	}
	if target.flushes.Load() == 0 || last.NextOffset == 0 || last.NextOffset >= int64(len(img)) {
		t.Fatalf("no resume point: %d flushes, last progress %+v", target.flushes.Load(), last)
	}
	var below int64
	for _, c := range m.Chunks {
		if c.Offset < last.NextOffset {
			below += c.Length
		}
	}

	target.failAt = 0
	target.written.Store(0)
	res, err := e.Restore(context.Background(), backup.RestoreRequest{VolumeID: "vol-x", BackupID: "b1",
		Target: target, TargetZeroed: true, Resume: last.Checkpoint(), Flush: func() error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	if got := target.written.Load(); got != chunkBytes-below || res.BytesSkipped != below {
		t.Fatalf("resumed at %d: wrote %d bytes, skipped %d; want %d written, %d skipped", last.NextOffset, got,
			res.BytesSkipped, chunkBytes-below, below)
	}
	if !bytes.Equal(target.buf, img) {
		t.Fatal("resumed restore differs from the image")
	}

	// No Flush: progress never names a resume point, so a retry writes everything again.
	var points []int64
	if _, err := e.Restore(context.Background(), backup.RestoreRequest{VolumeID: "vol-x", BackupID: "b1",
		Target: &memTarget{buf: make([]byte, len(img))}, Progress: func(p backup.Progress) {
			points = append(points, p.NextOffset)
		}}); err != nil {
		t.Fatal(err)
	}
	for _, p := range points {
		if p != 0 {
			t.Fatalf("a restore without Flush reported resume point %d", p)
		}
	}
}
