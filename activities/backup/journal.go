package backup

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"
)

// journalSegment is one durable step of a running backup: the chunks and zero ranges of [From, To).
// Segments chain From == previous To; resume replays them and continues from the last To.
type journalSegment struct {
	FormatVersion int        `json:"format_version"`
	Seq           int        `json:"seq"`
	Size          int64      `json:"size"`
	ChunkSize     int64      `json:"chunk_size"`
	Parent        string     `json:"parent,omitempty"`
	KeyID         string     `json:"key_id,omitempty"`
	CreatedAt     time.Time  `json:"created_at"`
	From          int64      `json:"from"`
	To            int64      `json:"to"`
	Chunks        []ChunkRef `json:"chunks"`
	ZeroRanges    []Extent   `json:"zero_ranges"`
	// MAC authenticates the segment in an encrypted store, as Manifest.MAC does a manifest: a resumed backup
	// records what its journal says for the range it covers, without reading it again, so a segment written
	// by someone without the key must not count. It covers the volume and backup ids too, so a genuine
	// segment of another backup does not count either.
	MAC string `json:"mac,omitempty"`
}

// journalMAC is the MAC of seg (its MAC field aside) as a segment of backupID of volumeID.
func (c *codec) journalMAC(volumeID, backupID string, seg journalSegment) (string, error) {
	seg.MAC = ""
	body, err := json.Marshal(&seg)
	if err != nil {
		return "", err
	}
	h := hmac.New(sha256.New, c.jrnKey)
	fmt.Fprintf(h, "%s\x00%s\x00", volumeID, backupID)
	_, _ = h.Write(body)
	return hex.EncodeToString(h.Sum(nil)), nil
}

// authenticJournal reports whether seg may be resumed from: always without a key (an unencrypted store
// cannot tell), else when its MAC is valid.
func (c *codec) authenticJournal(volumeID, backupID string, seg journalSegment) bool {
	if c.jrnKey == nil {
		return true
	}
	want, err := c.journalMAC(volumeID, backupID, seg)
	return err == nil && hmac.Equal([]byte(seg.MAC), []byte(want))
}

// writeJournal writes the segment of what st did since the last one, once the chunks it names are durable.
func (e *Engine) writeJournal(ctx context.Context, req BackupRequest, st *backupState) error {
	if err := flush(ctx, st.batch); err != nil {
		return err
	}
	seg := journalSegment{
		FormatVersion: FormatVersion, Seq: st.seq, Size: req.Size, ChunkSize: e.opts.ChunkSize,
		Parent: req.Parent, KeyID: e.codec.keyID, CreatedAt: st.createdAt,
		From: st.journalled, To: st.next, Chunks: st.chunks[st.segChunks:], ZeroRanges: st.segZeros,
	}
	if e.codec.jrnKey != nil {
		mac, err := e.codec.journalMAC(req.VolumeID, req.BackupID, seg)
		if err != nil {
			return err
		}
		seg.MAC = mac
	}
	data, err := json.Marshal(&seg)
	if err != nil {
		return err
	}
	if err := PutBytes(ctx, e.store, journalName(req.VolumeID, req.BackupID, st.seq), data); err != nil {
		return fmt.Errorf("write resume journal: %w", err)
	}
	st.seq++
	st.journalled = st.next
	st.segChunks = len(st.chunks)
	st.segZeros = nil
	st.unjournalled = 0
	return nil
}

// loadJournal replays the journal of an earlier run of req. Segments that do not chain, that were written
// for different parameters, or that the store key does not authenticate are ignored from there on: resuming
// from less is always correct.
func (e *Engine) loadJournal(ctx context.Context, req BackupRequest, st *backupState) error {
	var names []string
	err := e.store.List(ctx, journalPrefix(req.VolumeID, req.BackupID), func(oi ObjectInfo) error {
		if strings.HasSuffix(oi.Name, ".json") {
			names = append(names, oi.Name)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("read resume journal: %w", err)
	}
	sort.Strings(names) // zero-padded sequence numbers
	for i, n := range names {
		data, err := ReadAll(ctx, e.store, n, maxManifestSize)
		if err != nil {
			return fmt.Errorf("read resume journal: %w", err)
		}
		var seg journalSegment
		if err := json.Unmarshal(data, &seg); err != nil || seg.Seq != i || seg.From != st.next ||
			seg.FormatVersion != FormatVersion || seg.Size != req.Size || seg.ChunkSize != e.opts.ChunkSize ||
			seg.Parent != req.Parent || seg.KeyID != e.codec.keyID || seg.To > req.Size || seg.To <= seg.From ||
			!e.codec.authenticJournal(req.VolumeID, req.BackupID, seg) {
			break
		}
		if i == 0 {
			st.createdAt = seg.CreatedAt
		}
		st.chunks = append(st.chunks, seg.Chunks...)
		for _, z := range seg.ZeroRanges {
			st.zeros = mergeZero(st.zeros, z)
		}
		st.next, st.journalled, st.seq = seg.To, seg.To, i+1
	}
	st.segChunks = len(st.chunks)
	// Drop segments past a break so the next write (numbered st.seq) chains cleanly.
	for _, n := range names[st.seq:] {
		if err := e.store.Delete(ctx, n); err != nil {
			return err
		}
	}
	return nil
}

func (e *Engine) deleteJournal(ctx context.Context, volumeID, backupID string) error {
	var names []string
	if err := e.store.List(ctx, journalPrefix(volumeID, backupID), func(oi ObjectInfo) error {
		names = append(names, oi.Name)
		return nil
	}); err != nil {
		return err
	}
	for _, n := range names {
		if err := e.store.Delete(ctx, n); err != nil {
			return err
		}
	}
	return nil
}
