package backup_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/activities/backup"
)

// seedManifests are valid manifests of every shape the encoder produces.
func seedManifests() []*backup.Manifest {
	id := func(c byte) string { return strings.Repeat(string(c), 64) }
	t0 := time.Date(2025, 5, 4, 3, 2, 1, 0, time.UTC)
	base := func() *backup.Manifest {
		return &backup.Manifest{FormatVersion: backup.FormatVersion, VolumeID: "vol-1", BackupID: "b1", ChunkSize: 4 << 20,
			Hash: backup.HashBLAKE3, Compression: backup.CompressionZstd, CreatedAt: t0, CompletedAt: t0.Add(time.Minute)}
	}
	empty := base()
	mixed := base()
	mixed.Size = 3*(4<<20) + 100
	mixed.Parent = "b0"
	mixed.SourceType = "rbd"
	mixed.Labels = map[string]string{"name": "nightly", "owner_id": "42"}
	mixed.Chunks = []backup.ChunkRef{{Offset: 0, Length: 4 << 20, ID: id('a'), StoredSize: 1000},
		{Offset: 3 * (4 << 20), Length: 100, ID: id('b'), StoredSize: 101}}
	mixed.ZeroRanges = []backup.Extent{{Offset: 4 << 20, Length: 2 * (4 << 20)}}
	mixed.StoredBytes = 1101
	enc := base()
	enc.Size = 4 << 20
	enc.Hash, enc.Encryption, enc.KeyID = backup.HashBLAKE3Keyed, backup.EncryptionAES, "00112233445566778899aabbccddeeff"
	enc.Chunks = []backup.ChunkRef{{Offset: 0, Length: 4 << 20, ID: id('c'), StoredSize: 4<<20 + 29}}
	zeros := base()
	zeros.Size = 10
	zeros.ZeroRanges = []backup.Extent{{Offset: 0, Length: 10}}
	return []*backup.Manifest{empty, mixed, enc, zeros}
}

func TestManifestRoundTrip(t *testing.T) {
	for _, m := range seedManifests() {
		data, err := backup.EncodeManifest(m)
		if err != nil {
			t.Fatalf("encode: %v", err)
		}
		got, err := backup.DecodeManifest(data)
		if err != nil {
			t.Fatalf("decode: %v\n%s", err, data)
		}
		again, _ := backup.EncodeManifest(got)
		if !bytes.Equal(again, data) {
			t.Fatalf("re-encoding differs:\n%s\n%s", data, again)
		}
	}
	bad := seedManifests()[1]
	bad.ZeroRanges = nil // a gap where the zero range was
	if _, err := backup.EncodeManifest(bad); err == nil {
		t.Fatal("a manifest with a gap was encoded")
	}
}

// FuzzDecodeManifest: the decoder never panics, and whatever it accepts re-encodes to an equal manifest
// (less its MAC).
// Seed corpus: testdata/fuzz/FuzzDecodeManifest (regenerate with HOLDFAST_WRITE_FUZZ_SEEDS=1 go test -run Seeds).
func FuzzDecodeManifest(f *testing.F) {
	for _, m := range seedManifests() {
		data, err := backup.EncodeManifest(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := backup.DecodeManifest(data)
		if err != nil {
			return
		}
		enc, err := backup.EncodeManifest(m)
		if err != nil {
			t.Fatalf("decoded manifest does not re-encode: %v", err)
		}
		m2, err := backup.DecodeManifest(enc)
		if err != nil {
			t.Fatalf("re-encoded manifest does not decode: %v", err)
		}
		// EncodeManifest writes no MAC (it has no key), so the hash of an input that had one differs.
		if (m.MAC == "" && m2.ManifestHash != m.ManifestHash) || len(m2.Chunks) != len(m.Chunks) || m2.Size != m.Size {
			t.Fatalf("round trip changed the manifest")
		}
	})
}

func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("HOLDFAST_WRITE_FUZZ_SEEDS") == "" {
		t.Skip("set HOLDFAST_WRITE_FUZZ_SEEDS=1 to regenerate the committed seed corpus")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzDecodeManifest")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var seeds [][]byte
	for _, m := range seedManifests() {
		data, err := backup.EncodeManifest(m)
		if err != nil {
			t.Fatal(err)
		}
		seeds = append(seeds, data)
	}
	// Near misses the decoder must refuse: torn, tampered, hostile geometry.
	valid := string(seeds[1])
	seeds = append(seeds, []byte(valid[:len(valid)/2]), []byte(strings.Replace(valid, `"rbd"`, `"raw"`, 1)),
		[]byte(strings.Replace(valid, `"chunk_size":4194304`, `"chunk_size":0`, 1)),
		[]byte(strings.Replace(valid, `"size":12583012`, `"size":-1`, 1)),
		[]byte(strings.Replace(valid, `"volume_id":"vol-1"`, `"volume_id":"../etc"`, 1)),
		[]byte(`{"format_version":1,"chunks":[{"offset":9223372036854775807,"length":9223372036854775807}]}`),
		[]byte(`null`), []byte(`[]`), []byte{})
	for i, s := range seeds {
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d", i)), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
