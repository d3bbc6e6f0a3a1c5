package backup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// ErrNotExist is returned (wrapped) by Store.Get and Store.Stat when the named object does not exist.
// Callers test it with errors.Is.
var ErrNotExist = errors.New("object does not exist")

// ObjectInfo describes one stored object.
type ObjectInfo struct {
	Name    string    // full object name, as passed to Put
	Size    int64     // bytes
	ModTime time.Time // when the object was last written; GC's grace period is measured against it
}

// Store is a flat namespace of immutable-ish objects: backup storage as the engine sees it. It is the only
// thing the engine knows about S3 or file systems; decorators (throttling, counting, fault injection) wrap
// it without the engine noticing.
//
// Contract — every implementation passes storetest.Run, which checks each point:
//   - Names are '/'-separated relative paths of safe components (see ValidateName); a store maps them onto
//     its own namespace (a key prefix, a directory) and never lets one escape it.
//   - Put stores exactly size bytes read from r under name, replacing any previous object. It is atomic:
//     readers see the old object, or no object, or the complete new one, never a prefix. A failed or
//     cancelled Put leaves nothing visible under name (an earlier object may remain). Putting the same
//     bytes twice is a success (idempotent), which is what makes retried uploads safe.
//   - Get returns the object's full content; the caller closes it. A missing object is an error wrapping
//     ErrNotExist.
//   - Stat returns the object's size and modification time, or an error wrapping ErrNotExist.
//   - List calls fn for every object whose name starts with prefix, in no particular order, until fn
//     returns an error (which List returns). Objects put before List started are listed, objects deleted
//     before it started are not (read-after-write, including listings: the volume locks rely on it, see
//     lock.go); concurrent puts may or may not be. Internal temporary files are never listed.
//   - ModTime is the store's clock when the object was written, and a Put that replaces an object renews it
//     (lock refreshes rely on it; locks compare only ModTimes of one store, never a host's clock).
//   - Delete removes the object. Deleting a missing object is a success (idempotent).
//   - All methods honour ctx cancellation, are safe for concurrent use, and never log credentials.
//   - Implementations do not retry forever: transient-error retries are bounded, then the error surfaces.
type Store interface {
	Put(ctx context.Context, name string, r io.Reader, size int64) error
	Get(ctx context.Context, name string) (io.ReadCloser, error)
	Stat(ctx context.Context, name string) (ObjectInfo, error)
	List(ctx context.Context, prefix string, fn func(ObjectInfo) error) error
	Delete(ctx context.Context, name string) error
	// String names the store for logs and errors (endpoint/bucket/prefix or path; never secrets).
	String() string
}

// DeferredStore is a Store that can defer the durability of puts: on a local directory two fsyncs per
// chunk object are most of an incremental backup's time. A backup puts its chunks through its own Batch and
// flushes it before anything that names them is written (a journal segment, the manifest), so nothing that
// names a chunk outlives it in a crash. A batch is tagged with its backup's ID: what an attempt killed
// before flushing left under prefix, RemoveTemp(prefix, tag) removes (the backup's next attempt, which holds
// its lock, and its abandon do), and RemoveStaleTemp removes whatever is older than age (GC). Neither
// touches a live batch of this process.
type DeferredStore interface {
	Store
	Batch(tag string) PutBatch
	RemoveTemp(ctx context.Context, prefix, tag string) (int, error)
	RemoveStaleTemp(ctx context.Context, prefix string, age time.Duration) (int, error)
}

// PutBatch is a set of deferred puts. Put stores data under name as Store.Put does, except that the object
// is neither visible (Get, Stat, List) nor durable until a Flush returns nil; Flush makes every put so far
// both (after a failed Flush they stay pending); Discard removes the puts not flushed. Safe for concurrent
// use: "so far" is the puts that returned before Flush began.
type PutBatch interface {
	Put(ctx context.Context, name string, data []byte) error
	Flush(ctx context.Context) error
	Discard()
}

// ValidateName reports whether name is a legal object name: non-empty '/'-separated components made of
// letters, digits, '.', '_' and '-', none of them "." or "..". Stores call it so that no name can escape
// their root, whatever the caller passes.
func ValidateName(name string) error {
	if name == "" {
		return errors.New("backup: empty object name")
	}
	for _, part := range strings.Split(name, "/") {
		if err := validComponent(part); err != nil {
			return fmt.Errorf("backup: object name %q: %w", name, err)
		}
	}
	return nil
}

// validComponent checks one path component (also used for volume and backup ids).
func validComponent(s string) error {
	if s == "" || s == "." || s == ".." {
		return fmt.Errorf("invalid component %q", s)
	}
	if len(s) > 200 {
		return fmt.Errorf("component longer than 200 bytes")
	}
	for _, c := range s {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return fmt.Errorf("invalid character %q in %q", c, s)
		}
	}
	return nil
}

// ReadAll gets a whole object into memory, refusing objects larger than limit (a corrupt or hostile store
// must not make the engine allocate without bound).
func ReadAll(ctx context.Context, s Store, name string, limit int64) ([]byte, error) {
	rc, err := s.Get(ctx, name)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("read %s: object larger than %d bytes", name, limit)
	}
	return b, nil
}

// PutBytes stores data under name.
func PutBytes(ctx context.Context, s Store, name string, data []byte) error {
	return s.Put(ctx, name, bytes.NewReader(data), int64(len(data)))
}

// readSized reads an object that should be exactly size bytes into *buf (grown as needed and reused across
// calls, so steady-state restores do not allocate per chunk). A different length wraps ErrCorrupt.
func readSized(ctx context.Context, s Store, name string, size int64, buf *[]byte) ([]byte, error) {
	if size < 0 || size > 2*maxChunkSize {
		return nil, fmt.Errorf("stored size %d out of range: %w", size, ErrCorrupt)
	}
	rc, err := s.Get(ctx, name)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	if int64(cap(*buf)) < size+1 {
		*buf = make([]byte, size+1)
	}
	b := (*buf)[:size+1]
	n, err := io.ReadFull(rc, b)
	switch {
	case err == nil:
		return nil, fmt.Errorf("stored object is longer than the %d bytes the manifest says: %w", size, ErrCorrupt)
	case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
		if int64(n) != size {
			return nil, fmt.Errorf("stored object has %d bytes, manifest says %d: %w", n, size, ErrCorrupt)
		}
		return b[:n], nil
	default:
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
}
