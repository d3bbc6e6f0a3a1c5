package backup_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/activities/backup"
)

func distinctChunks(m *backup.Manifest) int {
	ids := map[string]bool{}
	for _, c := range m.Chunks {
		ids[c.ID] = true
	}
	return len(ids)
}

func TestScrubReportsDamagePerBackup(t *testing.T) {
	eachStore(t, func(t *testing.T, st backup.Store) {
		ctx := context.Background()
		e := newEngine(t, st, nil)
		bad := doBackup(t, e, "vol-a", "b1", makeImage(41, testChunk, "RAZB", 8*testChunk), nil)
		good := doBackup(t, e, "vol-b", "b1", makeImage(42, testChunk, "RZ", 6*testChunk), nil)
		missing, flipped := bad.Chunks[0], bad.Chunks[2]
		if err := st.Delete(ctx, chunkObject("vol-a", missing.ID)); err != nil {
			t.Fatal(err)
		}
		flipByte(t, st, chunkObject("vol-a", flipped.ID))
		if err := backup.PutBytes(ctx, st, "volumes/vol-c/manifests/torn.json", []byte(`{"format_version":1,`)); err != nil {
			t.Fatal(err)
		}

		var last backup.Progress
		rep, err := e.Scrub(ctx, "", func(p backup.Progress) { last = p })
		if err != nil {
			t.Fatal(err)
		}
		if rep.Backups != 3 || len(rep.Damaged) != 2 {
			t.Fatalf("scrub report %+v, want 3 backups, 2 damaged", rep)
		}
		a, c := rep.Damaged[0], rep.Damaged[1]
		if a.VolumeID != "vol-a" || a.BackupID != "b1" || a.Error != "" ||
			len(a.Missing) != 1 || a.Missing[0].ID != missing.ID || a.Missing[0].Offset != missing.Offset ||
			len(a.Corrupt) != 1 || a.Corrupt[0].ID != flipped.ID {
			t.Fatalf("finding for vol-a/b1 %+v, want chunk %s missing and %s corrupt", a, missing.ID, flipped.ID)
		}
		if c.VolumeID != "vol-c" || c.BackupID != "torn" || !strings.Contains(c.Error, "invalid manifest") {
			t.Fatalf("finding for the torn manifest %+v", c)
		}
		if want := distinctChunks(bad) + distinctChunks(good); rep.Chunks != want || rep.BytesRead != bad.StoredBytes+good.StoredBytes {
			t.Fatalf("scrub read %d chunks / %d bytes, want %d / %d", rep.Chunks, rep.BytesRead,
				want, bad.StoredBytes+good.StoredBytes)
		}
		if last.Phase != backup.PhaseDone || last.BytesDone != last.BytesTotal || last.BytesTotal == 0 {
			t.Fatalf("last progress %+v", last)
		}

		// One volume only: the clean one is clean.
		rep, err = e.Scrub(ctx, "vol-b", nil)
		if err != nil || rep.Backups != 1 || len(rep.Damaged) != 0 || rep.Chunks != distinctChunks(good) {
			t.Fatalf("scrub of vol-b: %+v %v", rep, err)
		}
		if _, err := e.Scrub(ctx, "../x", nil); err == nil {
			t.Fatal("scrub of an invalid volume_id ran")
		}
	})
}

func TestScrubOtherKeyAndCancel(t *testing.T) {
	st := fsStore(t)
	doBackup(t, newEngine(t, st, func(o *backup.Options) { o.Key = bytes.Repeat([]byte{9}, 32) }), "vol-k", "b1",
		makeImage(43, testChunk, "R", 2*testChunk), nil)
	e := newEngine(t, st, nil)
	doBackup(t, e, "vol-p", "b1", makeImage(44, testChunk, "R", 20*testChunk), nil)
	rep, err := e.Scrub(context.Background(), "", nil)
	if err != nil || rep.Backups != 2 || len(rep.Damaged) != 1 || rep.Damaged[0].VolumeID != "vol-k" ||
		!strings.Contains(rep.Damaged[0].Error, backup.ErrWrongKey.Error()) {
		t.Fatalf("scrub with a backup of another key: %+v %v", rep, err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	e = newEngine(t, st, func(o *backup.Options) { o.ProgressInterval = time.Nanosecond })
	_, err = e.Scrub(ctx, "", func(p backup.Progress) {
		if p.BytesDone > 0 {
			cancel()
		}
	})
	cancel()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled scrub: %v", err)
	}
}

func TestGCStoreCollectsEveryVolume(t *testing.T) {
	eachStore(t, func(t *testing.T, st backup.Store) {
		ctx := context.Background()
		e := newEngine(t, st, nil)
		imgA := makeImage(45, testChunk, "RRA", 6*testChunk)
		imgA2 := bytes.Clone(imgA)
		copy(imgA2, makeImage(46, testChunk, "R", testChunk)) // a2 shares all but its first chunk with a1
		doBackup(t, e, "vol-a", "a1", imgA, nil)
		doBackup(t, e, "vol-a", "a2", imgA2, nil)
		doBackup(t, e, "vol-b", "b1", makeImage(47, testChunk, "RZ", 4*testChunk), nil)
		doBackup(t, e, "vol-c", "c1", makeImage(48, testChunk, "R", 2*testChunk), nil)
		for _, k := range []string{"vol-a/a1", "vol-b/b1"} {
			vol, id, _ := strings.Cut(k, "/")
			if err := e.Delete(ctx, vol, id); err != nil {
				t.Fatal(err)
			}
		}

		// Within grace nothing goes.
		reps, err := e.GCStore(ctx, time.Hour)
		if err != nil || len(reps) != 3 {
			t.Fatalf("GC within grace: %d reports, %v", len(reps), err)
		}
		for _, r := range reps {
			if r.DeletedChunks != 0 {
				t.Fatalf("GC within grace deleted %+v", r)
			}
		}
		late := newEngine(t, st, func(o *backup.Options) { o.Now = func() time.Time { return time.Now().Add(48 * time.Hour) } })
		reps, err = late.GCStore(ctx, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]int{}
		for _, r := range reps {
			got[r.VolumeID] = r.DeletedChunks
		}
		// vol-a: a1's one chunk a2 does not share; vol-b: all 2 of b1's; vol-c: nothing (c1 is live).
		if len(got) != 3 || got["vol-a"] != 1 || got["vol-b"] != 2 || got["vol-c"] != 0 {
			t.Fatalf("GC across volumes deleted %v", got)
		}
		if left := objects(t, st, "volumes/vol-b/chunks/"); len(left) != 0 {
			t.Fatalf("vol-b keeps %v", left)
		}
		if got := restoreBytes(t, e, "vol-a", "a2", int64(len(imgA2))); !bytes.Equal(got, imgA2) {
			t.Fatal("a live backup was damaged by store-wide GC")
		}

		// A volume whose manifests cannot all be read sweeps nothing; the others still run.
		if err := backup.PutBytes(ctx, st, "volumes/vol-d/manifests/torn.json", []byte("{")); err != nil {
			t.Fatal(err)
		}
		if err := e.Delete(ctx, "vol-c", "c1"); err != nil {
			t.Fatal(err)
		}
		reps, err = late.GCStore(ctx, time.Hour)
		if err == nil || !strings.Contains(err.Error(), "vol-d") || !errors.Is(err, backup.ErrInvalidManifest) {
			t.Fatalf("GC with a torn manifest in vol-d: %v", err)
		}
		// vol-b is gone (no object left); vol-a has nothing more to collect; vol-c's chunks go.
		if len(reps) != 2 || reps[0].VolumeID != "vol-a" || reps[1].VolumeID != "vol-c" || reps[1].DeletedChunks != 2 {
			t.Fatalf("the other volumes' GC: %+v", reps)
		}
	})
}
