package backup_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/holdfast/holdfast/activities/backup"
)

// TestBackupReaderReadsWhatRestoreWrites: a backup read at any offset and length — within a cell, across
// cells, zero ranges, slices of an incremental's parent chunks, the last short cell, concurrently — gives
// the bytes a restore writes, through a cache far smaller than the volume.
func TestBackupReaderReadsWhatRestoreWrites(t *testing.T) {
	for _, enc := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "encrypted"}[enc], func(t *testing.T) {
			e := newEngine(t, fsStore(t), func(o *backup.Options) {
				if enc {
					o.Key = bytes.Repeat([]byte{9}, 32)
				}
			})
			img := makeImage(21, testChunk, "RZRARBRZR", 9*testChunk-777)
			doBackup(t, e, "vol-r", "b1", img, nil)
			img2 := bytes.Clone(img)
			written := scribble(rand.New(rand.NewPCG(5, 6)), img2, 4)
			doBackup(t, e, "vol-r", "b2", img2, func(r *backup.BackupRequest) { r.Parent, r.Changed = "b1", written })

			r, err := e.OpenBackup(context.Background(), "vol-r", "b2", backup.ReaderOptions{CacheCells: 2, ReadAhead: 2})
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if r.Size() != int64(len(img2)) {
				t.Fatalf("size %d, want %d", r.Size(), len(img2))
			}
			// Whole, forwards in odd pieces (read-ahead), then random ranges from several goroutines.
			got := make([]byte, len(img2))
			for off := 0; off < len(got); off += 12345 {
				if _, err := r.ReadAt(got[off:min(off+12345, len(got))], int64(off)); err != nil {
					t.Fatal(err)
				}
			}
			if !bytes.Equal(got, img2) {
				t.Fatal("a forward read differs from the image")
			}
			var wg sync.WaitGroup
			for g := range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rng := rand.New(rand.NewPCG(uint64(g), 7))
					for range 200 {
						off := rng.IntN(len(img2))
						n := min(rng.IntN(3*testChunk), len(img2)-off)
						p := make([]byte, n)
						if _, err := r.ReadAt(p, int64(off)); err != nil {
							t.Error(err)
							return
						}
						if !bytes.Equal(p, img2[off:off+n]) {
							t.Errorf("read of %d bytes at %d differs from the image", n, off)
							return
						}
					}
				}()
			}
			wg.Wait()
			// Past the end: io.EOF with what there was.
			p := make([]byte, 1000)
			n, err := r.ReadAt(p, int64(len(img2)-10))
			if n != 10 || !errors.Is(err, io.EOF) || !bytes.Equal(p[:10], img2[len(img2)-10:]) {
				t.Fatalf("read across the end: %d, %v", n, err)
			}
		})
	}
}

// TestBackupReaderFailsOnDamage: a chunk flipped in the store fails the reads of its cell with a ChunkError
// (never other bytes), and the other cells still read.
func TestBackupReaderFailsOnDamage(t *testing.T) {
	st := fsStore(t)
	e := newEngine(t, st, nil)
	img := makeImage(23, testChunk, "RRRR", 4*testChunk)
	m := doBackup(t, e, "vol-d", "b1", img, nil)
	victim := m.Chunks[2]
	flipByte(t, st, chunkObject("vol-d", victim.ID))
	r, err := e.OpenBackup(context.Background(), "vol-d", "b1", backup.ReaderOptions{ReadAhead: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	p := make([]byte, 100)
	var ce *backup.ChunkError
	if _, err := r.ReadAt(p, victim.Offset+10); !errors.As(err, &ce) {
		t.Fatalf("read of the damaged cell: %v, want a ChunkError", err)
	}
	if _, err := r.ReadAt(p, 3*testChunk); err != nil || !bytes.Equal(p, img[3*testChunk:3*testChunk+100]) {
		t.Fatalf("read of a healthy cell: %v", err)
	}
}

// TestBackupReaderRuns: the manifest's zero ranges, cut to the range asked and merged, and nothing else.
func TestBackupReaderRuns(t *testing.T) {
	e := newEngine(t, fsStore(t), nil)
	img := makeImage(25, testChunk, "RZZRZ", 5*testChunk-100)
	doBackup(t, e, "vol-z", "b1", img, nil)
	r, err := e.OpenBackup(context.Background(), "vol-z", "b1", backup.ReaderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	c := int64(testChunk)
	for _, tc := range []struct {
		off, length int64
		want        []backup.Run
	}{
		{0, 5*c - 100, []backup.Run{{c, false}, {2 * c, true}, {c, false}, {c - 100, true}}},
		{c / 2, 2 * c, []backup.Run{{c / 2, false}, {3 * c / 2, true}}},
		{3*c + 1, 10 * c, []backup.Run{{c - 1, false}, {c - 100, true}}}, // cut at the size
		{5 * c, c, nil},
	} {
		got := r.Runs(tc.off, tc.length)
		if len(got) != len(tc.want) {
			t.Fatalf("Runs(%d, %d) = %v, want %v", tc.off, tc.length, got, tc.want)
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Fatalf("Runs(%d, %d) = %v, want %v", tc.off, tc.length, got, tc.want)
			}
		}
	}
}
