package backup_test

import (
	"crypto/sha256"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/zeebo/blake3"
)

// BenchmarkHash decided the chunk hash (see chunk.go): 4 MiB chunks, one core.
//
//	go test -run X -bench Hash ./activities/backup/
func BenchmarkHash(b *testing.B) {
	chunk := makeImage(1, 4<<20, "R", 4<<20)
	b.Run("sha256", func(b *testing.B) {
		b.SetBytes(int64(len(chunk)))
		for b.Loop() {
			sha256.Sum256(chunk)
		}
	})
	b.Run("blake3", func(b *testing.B) {
		b.SetBytes(int64(len(chunk)))
		for b.Loop() {
			blake3.Sum256(chunk)
		}
	})
}

// BenchmarkCompression decided the zstd level (see codec.seal): 4 MiB cells of real files (the Go tree:
// source text and compiled tools, what a VPS disk holds besides zeros), one core, each level's speed and
// the stored fraction (stored/raw). restic's "auto" compression is zstd's default level.
//
//	go test -run X -bench Compression ./activities/backup/
func BenchmarkCompression(b *testing.B) {
	corpus := goTree(b, 64<<20)
	for _, level := range []zstd.EncoderLevel{zstd.SpeedFastest, zstd.SpeedDefault, zstd.SpeedBetterCompression} {
		b.Run(level.String(), func(b *testing.B) {
			enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(level), zstd.WithEncoderConcurrency(1),
				zstd.WithLowerEncoderMem(true))
			if err != nil {
				b.Fatal(err)
			}
			var out []byte
			var raw, stored int64
			b.SetBytes(int64(len(corpus)))
			for b.Loop() {
				for off := 0; off < len(corpus); off += 4 << 20 {
					cell := corpus[off:min(off+4<<20, len(corpus))]
					out = enc.EncodeAll(cell, out[:0])
					raw += int64(len(cell))
					stored += int64(min(len(out), len(cell)))
				}
			}
			b.ReportMetric(float64(stored)/float64(raw), "stored/raw")
		})
	}
}

// goTree reads up to n bytes of the files under GOROOT, in walk order.
func goTree(b *testing.B, n int) []byte {
	var out []byte
	_ = filepath.WalkDir(runtime.GOROOT(), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || len(out) >= n {
			return nil
		}
		data, err := os.ReadFile(p)
		if err == nil {
			out = append(out, data...)
		}
		return nil
	})
	if len(out) < n/2 {
		b.Skipf("GOROOT holds only %d bytes of files", len(out))
	}
	return out[:min(len(out), n)]
}
