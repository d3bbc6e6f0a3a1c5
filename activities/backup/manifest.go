package backup

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"
)

// FormatVersion is the manifest format this package writes. It reads FormatVersion1 too.
//
//   - 1: every chunk covers one whole cell of the chunk grid (ChunkSize-aligned, ChunkSize long, shorter
//     only at the end of the volume), zero ranges start and end on the grid.
//   - 2: a cell may be made of pieces: zero ranges and slices of chunks (ChunkRef.Skip, ChunkLength), so an
//     incremental backup stores only the blocks that changed in a cell and takes the rest from its parent's
//     chunks (see backupChunk). Pieces never cross a cell boundary and start and end on a sector (or at the
//     end of the volume). A v1 manifest is a v2 manifest without slices.
const FormatVersion = 2

// FormatVersion1 is the first manifest format (whole-cell chunks only), still read.
const FormatVersion1 = 1

// DefaultChunkSize is the chunk grid of the format (4 MiB of raw blocks): the unit a backup reads, hashes
// and uploads, and the most a chunk object holds.
const DefaultChunkSize = 4 << 20

// pieceAlign is what a v2 piece's boundaries must be a multiple of (or the volume's end): a sector.
const pieceAlign = 512

// maxChunkSize bounds what a manifest may declare, so a hostile manifest cannot make restore allocate
// without limit.
const maxChunkSize = 64 << 20

// maxManifestSize bounds manifest objects read from the store (a 64 TiB volume of 4 MiB chunks is ~2 GB of
// JSON; Holdfast volumes are far smaller).
const maxManifestSize = 1 << 30

// Extent is a byte range of a volume.
type Extent struct {
	Offset int64 `json:"offset"`
	Length int64 `json:"length"`
}

// End is the first offset after the extent.
func (e Extent) End() int64 { return e.Offset + e.Length }

// ChunkRef is one stored chunk of a backup: Length bytes of the volume at Offset, stored as object ID. In a
// v2 manifest it may be a slice: the volume's bytes are bytes [Skip, Skip+Length) of a chunk whose plain
// content is ChunkLength bytes long (several refs may slice one chunk). ChunkLength 0 means the whole
// chunk: Skip is 0 and the chunk is Length bytes.
type ChunkRef struct {
	Offset      int64  `json:"offset"`
	Length      int64  `json:"length"`
	ID          string `json:"id"`                     // hex content hash of the whole chunk; names the object
	StoredSize  int64  `json:"stored_size"`            // bytes of the stored object (compressed, encrypted)
	Skip        int64  `json:"skip,omitempty"`         // v2: where the slice starts in the chunk
	ChunkLength int64  `json:"chunk_length,omitempty"` // v2: the whole chunk's plain length, when a slice
}

// PlainLength is the plain length of the chunk c names (what its hash covers).
func (c ChunkRef) PlainLength() int64 {
	if c.ChunkLength > 0 {
		return c.ChunkLength
	}
	return c.Length
}

// slice returns the part of c covering [from, to) of the volume (within c), as a slice of c's chunk.
func (c ChunkRef) slice(from, to int64) ChunkRef {
	s := c
	s.ChunkLength = c.PlainLength()
	s.Skip = c.Skip + from - c.Offset
	s.Offset, s.Length = from, to-from
	return s.trimmed()
}

// trimmed is c without ChunkLength when c slices all of its chunk: a whole-chunk ref after all.
func (c ChunkRef) trimmed() ChunkRef {
	if c.Skip == 0 && c.Length == c.ChunkLength {
		c.ChunkLength = 0
	}
	return c
}

// Manifest describes one backup completely: with it and the chunks it names, the volume can be restored
// without any control plane (disaster recovery). A backup exists iff its manifest exists.
type Manifest struct {
	FormatVersion int               `json:"format_version"`
	VolumeID      string            `json:"volume_id"`
	BackupID      string            `json:"backup_id"`
	Parent        string            `json:"parent,omitempty"` // backup this one was taken against (informational: every backup restores alone)
	Size          int64             `json:"size"`             // volume size in bytes
	ChunkSize     int64             `json:"chunk_size"`
	Hash          string            `json:"hash"` // HashBLAKE3 or HashBLAKE3Keyed
	Compression   string            `json:"compression"`
	Encryption    string            `json:"encryption,omitempty"` // "" or EncryptionAES
	KeyID         string            `json:"key_id,omitempty"`     // fingerprint of the encryption key
	SourceType    string            `json:"source_type,omitempty"`
	CreatedAt     time.Time         `json:"created_at"`
	CompletedAt   time.Time         `json:"completed_at"`
	Labels        map[string]string `json:"labels,omitempty"`
	Chunks        []ChunkRef        `json:"chunks"`       // by offset
	ZeroRanges    []Extent          `json:"zero_ranges"`  // by offset; together with Chunks covers [0, Size)
	StoredBytes   int64             `json:"stored_bytes"` // sum of StoredSize over distinct chunks: what this backup holds alone
	// ManifestHash is SHA-256 (hex) of the manifest's JSON encoding with this field empty (MAC included): a
	// torn or bit-flipped manifest is refused instead of restoring garbage. It proves nothing about who wrote
	// the manifest: anyone who can write to the store can recompute it.
	ManifestHash string `json:"manifest_hash"`
	// MAC authenticates the manifest in an encrypted store: HMAC-SHA256 (hex) of its canonical encoding
	// (ManifestHash and MAC empty) under a key derived from the store key. Whoever can write to the bucket
	// but lacks the key cannot forge or alter a manifest (its labels name the owner and the volume recover
	// registers), nor move one to another volume or backup (both ids are inside what it covers). An
	// encrypted store refuses a manifest without a valid MAC, including those written before manifests
	// carried one.
	//
	// An unencrypted store has no key and writes no MAC: its manifests cannot be authenticated, only checked
	// for damage (ManifestHash), so recover must treat their labels as untrusted input.
	MAC string `json:"mac,omitempty"`
}

var (
	// ErrInvalidManifest wraps every reason DecodeManifest, and the engine reading a manifest, refuse it.
	ErrInvalidManifest = errors.New("invalid manifest")
	// ErrUnauthenticated refuses a manifest of an encrypted store whose MAC is missing or wrong: forged,
	// altered, or written with another key. It wraps ErrInvalidManifest, so everything that treats a damaged
	// manifest as a problem (catalog, scrub, GC) treats this one the same way.
	ErrUnauthenticated = fmt.Errorf("%w: manifest is not authenticated by this store's key", ErrInvalidManifest)
)

// EncodeManifest validates m, fills in ManifestHash and returns the JSON to store. It writes no MAC (it
// has no key): it is what an unencrypted store writes. The engine of an encrypted store adds the MAC.
func EncodeManifest(m *Manifest) ([]byte, error) {
	return encodeManifest(m, nil)
}

// encodeManifest is EncodeManifest with a MAC under macKey when macKey is not nil.
func encodeManifest(m *Manifest, macKey []byte) ([]byte, error) {
	c := *m
	if err := c.validate(); err != nil {
		return nil, err
	}
	body, err := c.canonical()
	if err != nil {
		return nil, err
	}
	c.ManifestHash, c.MAC = "", ""
	c.normalize()
	if macKey != nil {
		c.MAC = hex.EncodeToString(manifestMAC(macKey, body))
	}
	if body, err = json.Marshal(&c); err != nil { // ManifestHash still empty, MAC set
		return nil, err
	}
	sum := sha256.Sum256(body)
	c.ManifestHash = hex.EncodeToString(sum[:])
	m.ManifestHash, m.MAC = c.ManifestHash, c.MAC
	return json.Marshal(&c)
}

// DecodeManifest parses and fully validates a manifest: version, ids, chunk geometry, exact coverage of the
// volume by chunks and zero ranges, and the manifest hash. It never panics on any input (fuzzed).
//
// It does not check the MAC (it has no key): a manifest it returns is well-formed, not authentic. Anything
// that trusts a manifest's content reads it through the Engine, which does.
func DecodeManifest(data []byte) (*Manifest, error) {
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidManifest, err)
	}
	if err := m.validate(); err != nil {
		return nil, err
	}
	want := m.ManifestHash
	c := m
	c.ManifestHash = ""
	c.normalize()
	body, err := json.Marshal(&c)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidManifest, err)
	}
	sum := sha256.Sum256(body)
	if got := hex.EncodeToString(sum[:]); got != want {
		return nil, fmt.Errorf("%w: manifest hash mismatch (torn or modified manifest)", ErrInvalidManifest)
	}
	return &m, nil
}

// authenticate checks m's MAC under macKey. keyID is the fingerprint of the store key: when m names another
// one (written with another key, or a forgery that did not copy it) the error also wraps ErrWrongKey.
func (m *Manifest) authenticate(macKey []byte, keyID string) error {
	refuse := func(why string) error {
		if m.KeyID != keyID {
			return fmt.Errorf("%w (%s; it names another key): %w", ErrUnauthenticated, why, ErrWrongKey)
		}
		return fmt.Errorf("%w (%s)", ErrUnauthenticated, why)
	}
	if m.MAC == "" {
		return refuse("it carries no MAC: forged, or written before manifests were authenticated")
	}
	got, err := hex.DecodeString(m.MAC)
	if err != nil {
		return refuse("its MAC is not hex")
	}
	body, err := m.canonical()
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidManifest, err)
	}
	if !hmac.Equal(got, manifestMAC(macKey, body)) {
		return refuse("MAC mismatch: forged, altered, or written with another key")
	}
	return nil
}

// canonical is the encoding the MAC covers: the manifest's JSON with ManifestHash and MAC empty and nil
// lists as empty ones. Go's encoding is deterministic (struct order, sorted label keys), and it is computed
// from the decoded value, so what the MAC vouches for is exactly what the engine uses: unknown, duplicate
// or differently-cased keys in the stored bytes are not part of it.
func (m *Manifest) canonical() ([]byte, error) {
	c := *m
	c.ManifestHash, c.MAC = "", ""
	c.normalize()
	return json.Marshal(&c)
}

// normalize makes nil lists empty, so that a decoded manifest encodes as the one that was written.
func (m *Manifest) normalize() {
	if m.Chunks == nil {
		m.Chunks = []ChunkRef{}
	}
	if m.ZeroRanges == nil {
		m.ZeroRanges = []Extent{}
	}
}

func manifestMAC(key, body []byte) []byte {
	h := hmac.New(sha256.New, key)
	_, _ = h.Write(body)
	return h.Sum(nil)
}

func (m *Manifest) validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidManifest, fmt.Sprintf(format, a...))
	}
	if m.FormatVersion != FormatVersion && m.FormatVersion != FormatVersion1 {
		return bad("format_version %d not supported (want %d or %d)", m.FormatVersion, FormatVersion1, FormatVersion)
	}
	if err := validComponent(m.VolumeID); err != nil {
		return bad("volume_id: %v", err)
	}
	if err := validComponent(m.BackupID); err != nil {
		return bad("backup_id: %v", err)
	}
	if m.Parent != "" {
		if err := validComponent(m.Parent); err != nil {
			return bad("parent: %v", err)
		}
	}
	if m.Size < 0 {
		return bad("negative size")
	}
	if m.ChunkSize <= 0 || m.ChunkSize > maxChunkSize {
		return bad("chunk_size %d out of range", m.ChunkSize)
	}
	switch {
	case m.Hash == HashBLAKE3 && m.Encryption == "":
	case m.Hash == HashBLAKE3Keyed && m.Encryption == EncryptionAES && m.KeyID != "":
	default:
		return bad("hash %q with encryption %q / key_id %q", m.Hash, m.Encryption, m.KeyID)
	}
	if m.Compression != CompressionZstd {
		return bad("compression %q", m.Compression)
	}
	// Walk chunks and zero ranges together: each next piece must start where the last ended.
	var pos int64
	ci, zi := 0, 0
	for ci < len(m.Chunks) || zi < len(m.ZeroRanges) {
		if ci < len(m.Chunks) && m.Chunks[ci].Offset == pos {
			c := m.Chunks[ci]
			if err := m.checkChunk(c); err != nil {
				return bad("chunk at %d: %v", c.Offset, err)
			}
			pos += c.Length
			ci++
			continue
		}
		if zi < len(m.ZeroRanges) && m.ZeroRanges[zi].Offset == pos {
			z := m.ZeroRanges[zi]
			if z.Length <= 0 || z.Length > m.Size-z.Offset || !m.onBoundary(z.Offset) || !m.onBoundary(z.End()) {
				return bad("zero range %d+%d does not fit the chunk grid", z.Offset, z.Length)
			}
			pos += z.Length
			zi++
			continue
		}
		return bad("gap or overlap at offset %d", pos)
	}
	if pos != m.Size {
		return bad("chunks and zero ranges cover %d of %d bytes", pos, m.Size)
	}
	return nil
}

// onBoundary reports whether a piece may start or end at off: on the chunk grid (v1), on a sector (v2), or
// at the end of the volume.
func (m *Manifest) onBoundary(off int64) bool {
	if off == m.Size {
		return true
	}
	if m.FormatVersion == FormatVersion1 {
		return off%m.ChunkSize == 0
	}
	return off%pieceAlign == 0
}

// checkChunk checks one chunk ref's geometry against m's version (Offset is already where the walk is).
func (m *Manifest) checkChunk(c ChunkRef) error {
	if c.Length <= 0 || c.Length > m.Size-c.Offset {
		return fmt.Errorf("length %d out of range", c.Length)
	}
	if m.FormatVersion == FormatVersion1 {
		if c.Offset%m.ChunkSize != 0 || c.Length != min(m.ChunkSize, m.Size-c.Offset) || c.Skip != 0 || c.ChunkLength != 0 {
			return fmt.Errorf("length %d does not fit the chunk grid", c.Length)
		}
	} else {
		if !m.onBoundary(c.Offset) || !m.onBoundary(c.End()) || c.Offset/m.ChunkSize != (c.End()-1)/m.ChunkSize {
			return fmt.Errorf("piece of %d bytes does not fit the chunk grid", c.Length)
		}
		switch {
		case c.ChunkLength == 0 && c.Skip != 0:
			return fmt.Errorf("skip %d without chunk_length", c.Skip)
		case c.ChunkLength < 0 || c.ChunkLength > maxChunkSize || c.Skip < 0 ||
			(c.ChunkLength > 0 && c.Length > c.ChunkLength-c.Skip):
			return fmt.Errorf("slice %d+%d of a %d-byte chunk", c.Skip, c.Length, c.ChunkLength)
		}
	}
	if len(c.ID) != 64 {
		return errors.New("id must be 64 hex digits")
	}
	if _, err := hex.DecodeString(c.ID); err != nil {
		return fmt.Errorf("id: %v", err)
	}
	if c.StoredSize <= 0 || c.StoredSize > 2*maxChunkSize {
		return fmt.Errorf("stored_size %d", c.StoredSize)
	}
	return nil
}

// End is the first offset after the ref's range.
func (c ChunkRef) End() int64 { return c.Offset + c.Length }

// piecesIn returns m's chunk refs and zero ranges covering [off, off+length), cut to it (a chunk ref cut
// becomes a slice of its chunk), or false when m does not cover the range (it is past m's size).
func (m *Manifest) piecesIn(off, length int64) (refs []ChunkRef, zeros []Extent, ok bool) {
	end := off + length
	if off < 0 || end > m.Size {
		return nil, nil, false
	}
	i := sort.Search(len(m.Chunks), func(i int) bool { return m.Chunks[i].End() > off })
	for ; i < len(m.Chunks) && m.Chunks[i].Offset < end; i++ {
		c := m.Chunks[i]
		refs = append(refs, c.slice(max(c.Offset, off), min(c.End(), end)))
	}
	j := sort.Search(len(m.ZeroRanges), func(j int) bool { return m.ZeroRanges[j].End() > off })
	for ; j < len(m.ZeroRanges) && m.ZeroRanges[j].Offset < end; j++ {
		z := m.ZeroRanges[j]
		from, to := max(z.Offset, off), min(z.End(), end)
		zeros = append(zeros, Extent{Offset: from, Length: to - from})
	}
	return refs, zeros, true
}

// storedBytes sums StoredSize over distinct chunk ids.
func storedBytes(chunks []ChunkRef) int64 {
	seen := make(map[string]bool, len(chunks))
	var n int64
	for _, c := range chunks {
		if !seen[c.ID] {
			seen[c.ID] = true
			n += c.StoredSize
		}
	}
	return n
}

// mergeZero appends e to a sorted list of zero ranges, merging it into the last one when adjacent.
func mergeZero(zs []Extent, e Extent) []Extent {
	if n := len(zs); n > 0 && zs[n-1].End() == e.Offset {
		zs[n-1].Length += e.Length
		return zs
	}
	return append(zs, e)
}
