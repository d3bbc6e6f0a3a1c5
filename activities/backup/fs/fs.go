// Package fs is a backup.Store on a local directory or an NFS mount.
//
// It owns the mapping of object names onto files under one root directory and the atomic-write protocol
// (temp file in the target directory, fsync, rename, fsync of the directory), so a crash never leaves a
// partial object visible. It must never touch anything outside its root or follow names that could escape it.
package fs

import (
	"context"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/holdfast/holdfast/activities/backup"
)

// tmpPrefix marks in-flight writes; List skips them and a later GC-style cleanup may remove stale ones.
const tmpPrefix = ".tmp-"

// Store keeps each object in a file named after it under Root.
type Store struct {
	root string
}

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
	p, err := s.path(name)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	dir := filepath.Dir(p)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("fs put %s: %w", name, err)
	}
	f, err := os.CreateTemp(dir, tmpPrefix+"*")
	if err != nil {
		return fmt.Errorf("fs put %s: %w", name, err)
	}
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
		if d.IsDir() || strings.HasPrefix(d.Name(), tmpPrefix) {
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
