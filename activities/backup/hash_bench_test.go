package backup_test

import (
	"crypto/sha256"
	"testing"

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
