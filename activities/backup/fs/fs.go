// Package fs is a backup.Store on a local directory or an NFS mount.
//
// It owns the mapping of object names onto files under one root directory and the atomic-write protocol
// (temp file in the target directory, fsync, rename, fsync of the directory), so a crash never leaves a
// partial object visible. Batches (backup.DeferredStore) write many objects and sync them together at
// Flush (the files, then the renames, then their directories), so an object is never visible before it is
// durable either. It must never touch anything outside its root or follow names that could escape it.
package fs

import (
	"context"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/holdfast/holdfast/activities/backup"
)

// tmpPrefix marks in-flight writes and batches' unflushed puts: List skips them, RemoveTemp and
// RemoveStaleTemp remove them.
const tmpPrefix = ".tmp-"

// isTemp reports whether d is a temporary file (tmpPrefix).
func isTemp(d iofs.DirEntry) bool { return !d.IsDir() && strings.HasPrefix(d.Name(), tmpPrefix) }

// Store keeps each object in a file named after it under Root.
type Store struct {
	root string

	mu   sync.Mutex
	live map[string]bool // temporary files of batches' puts not yet flushed or discarded
}

// deferred is a batch's put written to tmp, to be renamed to final when the batch is flushed.
type deferred struct{ tmp, final string }

// New opens (creating if needed) a store rooted at cfg.Path.
func New(cfg Config) (*Store, error) {
	if cfg.Path == "" {
		return nil, errors.New("fs store: path is required")
	}
	root, err := filepath.Abs(cfg.Path)
	if err != nil {
		return nil, fmt.Errorf("fs store: path: %w", err)
	}
	if err := os.MkdirAll(root, 0o750); err != nil {
		return nil, fmt.Errorf("fs store: %w", err)
	}
	return &Store{root: root}, nil
}

func (s *Store) String() string { return "fs:" + s.root }

func (s *Store) path(name string) (string, error) {
	if err := backup.ValidateName(name); err != nil {
		return "", err
	}
	return filepath.Join(s.root, filepath.FromSlash(name)), nil
}

// Put writes to a temp file beside the target, fsyncs it, renames it into place and fsyncs the directory:
// the rename is the commit point, so readers never see a partial object.
func (s *Store) Put(ctx context.Context, name string, r io.Reader, size int64) (err error) {
	p, f, err := s.createTemp(ctx, name, "")
	if err != nil {
		return err
	}
	dir := filepath.Dir(p)
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}()
	n, err := io.Copy(f, ctxReader{ctx, io.LimitReader(r, size)})
	if err != nil {
		return fmt.Errorf("fs put %s: %w", name, err)
	}
	if n != size {
		return fmt.Errorf("fs put %s: short body: %d of %d bytes", name, n, size)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("fs put %s: %w", name, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("fs put %s: %w", name, err)
	}
	if err = ctx.Err(); err != nil {
		return err
	}
	if err = os.Rename(f.Name(), p); err != nil {
		return fmt.Errorf("fs put %s: %w", name, err)
	}
	return syncDir(dir)
}

// Batch starts a set of deferred puts (backup.DeferredStore): each is written to a temporary file beside
// its object's (never listed) without syncing it; Flush syncs them together and renames them into place.
// A crash before then leaves the temporary files, for RemoveStaleTemp.
func (s *Store) Batch(tag string) backup.PutBatch { return &batch{s: s, tag: tag} }

type batch struct {
	s       *Store
	tag     string     // in its files' names, for RemoveTemp
	mu      sync.Mutex // Put runs from a backup's workers while its collector flushes
	pending []deferred
}

func (b *batch) Put(ctx context.Context, name string, data []byte) (err error) {
	p, f, err := b.s.createTemp(ctx, name, b.tag)
	if err != nil {
		return err
	}
	b.s.track(f.Name(), true)
	if _, err = f.Write(data); err == nil {
		err = f.Close()
	} else {
		_ = f.Close()
	}
	if err != nil {
		b.s.track(f.Name(), false)
		_ = os.Remove(f.Name())
		return fmt.Errorf("fs put %s: %w", name, err)
	}
	b.mu.Lock()
	b.pending = append(b.pending, deferred{tmp: f.Name(), final: p})
	b.mu.Unlock()
	return nil
}

// Flush makes the batch's puts durable and visible: their files are synced (concurrently, so the file
// system commits them together), renamed into place, and their directories synced. Only the batch's own
// files are synced, never the whole file system: on a hypervisor the store may share it with the guests'
// disks. Puts it could not rename stay pending.
func (b *batch) Flush(ctx context.Context) error {
	b.mu.Lock()
	todo := b.pending // the puts that returned before this Flush; later ones wait for the next
	b.pending = nil
	b.mu.Unlock()
	if len(todo) == 0 {
		return nil
	}
	keep := func(rest []deferred, err error) error {
		b.mu.Lock()
		b.pending = append(rest, b.pending...)
		b.mu.Unlock()
		return fmt.Errorf("fs flush: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return keep(todo, err)
	}
	files := make([]string, len(todo))
	dirs := map[string]bool{}
	for i, d := range todo {
		files[i] = d.tmp
		dirs[filepath.Dir(d.final)] = true
	}
	if err := syncAll(files, syncFile); err != nil {
		return keep(todo, err)
	}
	for i, d := range todo {
		if err := os.Rename(d.tmp, d.final); err != nil {
			return keep(todo[i:], err)
		}
		b.s.track(d.tmp, false)
	}
	if err := syncAll(slices.Collect(maps.Keys(dirs)), syncDir); err != nil {
		return fmt.Errorf("fs flush: %w", err)
	}
	return nil
}

// flushWorkers bounds the syncs a Flush runs at once.
const flushWorkers = 16

// syncAll runs sync on every path, flushWorkers at a time, and returns the first error.
func syncAll(paths []string, sync func(string) error) error {
	errs := make(chan error, len(paths))
	sem := make(chan struct{}, flushWorkers)
	for _, p := range paths {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			errs <- sync(p)
		}()
	}
	var first error
	for range paths {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", path, err)
	}
	return nil
}

// Discard removes the puts not flushed.
func (b *batch) Discard() {
	b.mu.Lock()
	todo := b.pending
	b.pending = nil
	b.mu.Unlock()
	for _, d := range todo {
		_ = os.Remove(d.tmp)
		b.s.track(d.tmp, false)
	}
}

// track records whether tmp is a live batch's put, which RemoveStaleTemp must not remove.
func (s *Store) track(tmp string, live bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.live == nil {
		s.live = map[string]bool{}
	}
	if live {
		s.live[tmp] = true
	} else {
		delete(s.live, tmp)
	}
}

// RemoveStaleTemp removes the temporary files under prefix older than age, but none of a live batch's
// puts: what a process that died mid-put, or before flushing or discarding a batch, left behind.
func (s *Store) RemoveStaleTemp(ctx context.Context, prefix string, age time.Duration) (int, error) {
	cutoff := time.Now().Add(-age)
	return s.removeTemp(ctx, prefix, func(_ string, info iofs.FileInfo) bool { return info.ModTime().Before(cutoff) })
}

// RemoveTemp removes the temporary files under prefix of batches tagged tag, but none of a live batch's
// puts: what an attempt of that backup killed before it flushed left behind.
func (s *Store) RemoveTemp(ctx context.Context, prefix, tag string) (int, error) {
	if tag == "" {
		return 0, errors.New("fs: RemoveTemp needs a tag")
	}
	return s.removeTemp(ctx, prefix, func(name string, _ iofs.FileInfo) bool {
		// .tmp-TAG-<CreateTemp's digits>: the digits tell tag "b1" from "b1-2" (IDs may hold '-').
		rest, ok := strings.CutPrefix(name, tmpPrefix+tag+"-")
		return ok && rest != "" && strings.Trim(rest, "0123456789") == ""
	})
}

// removeTemp removes the temporary files under prefix that match says to, never a live batch's.
func (s *Store) removeTemp(ctx context.Context, prefix string, match func(name string, info iofs.FileInfo) bool) (int, error) {
	if err := backup.ValidateName(strings.TrimSuffix(prefix, "/")); err != nil {
		return 0, err
	}
	removed := 0
	start := filepath.Join(s.root, filepath.FromSlash(prefix))
	err := filepath.WalkDir(start, func(p string, d iofs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, iofs.ErrNotExist) {
				return nil
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		s.mu.Lock()
		live := s.live[p]
		s.mu.Unlock()
		if !isTemp(d) || live {
			return nil
		}
		info, err := d.Info()
		if err != nil || !match(d.Name(), info) {
			return nil //nolint:nilerr // gone meanwhile, or not one to remove
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, iofs.ErrNotExist) {
			return err
		}
		removed++
		return nil
	})
	return removed, err
}

// createTemp creates the temporary file a put of name writes before renaming it to path: .tmp-TAG-* for a
// batch's put (tag a valid name component, see backup.ValidateName), .tmp-* for Put's.
func (s *Store) createTemp(ctx context.Context, name, tag string) (path string, f *os.File, err error) {
	if path, err = s.path(name); err != nil {
		return "", nil, err
	}
	if err := ctx.Err(); err != nil {
		return "", nil, err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return "", nil, fmt.Errorf("fs put %s: %w", name, err)
	}
	pattern := tmpPrefix + "*"
	if tag != "" {
		if err := backup.ValidateName(tag); err != nil || strings.Contains(tag, "/") {
			return "", nil, fmt.Errorf("fs put %s: bad batch tag %q", name, tag)
		}
		pattern = tmpPrefix + tag + "-*"
	}
	if f, err = os.CreateTemp(dir, pattern); err != nil {
		return "", nil, fmt.Errorf("fs put %s: %w", name, err)
	}
	return path, f, nil
}

// TempFiles lists the temporary files under root: puts in flight, batches not flushed, or what a process
// that died left (tests check that an operation leaves none).
func TempFiles(root string) ([]string, error) {
	var out []string
	err := filepath.WalkDir(root, func(p string, d iofs.DirEntry, err error) error {
		if err == nil && isTemp(d) {
			out = append(out, p)
		}
		return err
	})
	return out, err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}

func (s *Store) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	p, err := s.path(name)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, mapErr(name, err)
	}
	return f, nil
}

func (s *Store) Stat(ctx context.Context, name string) (backup.ObjectInfo, error) {
	p, err := s.path(name)
	if err != nil {
		return backup.ObjectInfo{}, err
	}
	if err := ctx.Err(); err != nil {
		return backup.ObjectInfo{}, err
	}
	fi, err := os.Stat(p)
	if err != nil {
		return backup.ObjectInfo{}, mapErr(name, err)
	}
	if fi.IsDir() {
		return backup.ObjectInfo{}, fmt.Errorf("fs stat %s: %w", name, backup.ErrNotExist)
	}
	return backup.ObjectInfo{Name: name, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

func (s *Store) List(ctx context.Context, prefix string, fn func(backup.ObjectInfo) error) error {
	// Walk from the deepest directory the prefix names fully, then filter by the full prefix.
	start := s.root
	if i := strings.LastIndex(prefix, "/"); i >= 0 {
		if err := backup.ValidateName(prefix[:i]); err != nil {
			return err
		}
		start = filepath.Join(s.root, filepath.FromSlash(prefix[:i]))
	}
	err := filepath.WalkDir(start, func(p string, d iofs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, iofs.ErrNotExist) {
				return nil // a directory vanished under us (concurrent delete) or the prefix has none
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if d.IsDir() || isTemp(d) {
			return nil
		}
		rel, err := filepath.Rel(s.root, p)
		if err != nil {
			return err
		}
		name := filepath.ToSlash(rel)
		if !strings.HasPrefix(name, prefix) {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			if errors.Is(err, iofs.ErrNotExist) {
				return nil
			}
			return err
		}
		return fn(backup.ObjectInfo{Name: name, Size: info.Size(), ModTime: info.ModTime()})
	})
	return err
}

func (s *Store) Delete(ctx context.Context, name string) error {
	p, err := s.path(name)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, iofs.ErrNotExist) {
		return fmt.Errorf("fs delete %s: %w", name, err)
	}
	return nil
}

func mapErr(name string, err error) error {
	if errors.Is(err, iofs.ErrNotExist) {
		return fmt.Errorf("fs %s: %w", name, backup.ErrNotExist)
	}
	return fmt.Errorf("fs %s: %w", name, err)
}

// ctxReader stops a long copy soon after ctx is cancelled.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
