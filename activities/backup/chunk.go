package backup

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/zeebo/blake3"
)

// Chunk object encoding (one byte of kind, then the payload):
//
//	'R' raw bytes          — zstd did not shrink the chunk
//	'Z' zstd frame         — compressed
//	'E' nonce(12) ‖ AES-256-GCM(kind byte ‖ payload), additional data = chunk id
//
// The id is BLAKE3-256 of the plaintext ("blake3"), or keyed BLAKE3 with a key derived from the store key
// ("blake3-keyed") so equal plaintexts can be deduplicated without the names revealing plaintext hashes.
// BLAKE3 was chosen over SHA-256 by BenchmarkHash on the target machine (2 cores with SHA-NI and AVX-512,
// 4 MiB chunks, one core): SHA-256 1182 MB/s, BLAKE3 2982 MB/s.
const (
	kindRaw       = 'R'
	kindZstd      = 'Z'
	kindEncrypted = 'E'
	nonceSize     = 12
)

// Hash algorithm names recorded in manifests.
const (
	HashBLAKE3      = "blake3"
	HashBLAKE3Keyed = "blake3-keyed"
	EncryptionAES   = "aes-256-gcm"
	CompressionZstd = "zstd"
)

var (
	// ErrCorrupt marks a chunk whose content does not match its id (or cannot be decoded/decrypted).
	ErrCorrupt = errors.New("chunk corrupt")
	// ErrWrongKey means the engine's encryption key is not the one the backup was written with.
	ErrWrongKey = errors.New("encryption key does not match this backup")
)

// codec turns chunk plaintext into stored objects and back. Safe for concurrent use.
type codec struct {
	idKey  []byte      // nil: plain BLAKE3 ids
	macKey []byte      // nil: manifests are not authenticated (no key); see Manifest.MAC
	jrnKey []byte      // nil: resume journals are not authenticated (no key); see journalSegment.MAC
	aead   cipher.AEAD // nil: no encryption
	keyID  string      // fingerprint of the key, recorded in manifests; "" without a key
	dec    *zstd.Decoder
	encs   sync.Pool // *zstd.Encoder: EncodeAll on one encoder is not meant for concurrent use
}

func newCodec(key []byte, maxChunk int64, concurrency int) (*codec, error) {
	c := &codec{}
	if key != nil {
		if len(key) != 32 {
			return nil, fmt.Errorf("backup: encryption key must be 32 bytes, got %d", len(key))
		}
		// Separate derived keys per purpose, so the name key and the cipher key are independent.
		c.idKey = make([]byte, 32)
		blake3.DeriveKey("holdfast 2025 chunk id", key, c.idKey)
		encKey := make([]byte, 32)
		blake3.DeriveKey("holdfast 2025 chunk encryption", key, encKey)
		// The manifest MAC key is derived too, never the store key itself: a MAC is an oracle on its key.
		c.macKey = make([]byte, 32)
		blake3.DeriveKey("holdfast 2025 manifest mac", key, c.macKey)
		c.jrnKey = make([]byte, 32)
		blake3.DeriveKey("holdfast 2025 journal mac", key, c.jrnKey)
		check := make([]byte, 16)
		blake3.DeriveKey("holdfast 2025 key check", key, check)
		c.keyID = hex.EncodeToString(check)
		block, err := aes.NewCipher(encKey)
		if err != nil {
			return nil, err
		}
		if c.aead, err = cipher.NewGCM(block); err != nil {
			return nil, err
		}
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(concurrency),
		zstd.WithDecoderMaxMemory(uint64(maxChunk)+1<<20)) // a hostile frame can't make us allocate more
	if err != nil {
		return nil, err
	}
	c.dec = dec
	// zstd's fastest level, by BenchmarkCompression: the default level stores 4.7 % fewer bytes for 16 % more
	// CPU, and compression is most of a first backup's CPU (README, "peers").
	c.encs.New = func() any {
		e, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1),
			zstd.WithLowerEncoderMem(true))
		if err != nil {
			panic(err) // only on invalid options, which are constant here
		}
		return e
	}
	return c, nil
}

func (c *codec) hashName() string {
	if c.idKey != nil {
		return HashBLAKE3Keyed
	}
	return HashBLAKE3
}

// id names plaintext under algorithm alg (a manifest's Hash).
func (c *codec) id(alg string, plain []byte) (string, error) {
	switch alg {
	case HashBLAKE3:
		sum := blake3.Sum256(plain)
		return hex.EncodeToString(sum[:]), nil
	case HashBLAKE3Keyed:
		if c.idKey == nil {
			return "", fmt.Errorf("backup is encrypted but no encryption key is configured: %w", ErrWrongKey)
		}
		h, _ := blake3.NewKeyed(c.idKey)
		_, _ = h.Write(plain)
		return hex.EncodeToString(h.Sum(nil)), nil
	}
	return "", fmt.Errorf("unknown hash algorithm %q", alg)
}

// sealBufs are one worker's reusable output buffers, so steady-state backup allocates nothing per chunk.
type sealBufs struct{ z, out []byte }

// seal encodes plain into an object. The result aliases b and is valid until the next seal with b.
func (c *codec) seal(id string, plain []byte, b *sealBufs) []byte {
	enc := c.encs.Get().(*zstd.Encoder)
	b.z = enc.EncodeAll(plain, append(b.z[:0], kindZstd))
	c.encs.Put(enc)
	if len(b.z) >= len(plain)+1 { // incompressible: store raw, decoding is then a copy
		b.z = append(b.z[:0], kindRaw)
		b.z = append(b.z, plain...)
	}
	if c.aead == nil {
		return b.z
	}
	out := append(b.out[:0], kindEncrypted)
	var nonce [nonceSize]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		panic(err) // crypto/rand never fails on Linux ≥ 3.17
	}
	out = append(out, nonce[:]...)
	b.out = c.aead.Seal(out, nonce[:], b.z, []byte(id))
	return b.out
}

// open decodes an object into plaintext (appending to dst[:0]) and checks it against id under alg and the
// expected length. Every failure wraps ErrCorrupt, except a missing key (ErrWrongKey).
func (c *codec) open(alg, id string, obj []byte, length int64, dst []byte) ([]byte, error) {
	if len(obj) == 0 {
		return nil, fmt.Errorf("empty object: %w", ErrCorrupt)
	}
	body := obj
	if obj[0] == kindEncrypted {
		if c.aead == nil {
			return nil, fmt.Errorf("chunk is encrypted but no encryption key is configured: %w", ErrWrongKey)
		}
		if len(obj) < 1+nonceSize+c.aead.Overhead() {
			return nil, fmt.Errorf("encrypted chunk too short: %w", ErrCorrupt)
		}
		var err error
		// Decrypt in place: obj is the caller's scratch buffer, so this allocates nothing.
		body, err = c.aead.Open(obj[1+nonceSize:1+nonceSize], obj[1:1+nonceSize], obj[1+nonceSize:], []byte(id))
		if err != nil {
			return nil, fmt.Errorf("decrypt: authentication failed (wrong key or tampered chunk): %w", ErrCorrupt)
		}
		if len(body) == 0 {
			return nil, fmt.Errorf("empty payload: %w", ErrCorrupt)
		}
	} else if alg == HashBLAKE3Keyed {
		return nil, fmt.Errorf("chunk of an encrypted backup is stored unencrypted: %w", ErrCorrupt)
	}
	var plain []byte
	switch body[0] {
	case kindRaw:
		plain = append(dst[:0], body[1:]...)
	case kindZstd:
		var err error
		if plain, err = c.dec.DecodeAll(body[1:], dst[:0]); err != nil {
			return nil, fmt.Errorf("zstd: %v: %w", err, ErrCorrupt)
		}
	default:
		return nil, fmt.Errorf("unknown chunk kind %q: %w", body[0], ErrCorrupt)
	}
	if int64(len(plain)) != length {
		return nil, fmt.Errorf("chunk has %d bytes, manifest says %d: %w", len(plain), length, ErrCorrupt)
	}
	got, err := c.id(alg, plain)
	if err != nil {
		return nil, err
	}
	if got != id {
		return nil, fmt.Errorf("content hash %s does not match chunk id: %w", got[:16], ErrCorrupt)
	}
	return plain, nil
}
