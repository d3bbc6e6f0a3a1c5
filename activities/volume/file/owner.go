package file

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/holdfast/holdfast/activities/volume"
)

// Volumes are created exclusively and belong to the operation that created them.
//
// A volume created for an operation (Ref.CreatedBy, e.g. a restore to a new volume) may be reused by a retry
// of that operation and deleted by its compensation; nobody else may do either, and nothing that already sat
// at the path (a neighbour's disk, an unrelated file) is ever reused, overwritten or deleted by a creator.
//
// The record of ownership is the file ownerFile in the volume's metadata directory: the operation and the
// identity (device, inode) of the file it created, so that a record outliving its image never vouches for
// a different file later found at that path.
//
// create never replaces anything at the path:
//
//  1. The image is made under a claim name beside the path, derived from the operation (a retry finds it).
//     Then, holding the directory's lock (creators and deleters of one directory take turns, across
//     processes too):
//  2. The path must be free, so its metadata directory (if any) describes no image: it is cleared, so that
//     a new volume inherits neither another's snapshots nor a stale owner record.
//  3. link(claim, path), which never replaces: anything at the path makes it fail with EEXIST (ErrExists).
//  4. The owner record is written durably; 5. the claim name is removed.
//
// A crash before 3 leaves only the claim file (the operation's retry replaces it, its compensation removes
// it). Between 3 and 5 the claim is a second link to the very file at the path: the creating operation's
// retry or compensation recognises its own file by it (and the retry completes 4 and 5), while no other
// operation knows that name. After 4 the record stands. So at no point can another operation claim the file,
// and no window lets the creator claim a file it did not make.
//
// Residual window, outside Holdfast: deleting the image by hand while keeping its metadata directory, then
// putting another file at the path that reuses the inode number, would let the recorded creator claim it.
// A volume created without CreatedBy has no owner record: it belongs to no operation.

// ownerFile is the owner record's name in the metadata directory. Snapshot names never start with a dot,
// so no snapshot's files can collide with it.
const ownerFile = ".created-by.json"

type ownerRecord struct {
	CreatedBy string `json:"created_by"`
	Dev       uint64 `json:"dev"`
	Ino       uint64 `json:"ino"`
}

func ownerPath(path string) string { return filepath.Join(metaDir(path), ownerFile) }

// claimPath is the name the operation op builds its new image under, beside path. Hashed: an operation id
// is not a safe file name.
func claimPath(path, op string) string {
	sum := sha256.Sum256([]byte(op))
	return filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".creating-"+hex.EncodeToString(sum[:8]))
}

func fileID(st fs.FileInfo) (dev, ino uint64, ok bool) {
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, false
	}
	return uint64(sys.Dev), sys.Ino, true // Dev is not a uint64 on every platform
}

func readOwner(path string) (ownerRecord, bool) {
	b, err := os.ReadFile(ownerPath(path))
	if err != nil {
		return ownerRecord{}, false
	}
	var r ownerRecord
	if json.Unmarshal(b, &r) != nil || r.CreatedBy == "" {
		return ownerRecord{}, false
	}
	return r, true
}

// writeOwner durably records that op created the file st (at path).
func writeOwner(path, op string, st fs.FileInfo) error {
	dev, ino, ok := fileID(st)
	if !ok {
		return fmt.Errorf("file driver: no inode for %s: %w", path, volume.ErrUnsupported)
	}
	b, err := json.Marshal(ownerRecord{CreatedBy: op, Dev: dev, Ino: ino})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(metaDir(path), 0o700); err != nil {
		return err
	}
	tmp := ownerPath(path) + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, ownerPath(path))
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(metaDir(path))
}

// createdBy reports whether operation op created the file st found at path: its owner record names op and
// this very file, or op's claim name is still a link to it (a crash between link and record).
func createdBy(path string, st fs.FileInfo, op string) bool {
	if op == "" {
		return false
	}
	if r, ok := readOwner(path); ok && r.CreatedBy == op {
		if dev, ino, ok := fileID(st); ok && dev == r.Dev && ino == r.Ino {
			return true
		}
	}
	cst, err := os.Lstat(claimPath(path, op))
	return err == nil && os.SameFile(cst, st)
}

// settleClaim finishes a creation interrupted between link and record: it writes op's record for the file
// st at path (which createdBy accepted) and drops the claim name.
func settleClaim(path string, st fs.FileInfo, op string) error {
	if r, ok := readOwner(path); !ok || r.CreatedBy != op {
		if err := writeOwner(path, op, st); err != nil {
			return err
		}
	}
	return removeClaim(path, op)
}

func removeClaim(path, op string) error {
	if err := os.Remove(claimPath(path, op)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// create makes a new image of size bytes at path, exclusively (see the steps above), owned by op when op is
// not empty. It returns an error wrapping ErrExists when anything appeared at path meanwhile.
func create(ctx context.Context, vol volume.Ref, path string, format volume.Format, size int64) error {
	return createWith(ctx, vol, path, func(ctx context.Context, claim string) error {
		return makeImage(ctx, claim, format, size)
	})
}

// createWith is create with the image made by makeImg (at the claim name it is given).
func createWith(ctx context.Context, vol volume.Ref, path string, makeImg func(context.Context, string) error) error {
	op := vol.CreatedBy
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	claim, err := newClaim(path, op)
	if err != nil {
		return err
	}
	linked := false
	defer func() {
		if !linked {
			os.Remove(claim)
		}
	}()
	if err := makeImg(ctx, claim); err != nil {
		return err
	}
	st, err := os.Lstat(claim)
	if err != nil {
		return err
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return err
	}
	defer unlock()
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("%s: %w", vol, volume.ErrExists)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := os.RemoveAll(metaDir(path)); err != nil {
		return err
	}
	if err := syncDir(dir); err != nil {
		return err
	}
	// link, unlike rename, never replaces what is at path.
	if err := os.Link(claim, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s: %w", vol, volume.ErrExists)
		}
		return err
	}
	linked = true
	if err := syncDir(dir); err != nil {
		return err
	}
	if op != "" {
		// On failure the claim stays: it still proves op's ownership to op's retry or compensation.
		if err := writeOwner(path, op, st); err != nil {
			return err
		}
	}
	if err := os.Remove(claim); err != nil {
		return err
	}
	return syncDir(dir)
}

// newClaim creates, exclusively and empty, the name a new image is built under: op's claim name (a leftover
// of op's own interrupted attempt is replaced: nothing links it to the path, which is free), or a unique
// temporary name when no operation owns the volume.
func newClaim(path, op string) (string, error) {
	if op == "" {
		f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".creating-*")
		if err != nil {
			return "", err
		}
		return f.Name(), f.Close()
	}
	claim := claimPath(path, op)
	if err := removeClaim(path, op); err != nil {
		return "", err
	}
	f, err := os.OpenFile(claim, os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return "", err
	}
	return claim, f.Close()
}

// makeImage turns the empty file at path into an image of format and size reading as zeros, and syncs it.
// qcow2Args are more options of qemu-img create (an instant restore's backing).
func makeImage(ctx context.Context, path string, format volume.Format, size int64, qcow2Args ...string) error {
	switch format {
	case volume.FormatQCOW2:
		// compat=1.1: persistent dirty bitmaps and zero clusters need qcow2 v3. qemu-img keeps the inode of
		// the (empty) file it is given.
		args := append([]string{"create", "-q", "-f", "qcow2", "-o", "compat=1.1"}, qcow2Args...)
		if err := qemuImg(ctx, append(args, path, fmt.Sprint(size))...); err != nil {
			return err
		}
	case volume.FormatRaw:
	default:
		return fmt.Errorf("format %q: %w", format, volume.ErrUnsupported)
	}
	f, err := os.OpenFile(path, os.O_RDWR|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	if format == volume.FormatRaw {
		err = f.Truncate(size)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// lockDir takes the exclusive lock of a directory (flock: held per open file, so it also excludes other
// processes, and released if this one dies). It guards the few file operations that decide ownership.
func lockDir(dir string) (unlock func(), err error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return func() { f.Close() }, nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
