package backup_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/holdfast/holdfast/activities/backup"
	"github.com/holdfast/holdfast/activities/backup/s3/s3test"
)

// objects lists a store's object names.
func objects(t *testing.T, st backup.Store, prefix string) []string {
	t.Helper()
	var names []string
	if err := st.List(context.Background(), prefix, func(oi backup.ObjectInfo) error {
		names = append(names, oi.Name)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return names
}

func replicate(t *testing.T, src, dst *backup.Engine, vol, id string) backup.ReplicateReport {
	t.Helper()
	rep, err := src.Replicate(context.Background(), dst, vol, id, nil)
	if err != nil {
		t.Fatalf("replicate %s/%s: %v", vol, id, err)
	}
	if !rep.Verified {
		t.Fatalf("replicate %s/%s: not verified: %+v", vol, id, rep)
	}
	return rep
}

// testReplicate replicates two backups of a volume (the second sharing most chunks with the first) and
// checks the replica restores byte-identically from the destination alone, its manifest is the source's
// byte for byte, only missing chunks travel, and a second run copies nothing.
func testReplicate(t *testing.T, srcStore, dstStore backup.Store, key []byte) {
	ctx := context.Background()
	withKey := func(o *backup.Options) { o.Key = key }
	src := newEngine(t, srcStore, withKey)
	counted := &putCounter{Store: dstStore}
	dst := newEngine(t, counted, withKey)
	img := makeImage(31, testChunk, "RZABRR", 12*testChunk+777)
	m1 := doBackup(t, src, "vol-r", "b1", img, nil)
	img2 := bytes.Clone(img)
	copy(img2[5*testChunk:], makeImage(32, testChunk, "R", testChunk)) // one chunk differs
	doBackup(t, src, "vol-r", "b2", img2, func(r *backup.BackupRequest) { r.Parent = "b1" })

	var phases []string
	rep, err := src.Replicate(ctx, dst, "vol-r", "b1", func(p backup.Progress) {
		if len(phases) == 0 || phases[len(phases)-1] != p.Phase {
			phases = append(phases, p.Phase)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	distinct := map[string]int64{}
	for _, c := range m1.Chunks {
		distinct[c.ID] = c.StoredSize
	}
	var stored int64
	for _, s := range distinct {
		stored += s
	}
	if rep.Chunks != len(distinct) || rep.ChunksCopied != len(distinct) || rep.ChunksPresent != 0 ||
		rep.BytesCopied != stored || !rep.Verified || int(counted.chunkPuts.Load()) != len(distinct) {
		t.Fatalf("first replication %+v (%d chunk puts), want all %d chunks, %d bytes", rep,
			counted.chunkPuts.Load(), len(distinct), stored)
	}
	if got := strings.Join(phases, ","); !strings.HasPrefix(got, backup.PhasePrepare+","+backup.PhaseTransfer) ||
		!strings.HasSuffix(got, backup.PhaseDone) {
		t.Fatalf("progress phases %s", got)
	}
	// The replica is the backup: same manifest bytes, restores alone to the same image.
	a, err := backup.ReadAll(ctx, srcStore, "volumes/vol-r/manifests/b1.json", 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	b, err := backup.ReadAll(ctx, dstStore, "volumes/vol-r/manifests/b1.json", 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatalf("replica manifest differs from the source's:\n%s\n%s", a, b)
	}
	if got := restoreBytes(t, newEngine(t, dstStore, withKey), "vol-r", "b1", int64(len(img))); !bytes.Equal(got, img) {
		t.Fatal("restore from the replica differs from the source image")
	}

	// The second backup: only its one new chunk travels.
	counted.chunkPuts.Store(0)
	rep = replicate(t, src, dst, "vol-r", "b2")
	if rep.ChunksCopied != 1 || rep.ChunksPresent != rep.Chunks-1 || counted.chunkPuts.Load() != 1 {
		t.Fatalf("incremental replication %+v, want exactly the changed chunk", rep)
	}
	if got := restoreBytes(t, dst, "vol-r", "b2", int64(len(img2))); !bytes.Equal(got, img2) {
		t.Fatal("restore of the incremental replica differs")
	}

	// Idempotent: running again copies nothing and still verifies.
	counted.chunkPuts.Store(0)
	for _, id := range []string{"b1", "b2"} {
		if rep := replicate(t, src, dst, "vol-r", id); rep.ChunksCopied != 0 || rep.BytesCopied != 0 || rep.ChunksPresent != rep.Chunks {
			t.Fatalf("second run of %s: %+v, want nothing copied", id, rep)
		}
	}
	if n := counted.chunkPuts.Load(); n != 0 {
		t.Fatalf("second runs put %d chunks", n)
	}

	// A chunk lost at the destination is copied again by the next run.
	lost := m1.Chunks[0].ID
	if err := dstStore.Delete(ctx, chunkObject("vol-r", lost)); err != nil {
		t.Fatal(err)
	}
	if rep := replicate(t, src, dst, "vol-r", "b1"); rep.ChunksCopied != 1 {
		t.Fatalf("repair run %+v, want the lost chunk copied", rep)
	}
}

func TestReplicateFSToFS(t *testing.T) {
	testReplicate(t, fsStore(t), fsStore(t), nil)
}

func TestReplicateFSToFSEncrypted(t *testing.T) {
	testReplicate(t, fsStore(t), fsStore(t), bytes.Repeat([]byte{5}, 32))
}

func TestReplicateFSToS3(t *testing.T) {
	for _, srv := range s3test.Servers() {
		t.Run(srv.Name, func(t *testing.T) {
			testReplicate(t, fsStore(t), s3test.NewStore(t, srv), bytes.Repeat([]byte{6}, 32))
		})
	}
}

func TestReplicateRefusesEncryptionMismatch(t *testing.T) {
	keyA, keyB := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	img := makeImage(33, testChunk, "R", 3*testChunk)
	for name, keys := range map[string][2][]byte{"plain-to-encrypted": {nil, keyA},
		"encrypted-to-plain": {keyA, nil}, "other-key": {keyA, keyB}} {
		t.Run(name, func(t *testing.T) {
			src := newEngine(t, fsStore(t), func(o *backup.Options) { o.Key = keys[0] })
			dstStore := fsStore(t)
			dst := newEngine(t, dstStore, func(o *backup.Options) { o.Key = keys[1] })
			doBackup(t, src, "vol-e", "b1", img, nil)
			_, err := src.Replicate(context.Background(), dst, "vol-e", "b1", nil)
			if !errors.Is(err, backup.ErrEncryptionMismatch) || !errors.Is(err, backup.ErrWrongKey) {
				t.Fatalf("replicate: %v, want ErrEncryptionMismatch", err)
			}
			if left := objects(t, dstStore, ""); len(left) != 0 {
				t.Fatalf("a refused replication wrote %v", left)
			}
		})
	}
}

// cancelAfterPuts cancels a context once n chunk objects were put through it.
type cancelAfterPuts struct {
	backup.Store
	n      int64
	puts   atomic.Int64
	cancel context.CancelFunc
}

// Put cancels as the nth chunk put starts (not when it ends: while a slow put ran, the other workers could
// complete any number of puts, and the bound the test checks would depend on the machine's speed).
func (c *cancelAfterPuts) Put(ctx context.Context, name string, r io.Reader, size int64) error {
	if strings.Contains(name, "/chunks/") && c.puts.Add(1) == c.n {
		c.cancel()
	}
	return c.Store.Put(ctx, name, r, size)
}

func TestReplicateCancelWritesNoManifestAndResumes(t *testing.T) {
	src := newEngine(t, fsStore(t), nil)
	img := makeImage(34, testChunk, "R", 40*testChunk)
	doBackup(t, src, "vol-c", "b1", img, nil)
	dstStore := fsStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cancelling := &cancelAfterPuts{Store: dstStore, n: 5, cancel: cancel}
	_, err := src.Replicate(ctx, newEngine(t, cancelling, nil), "vol-c", "b1", nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled replication: %v", err)
	}
	if got := cancelling.puts.Load(); got > 5+3 {
		t.Fatalf("%d chunks put after cancelling at the 5th; want at most one more per worker", got)
	}
	if left := objects(t, dstStore, "volumes/vol-c/manifests/"); len(left) != 0 {
		t.Fatalf("a cancelled replication wrote a manifest: %v", left)
	}
	copied := len(objects(t, dstStore, "volumes/vol-c/chunks/"))
	rep := replicate(t, src, newEngine(t, dstStore, nil), "vol-c", "b1")
	if rep.ChunksPresent != copied || rep.ChunksCopied != 40-copied {
		t.Fatalf("run after the cancel %+v; %d chunks were already there", rep, copied)
	}
	if got := restoreBytes(t, newEngine(t, dstStore, nil), "vol-c", "b1", int64(len(img))); !bytes.Equal(got, img) {
		t.Fatal("replica completed after a cancel differs")
	}
}

// A damaged source chunk fails the replication and is never copied; no replica appears.
func TestReplicateRefusesDamagedSource(t *testing.T) {
	srcStore, dstStore := fsStore(t), fsStore(t)
	src := newEngine(t, srcStore, nil)
	m := doBackup(t, src, "vol-d", "b1", makeImage(35, testChunk, "RA", 6*testChunk), nil)
	victim := m.Chunks[3]
	flipByte(t, srcStore, chunkObject("vol-d", victim.ID))
	_, err := src.Replicate(context.Background(), newEngine(t, dstStore, nil), "vol-d", "b1", nil)
	var ce *backup.ChunkError
	if !errors.As(err, &ce) || ce.ID != victim.ID || !errors.Is(err, backup.ErrCorrupt) {
		t.Fatalf("replicate from a damaged source: %v, want a ChunkError for %s wrapping ErrCorrupt", err, victim.ID)
	}
	for _, n := range objects(t, dstStore, "") {
		if strings.Contains(n, victim.ID) || strings.Contains(n, "/manifests/") {
			t.Fatalf("damaged chunk or manifest copied: %s", n)
		}
	}
	if _, err := src.Replicate(context.Background(), newEngine(t, dstStore, nil), "vol-d", "nope", nil); !errors.Is(err, backup.ErrNotExist) {
		t.Fatalf("replicate a missing backup: %v", err)
	}
}

// Replication spends the source engine's bandwidth budget like any other copy.
func TestReplicateIsThrottled(t *testing.T) {
	var waited atomic.Int64
	src := newEngine(t, fsStore(t), func(o *backup.Options) {
		o.Limiter = backup.NewLimiter(float64(64 * testChunk))
		o.OnThrottled = func(d time.Duration) { waited.Add(int64(d) + 1) }
	})
	doBackup(t, src, "vol-t", "b1", makeImage(36, testChunk, "R", 4*testChunk), nil)
	waited.Store(0)
	replicate(t, src, newEngine(t, fsStore(t), nil), "vol-t", "b1")
	if waited.Load() == 0 {
		t.Fatal("replication took no bandwidth budget")
	}
}

// losingStore acknowledges chunk puts without storing them while lose is set (a sick destination).
type losingStore struct {
	backup.Store
	lose atomic.Bool
}

func (l *losingStore) Put(ctx context.Context, name string, r io.Reader, size int64) error {
	if l.lose.Load() && strings.Contains(name, "/chunks/") {
		_, err := io.Copy(io.Discard, r)
		return err
	}
	return l.Store.Put(ctx, name, r, size)
}

// The replica is verified from the destination after its manifest is written: a destination that lost
// chunks gets no replica (the manifest is removed again) and a retryable error; the retry completes it.
func TestReplicateVerifiesTheReplica(t *testing.T) {
	src := newEngine(t, fsStore(t), nil)
	img := makeImage(37, testChunk, "R", 5*testChunk)
	doBackup(t, src, "vol-v", "b1", img, nil)
	dstStore := &losingStore{Store: fsStore(t)}
	dstStore.lose.Store(true)
	dst := newEngine(t, dstStore, nil)
	_, err := src.Replicate(context.Background(), dst, "vol-v", "b1", nil)
	if err == nil || !strings.Contains(err.Error(), "5 chunks missing") || errors.Is(err, backup.ErrCorrupt) {
		t.Fatalf("replication to a store losing chunks: %v, want a retryable verification failure", err)
	}
	if _, err := dst.Manifest(context.Background(), "vol-v", "b1"); !errors.Is(err, backup.ErrNotExist) {
		t.Fatalf("a replica that failed verification is still visible: %v", err)
	}
	dstStore.lose.Store(false)
	if rep := replicate(t, src, dst, "vol-v", "b1"); rep.ChunksCopied != 5 {
		t.Fatalf("retry %+v, want every chunk copied", rep)
	}
	if got := restoreBytes(t, dst, "vol-v", "b1", int64(len(img))); !bytes.Equal(got, img) {
		t.Fatal("replica differs after the retry")
	}
}
