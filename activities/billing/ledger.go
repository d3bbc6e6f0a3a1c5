package billing

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/holdfast/holdfast/activities/billing/contract"
)

// Ledger is an append-only JSON-lines file of line items, one object per line, each key at most once.
//
// Contract: Append writes each item whose IdempotencyKey is not in the file yet and skips the others, so
// retries, re-run hours and restarts never charge twice. Appends are atomic per call with respect to other
// Ledgers on the same file (in this process or another: an exclusive flock), and durable when Append
// returns (fsync). A torn last line, left by a crash mid-append, is cut off before the next append: its
// item was never acknowledged, so the retried append writes it whole.
//
// The index of keys is built once by reading the file and then kept current by reading only what others
// appended since (the tail): memory grows with the number of keys (about 100 bytes each).
type Ledger struct {
	mu     sync.Mutex
	file   *os.File
	keys   map[string]struct{}
	offset int64 // end of the last complete line indexed
}

// OpenLedger opens (creating it and its directory if needed) and indexes a ledger file.
func OpenLedger(path string) (*Ledger, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, err
	}
	l := &Ledger{file: f, keys: map[string]struct{}{}}
	if err := l.locked(func() error { return l.catchUp() }); err != nil {
		_ = f.Close()
		return nil, err
	}
	return l, nil
}

// Close closes the file.
func (l *Ledger) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.file.Close()
}

// Has reports whether the ledger holds a key (as of the last append or open).
func (l *Ledger) Has(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.keys[key]
	return ok
}

// Append writes the items not yet in the ledger and returns how many it wrote.
func (l *Ledger) Append(items []contract.LineItem) (int, error) {
	written := 0
	err := l.locked(func() error {
		if err := l.catchUp(); err != nil {
			return err
		}
		var buf bytes.Buffer
		var added []string
		batch := map[string]struct{}{}
		for _, it := range items {
			if it.IdempotencyKey == "" {
				return fmt.Errorf("line item of volume %q has no idempotency key", it.VolumeID)
			}
			if _, ok := l.keys[it.IdempotencyKey]; ok {
				continue
			}
			if _, ok := batch[it.IdempotencyKey]; ok {
				continue
			}
			line, err := json.Marshal(it)
			if err != nil {
				return err
			}
			buf.Write(line)
			buf.WriteByte('\n')
			batch[it.IdempotencyKey] = struct{}{}
			added = append(added, it.IdempotencyKey)
		}
		if buf.Len() == 0 {
			return nil
		}
		// One write at the end of the file, then fsync: the lines are durable before anyone is told so.
		if _, err := l.file.WriteAt(buf.Bytes(), l.offset); err != nil {
			return err
		}
		if err := l.file.Sync(); err != nil {
			return err
		}
		l.offset += int64(buf.Len())
		for _, k := range added {
			l.keys[k] = struct{}{}
		}
		written = len(added)
		return nil
	})
	return written, err
}

// locked runs fn holding the process mutex and the file's exclusive flock.
func (l *Ledger) locked(fn func() error) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	fd := int(l.file.Fd())
	if err := syscall.Flock(fd, syscall.LOCK_EX); err != nil {
		return fmt.Errorf("lock ledger: %w", err)
	}
	defer func() { _ = syscall.Flock(fd, syscall.LOCK_UN) }()
	return fn()
}

// catchUp indexes the complete lines appended after l.offset (by anyone) and cuts off a torn last line.
// Callers hold the lock, so nobody is mid-append: a line without its newline is a crash's leftover.
func (l *Ledger) catchUp() error {
	r := bufio.NewReaderSize(io.NewSectionReader(l.file, l.offset, 1<<62), 1<<16)
	for {
		line, err := r.ReadBytes('\n')
		if err == io.EOF {
			if len(line) > 0 {
				if err := l.file.Truncate(l.offset); err != nil {
					return fmt.Errorf("cut torn ledger line: %w", err)
				}
				if err := l.file.Sync(); err != nil {
					return err
				}
			}
			return nil
		}
		if err != nil {
			return err
		}
		var it struct {
			Key string `json:"idempotency_key"`
		}
		if trimmed := bytes.TrimSpace(line); len(trimmed) > 0 {
			if err := json.Unmarshal(trimmed, &it); err != nil {
				return fmt.Errorf("ledger %s at byte %d: %w", l.file.Name(), l.offset, err)
			}
			l.keys[it.Key] = struct{}{}
		}
		l.offset += int64(len(line))
	}
}
