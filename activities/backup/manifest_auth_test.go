package backup_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/activities/backup"
)

// Someone with write access to a bucket but not the store key must not be able to make the engine accept a
// manifest: recover registers volumes (owner, name, path) from its labels.

const notAuthenticated = "manifest is not authenticated by this store's key"

var (
	authKey       = bytes.Repeat([]byte{0x5a}, 32)
	manifestHashR = regexp.MustCompile(`"manifest_hash":"[0-9a-f]*"`)
	macFieldR     = regexp.MustCompile(`,"mac":"[0-9a-f]*"`)
)

// rehash recomputes the plain SHA-256 a manifest carries, as anyone can: SHA-256 of the stored JSON with
// manifest_hash emptied.
func rehash(t *testing.T, data []byte) []byte {
	t.Helper()
	if !manifestHashR.Match(data) {
		t.Fatalf("no manifest_hash in %s", data)
	}
	body := manifestHashR.ReplaceAll(data, []byte(`"manifest_hash":""`))
	sum := sha256.Sum256(body)
	return manifestHashR.ReplaceAll(data, []byte(`"manifest_hash":"`+hex.EncodeToString(sum[:])+`"`))
}

// unauthenticated reports whether err is the refusal of a manifest the store key does not vouch for.
func unauthenticated(err error) bool {
	return err != nil && errors.Is(err, backup.ErrInvalidManifest) && errors.Is(err, backup.ErrUnauthenticated) &&
		strings.Contains(err.Error(), notAuthenticated)
}

func putManifest(t *testing.T, st backup.Store, vol, id string, data []byte) {
	t.Helper()
	if err := backup.PutBytes(context.Background(), st, "volumes/"+vol+"/manifests/"+id+".json", data); err != nil {
		t.Fatal(err)
	}
}

func getManifest(t *testing.T, st backup.Store, vol, id string) []byte {
	t.Helper()
	data, err := backup.ReadAll(context.Background(), st, "volumes/"+vol+"/manifests/"+id+".json", 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// checkRefused asserts that every way the engine reads vol/id refuses it, and that the catalog reports it
// as a problem and never as an entry.
func checkRefused(t *testing.T, e *backup.Engine, vol, id string, size int64) {
	t.Helper()
	ctx := context.Background()
	if m, err := e.Manifest(ctx, vol, id); !unauthenticated(err) {
		t.Errorf("Manifest(%s/%s) = %+v, %v; want %q", vol, id, m, err, notAuthenticated)
	}
	fill := bytes.Repeat([]byte{0xEE}, int(size))
	tgt := &memTarget{buf: bytes.Clone(fill)}
	if _, err := e.Restore(ctx, backup.RestoreRequest{VolumeID: vol, BackupID: id, Target: tgt}); !unauthenticated(err) {
		t.Errorf("Restore(%s/%s): %v; want %q", vol, id, err, notAuthenticated)
	}
	if !bytes.Equal(tgt.buf, fill) {
		t.Errorf("Restore(%s/%s) wrote to its target before refusing", vol, id)
	}
	if _, err := e.Verify(ctx, backup.VerifyRequest{VolumeID: vol, BackupID: id}); !unauthenticated(err) {
		t.Errorf("Verify(%s/%s): %v", vol, id, err)
	}
	page, err := e.Catalog(ctx, "", 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range page.Manifests {
		if m.VolumeID == vol && m.BackupID == id {
			t.Errorf("catalog lists %s/%s with labels %v", vol, id, m.Labels)
		}
	}
	found := false
	for _, p := range page.Problems {
		if p.VolumeID == vol && p.BackupID == id {
			found = true
			if !unauthenticated(p.Err) {
				t.Errorf("catalog problem %s/%s: %v", vol, id, p.Err)
			}
		}
	}
	if !found {
		t.Errorf("catalog does not report %s/%s as a problem: %+v", vol, id, page.Problems)
	}
	ms, err := e.List(ctx)
	if !unauthenticated(err) {
		t.Errorf("List: %v; want %s/%s reported", err, vol, id)
	}
	for _, m := range ms {
		if m.VolumeID == vol && m.BackupID == id {
			t.Errorf("List returns %s/%s", vol, id)
		}
	}
	rep, err := e.Scrub(ctx, vol, nil)
	if err != nil {
		t.Fatal(err)
	}
	damaged := false
	for _, d := range rep.Damaged {
		damaged = damaged || (d.VolumeID == vol && d.BackupID == id && strings.Contains(d.Error, notAuthenticated))
	}
	if !damaged {
		t.Errorf("scrub does not report %s/%s: %+v", vol, id, rep.Damaged)
	}
}

// A manifest written from scratch by someone without the key, valid in every other respect (format, geometry,
// the store's key id, a correct SHA-256), is refused.
func TestForgedManifestRefusedInEncryptedStore(t *testing.T) {
	eachStore(t, func(t *testing.T, st backup.Store) {
		e := newEngine(t, st, func(o *backup.Options) { o.Key = authKey })
		img := makeImage(31, testChunk, "RZ", 2*testChunk)
		genuine := doBackup(t, e, "vol-a", "b1", img, nil)

		const size = 3 * testChunk
		forged := &backup.Manifest{FormatVersion: backup.FormatVersion, VolumeID: "vol-forged", BackupID: "b1",
			Size: size, ChunkSize: testChunk, Hash: backup.HashBLAKE3Keyed, Compression: backup.CompressionZstd,
			Encryption: backup.EncryptionAES, KeyID: genuine.KeyID, SourceType: "raw",
			CreatedAt: time.Now().UTC(), CompletedAt: time.Now().UTC(),
			Labels: map[string]string{"owner_id": "mallory", "volume_name": "root", "volume_type": "file",
				"volume_path": "/etc/shadow"},
			ZeroRanges: []backup.Extent{{Offset: 0, Length: size}}}
		data, err := backup.EncodeManifest(forged)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := backup.DecodeManifest(data); err != nil {
			t.Fatalf("the forgery is not even a well-formed manifest: %v", err)
		}
		putManifest(t, st, "vol-forged", "b1", data)
		checkRefused(t, e, "vol-forged", "b1", size)

		// The genuine backup beside it is untouched by all this.
		if got := restoreBytes(t, e, "vol-a", "b1", int64(len(img))); !bytes.Equal(got, img) {
			t.Fatal("genuine backup restores differently")
		}
	})
}

// A genuine manifest with one label byte changed and its SHA-256 recomputed is refused; so is one whose MAC
// was removed (which is also what a manifest written before manifests were authenticated looks like).
func TestTamperedManifestRefusedInEncryptedStore(t *testing.T) {
	eachStore(t, func(t *testing.T, st backup.Store) {
		e := newEngine(t, st, func(o *backup.Options) { o.Key = authKey })
		img := makeImage(32, testChunk, "RA", 2*testChunk)
		for _, id := range []string{"flipped", "stripped", "swapped"} {
			doBackup(t, e, "vol-t", id, img, func(r *backup.BackupRequest) {
				r.Labels = map[string]string{"owner_id": "alice", "volume_path": "/var/lib/holdfast/alice.img"}
			})
		}

		data := getManifest(t, st, "vol-t", "flipped")
		flipped := bytes.Replace(data, []byte(`"owner_id":"alice"`), []byte(`"owner_id":"alicf"`), 1)
		if bytes.Equal(flipped, data) {
			t.Fatalf("no owner label in %s", data)
		}
		flipped = rehash(t, flipped)
		if m, err := backup.DecodeManifest(flipped); err != nil || m.Labels["owner_id"] != "alicf" {
			t.Fatalf("the recomputed hash should satisfy the plain check: %v", err)
		}
		putManifest(t, st, "vol-t", "flipped", flipped)
		checkRefused(t, e, "vol-t", "flipped", int64(len(img)))

		data = getManifest(t, st, "vol-t", "stripped")
		putManifest(t, st, "vol-t", "stripped", rehash(t, macFieldR.ReplaceAll(data, nil)))
		checkRefused(t, e, "vol-t", "stripped", int64(len(img)))

		// Another volume's genuine MAC does not vouch for this one's content.
		doBackup(t, e, "vol-u", "swapped", img, func(r *backup.BackupRequest) {
			r.Labels = map[string]string{"owner_id": "mallory", "volume_path": "/var/lib/holdfast/alice.img"}
		})
		data = getManifest(t, st, "vol-t", "swapped")
		mac := macFieldR.Find(getManifest(t, st, "vol-u", "swapped"))
		if mac == nil {
			t.Fatal("an encrypted store's manifest carries no MAC")
		}
		swapped := bytes.Replace(data, []byte(`"owner_id":"alice"`), []byte(`"owner_id":"mallory"`), 1)
		putManifest(t, st, "vol-t", "swapped", rehash(t, macFieldR.ReplaceAll(swapped, mac)))
		checkRefused(t, e, "vol-t", "swapped", int64(len(img)))
	})
}

// Genuine manifests of an encrypted store keep working everywhere, including through a fresh engine with
// the same key (a control plane rebuilt after a disaster).
func TestGenuineManifestAuthenticated(t *testing.T) {
	eachStore(t, func(t *testing.T, st backup.Store) {
		ctx := context.Background()
		e := newEngine(t, st, func(o *backup.Options) { o.Key = authKey })
		img := makeImage(33, testChunk, "RZA", 3*testChunk+100)
		labels := map[string]string{"owner_id": "alice", "volume_path": "/var/lib/holdfast/alice.img"}
		doBackup(t, e, "vol-g", "b1", img, func(r *backup.BackupRequest) { r.Labels = labels })
		doBackup(t, e, "vol-g", "b2", img, func(r *backup.BackupRequest) { r.Parent = "b1"; r.Labels = labels })

		fresh := newEngine(t, st, func(o *backup.Options) { o.Key = authKey })
		for _, id := range []string{"b1", "b2"} {
			m, err := fresh.Manifest(ctx, "vol-g", id)
			if err != nil || m.Labels["owner_id"] != "alice" {
				t.Fatalf("genuine %s: %+v %v", id, m, err)
			}
			if got := restoreBytes(t, fresh, "vol-g", id, int64(len(img))); !bytes.Equal(got, img) {
				t.Fatalf("genuine %s restores differently", id)
			}
			v, err := fresh.Verify(ctx, backup.VerifyRequest{VolumeID: "vol-g", BackupID: id, Deep: true})
			if err != nil || !v.OK() {
				t.Fatalf("verify %s: %+v %v", id, v, err)
			}
		}
		entries, problems, _ := catalogAll(t, fresh, 10)
		if strings.Join(entries, ",") != "vol-g/b1,vol-g/b2" || len(problems) != 0 {
			t.Fatalf("catalog %v, problems %v", entries, problems)
		}
		if ms, err := fresh.List(ctx); err != nil || len(ms) != 2 {
			t.Fatalf("list: %d %v", len(ms), err)
		}
		if rep, err := fresh.GC(ctx, "vol-g", 0); err != nil || rep.Manifests != 2 || rep.DeletedChunks != 0 {
			t.Fatalf("gc: %+v %v", rep, err)
		}
	})
}

// An unencrypted store has no key to authenticate with: its manifests carry the plain SHA-256 only, and
// keep working as before (recover treats their labels as untrusted).
func TestUnencryptedStoreManifestsUnauthenticated(t *testing.T) {
	eachStore(t, func(t *testing.T, st backup.Store) {
		e := newEngine(t, st, nil)
		img := makeImage(34, testChunk, "RZ", 2*testChunk)
		doBackup(t, e, "vol-p", "b1", img, nil)
		if data := getManifest(t, st, "vol-p", "b1"); macFieldR.Match(data) || bytes.Contains(data, []byte(`"mac"`)) {
			t.Fatalf("an unencrypted store's manifest claims a MAC: %s", data)
		}
		if got := restoreBytes(t, newEngine(t, st, nil), "vol-p", "b1", int64(len(img))); !bytes.Equal(got, img) {
			t.Fatal("unencrypted round trip differs")
		}
		entries, problems, _ := catalogAll(t, e, 10)
		if strings.Join(entries, ",") != "vol-p/b1" || len(problems) != 0 {
			t.Fatalf("catalog %v, problems %v", entries, problems)
		}
		// A torn or bit-flipped manifest is still refused by the hash.
		data := getManifest(t, st, "vol-p", "b1")
		flipped := bytes.Replace(data, []byte(`"source_type":"raw"`), []byte(`"source_type":"raX"`), 1)
		putManifest(t, st, "vol-p", "b1", flipped)
		if _, err := e.Manifest(context.Background(), "vol-p", "b1"); !errors.Is(err, backup.ErrInvalidManifest) {
			t.Fatalf("bit-flipped manifest: %v", err)
		}
	})
}

// A resume journal decides what a resumed backup records for the range it covers, so in an encrypted store
// it is authenticated too: a forged segment claiming the whole volume is zeros is ignored, and the resumed
// backup reads the source again instead of recording it.
func TestForgedJournalNotResumed(t *testing.T) {
	eachStore(t, func(t *testing.T, st backup.Store) {
		ctx := context.Background()
		img := makeImage(35, testChunk, "RARB", 20*testChunk)
		e := newEngine(t, st, func(o *backup.Options) {
			o.Key = authKey
			o.CheckpointEvery = 3
			o.ProgressInterval = time.Nanosecond
			// One chunk at a time: with several, a slow first chunk can still be in flight when the crash
			// cancels it, leaving no checkpoint at all.
			o.Concurrency = 1
		})
		var last backup.Progress
		_, err := e.Backup(ctx, backup.BackupRequest{VolumeID: "vol-j", BackupID: "b1",
			Source: &readCounter{r: bytes.NewReader(img), failAt: 12 * testChunk}, Size: int64(len(img)),
			SourceType: "raw", Progress: func(p backup.Progress) { last = p }})
		if err == nil || last.NextOffset == 0 {
			t.Fatalf("crashing backup: %v, checkpoint %d", err, last.NextOffset)
		}
		var segments []string
		if err := st.List(ctx, "volumes/vol-j/inprogress/b1/", func(oi backup.ObjectInfo) error {
			segments = append(segments, oi.Name)
			return nil
		}); err != nil || len(segments) == 0 {
			t.Fatalf("journal: %v %v", segments, err)
		}
		// Segment 0, rewritten by someone without the key: everything is zeros, all done.
		first := "volumes/vol-j/inprogress/b1/00000000.json"
		data, err := backup.ReadAll(ctx, st, first, 1<<30)
		if err != nil {
			t.Fatal(err)
		}
		var seg map[string]any
		if err := json.Unmarshal(data, &seg); err != nil {
			t.Fatal(err)
		}
		seg["to"] = len(img)
		seg["chunks"] = []any{}
		seg["zero_ranges"] = []any{map[string]any{"offset": 0, "length": len(img)}}
		forged, _ := json.Marshal(seg)
		putBytes(t, st, first, forged)
		for _, n := range segments {
			if n != first {
				if err := st.Delete(ctx, n); err != nil {
					t.Fatal(err)
				}
			}
		}

		resumed := &readCounter{r: bytes.NewReader(img)}
		doBackup(t, e, "vol-j", "b1", img, func(r *backup.BackupRequest) {
			r.Source = resumed
			r.Resume = &backup.Checkpoint{NextOffset: int64(len(img))}
		})
		if resumed.read.Load() == 0 {
			t.Error("the resumed backup trusted the forged journal and read nothing")
		}
		if got := restoreBytes(t, e, "vol-j", "b1", int64(len(img))); !bytes.Equal(got, img) {
			t.Fatal("the resumed backup restores the forged journal's zeros")
		}

		// The genuine journal of an encrypted store is resumed from as before.
		_, err = e.Backup(ctx, backup.BackupRequest{VolumeID: "vol-j", BackupID: "b2",
			Source: &readCounter{r: bytes.NewReader(img), failAt: 12 * testChunk}, Size: int64(len(img)),
			SourceType: "raw", Progress: func(p backup.Progress) { last = p }})
		if err == nil || last.NextOffset == 0 {
			t.Fatalf("crashing backup: %v, checkpoint %d", err, last.NextOffset)
		}
		resumed = &readCounter{r: bytes.NewReader(img)}
		doBackup(t, e, "vol-j", "b2", img, func(r *backup.BackupRequest) {
			r.Source = resumed
			r.Resume = last.Checkpoint()
		})
		if got := resumed.read.Load(); got > int64(len(img))-last.NextOffset {
			t.Errorf("resume from a genuine journal read %d bytes; checkpoint was at %d of %d", got,
				last.NextOffset, len(img))
		}
		if got := restoreBytes(t, e, "vol-j", "b2", int64(len(img))); !bytes.Equal(got, img) {
			t.Fatal("resumed backup restores wrong bytes")
		}
	})
}

func putBytes(t *testing.T, st backup.Store, name string, data []byte) {
	t.Helper()
	if err := backup.PutBytes(context.Background(), st, name, data); err != nil {
		t.Fatal(err)
	}
}
