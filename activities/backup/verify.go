package backup

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
)

// VerifyRequest asks for a scrub of one backup.
type VerifyRequest struct {
	VolumeID string
	BackupID string
	// Deep re-reads and re-hashes chunks instead of only checking they exist with the recorded size.
	Deep bool
	// SamplePercent limits deep checking to a random share of the chunks (0 or ≥100 = all).
	SamplePercent float64
	Progress      func(Progress)
}

// ChunkProblem is one bad chunk found by Verify.
type ChunkProblem struct {
	Offset int64  `json:"offset"`
	ID     string `json:"id"`
	Error  string `json:"error"`
}

// VerifyReport is the result of a scrub. Problems are reported here, not as an error: Verify's error means
// the scrub itself could not run (manifest unreadable, store down, cancelled).
type VerifyReport struct {
	VolumeID    string         `json:"volume_id"`
	BackupID    string         `json:"backup_id"`
	Chunks      int            `json:"chunks"`       // distinct chunks referenced
	DeepChecked int            `json:"deep_checked"` // of which re-read and re-hashed
	Missing     []ChunkProblem `json:"missing,omitempty"`
	Corrupt     []ChunkProblem `json:"corrupt,omitempty"`
}

// OK reports whether the backup passed.
func (r *VerifyReport) OK() bool { return len(r.Missing) == 0 && len(r.Corrupt) == 0 }

// Verify checks that every chunk of a backup exists with its recorded size; with Deep it also fetches,
// decrypts, decompresses and re-hashes (a sample of) them. Read-only, so idempotent.
func (e *Engine) Verify(ctx context.Context, req VerifyRequest) (*VerifyReport, error) {
	m, err := e.Manifest(ctx, req.VolumeID, req.BackupID)
	if err != nil {
		return nil, err
	}
	if req.Deep {
		if err := e.checkKey(m); err != nil {
			return nil, err
		}
	}
	var distinct []ChunkRef
	seen := map[string]bool{}
	for _, c := range m.Chunks {
		if !seen[c.ID] {
			seen[c.ID] = true
			distinct = append(distinct, c)
		}
	}
	rep := &VerifyReport{VolumeID: m.VolumeID, BackupID: m.BackupID, Chunks: len(distinct)}
	prog := newReporter(req.Progress, e.opts, 0)
	var mu sync.Mutex
	var done int64
	bufs := make([]struct{ plain, obj []byte }, e.opts.Concurrency)
	err = parallel(ctx, e.opts.Concurrency, len(distinct), func(ctx context.Context, w, i int) error {
		c := distinct[i]
		name := chunkName(m.VolumeID, c.ID)
		problem := func(list *[]ChunkProblem, err error) {
			mu.Lock()
			*list = append(*list, ChunkProblem{Offset: c.Offset, ID: c.ID, Error: err.Error()})
			mu.Unlock()
		}
		deep := req.Deep && (req.SamplePercent <= 0 || req.SamplePercent >= 100 || rand.Float64()*100 < req.SamplePercent)
		if !deep {
			info, err := e.store.Stat(ctx, name)
			switch {
			case errors.Is(err, ErrNotExist):
				problem(&rep.Missing, err)
			case err != nil:
				return err
			case info.Size != c.StoredSize:
				problem(&rep.Corrupt, fmt.Errorf("stored size %d, manifest says %d: %w", info.Size, c.StoredSize, ErrCorrupt))
			}
		} else {
			obj, err := readSized(ctx, e.store, name, c.StoredSize, &bufs[w].obj)
			switch {
			case errors.Is(err, ErrNotExist):
				problem(&rep.Missing, err)
			case errors.Is(err, ErrCorrupt):
				problem(&rep.Corrupt, err)
			case err != nil:
				return err
			default:
				plain, err := e.codec.open(m.Hash, c.ID, obj, c.PlainLength(), bufs[w].plain)
				if err != nil {
					if errors.Is(err, ErrWrongKey) {
						return err
					}
					problem(&rep.Corrupt, err)
				} else {
					bufs[w].plain = plain
				}
			}
		}
		mu.Lock()
		done += c.Length
		if deep {
			rep.DeepChecked++
		}
		prog.report(Progress{Phase: PhaseVerify, BytesDone: done, BytesTotal: m.Size - zeroBytes(m)}, false)
		mu.Unlock()
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("verify %s of volume %s: %w", req.BackupID, req.VolumeID, err)
	}
	return rep, nil
}

func zeroBytes(m *Manifest) int64 {
	var n int64
	for _, z := range m.ZeroRanges {
		n += z.Length
	}
	return n
}
