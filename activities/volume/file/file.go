// Package file is the volume driver for qcow2 and raw image files used by libvirt/QEMU domains on the
// hypervisor the agent runs on.
//
// An image's format is the one recorded with its volume, never one guessed from its bytes (which a raw
// volume's guest writes), and every qemu tool is told it; a volume is a regular file, never a symlink or a
// device; a qcow2 image that points at another file (backing or data file) is refused (see image.go).
//
// It owns the image files it is given, their snapshots and its metadata directory next to each image
// (".<image>.holdfast/": snapshot records, the copies that are raw volumes' snapshots, and partial copies in
// progress, which cancellation and the matching delete remove: see copies.go). It asks libvirt
// (domains package) who uses an image and whether that domain runs, freezes guests, and drives QEMU's block
// layer of running domains; it must never change a domain's definition, and never reads image data through
// libvirt streams (daemon-bound, 55–140 MiB/s): data is read from the image file directly.
//
// Snapshots:
//   - qcow2: internal snapshots. Offline with `qemu-img snapshot`; for a running domain with QMP
//     blockdev-snapshot-internal-sync on the disk's node, inside a guest freeze. The image keeps its identity
//     (no overlay chain to commit later), and the snapshot is read straight from the file (see qcow2.go).
//   - raw: a sparse copy in the metadata directory (see raw.go); a running domain is paused during the copy.
package file

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/time/rate"
	"libvirt.org/go/libvirt"

	"github.com/holdfast/holdfast/activities/volume"
	"github.com/holdfast/holdfast/activities/volume/domains"
)

// Driver serves volume.TypeFile volumes. The zero value talks to the local system libvirtd.
type Driver struct {
	// LibvirtURI is the libvirt connection; empty means domains.DefaultURI.
	LibvirtURI string
	// Limiter, when set, bounds the bytes per second the driver's copies move (a raw volume's snapshot and
	// rollback, a new volume made from a snapshot). The agent gives it the hypervisor's bandwidth limiter,
	// shared with backups and restores: a snapshot copy must not saturate the host's disk any more than a
	// backup may.
	Limiter *rate.Limiter
}

var _ volume.Driver = (*Driver)(nil)

// NoLibvirt as the URI runs the driver without libvirt (a machine with no hypervisor daemon, such as
// `holdfast dev`): every volume is then reported detached, and snapshots are offline ones.
const NoLibvirt = "none"

// New returns a driver talking to libvirt at uri (empty: the local system daemon; NoLibvirt: none).
func New(uri string) *Driver { return &Driver{LibvirtURI: uri} }

// Open is the driver a hypervisor's configuration sets up (activities/volume/drivers lists it): its libvirt,
// and its bandwidth limit on snapshot copies, shared with backups and restores.
func Open(_ context.Context, host volume.HostConfig) (volume.Driver, error) {
	return &Driver{LibvirtURI: host.LibvirtURI, Limiter: host.Limiter}, nil
}

func (d *Driver) Type() volume.Type { return volume.TypeFile }

func (d *Driver) Size(ctx context.Context, vol volume.Ref) (int64, error) {
	img, err := d.probe(vol)
	return img.size, err
}

// metaDir is the volume's metadata directory: hidden, next to the image, removed with it.
func metaDir(path string) string {
	return filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".holdfast")
}

func rawSnapPath(path, name string) string { return filepath.Join(metaDir(path), name+".raw") }
func recordPath(path, name string) string  { return filepath.Join(metaDir(path), name+".json") }

func validName(name string) error {
	if name == "" || strings.ContainsAny(name, "/\x00") || strings.HasPrefix(name, ".") || len(name) > 200 {
		return fmt.Errorf("invalid snapshot name %q", name)
	}
	return nil
}

func readRecord(path, name string) (volume.Snapshot, bool) {
	b, err := os.ReadFile(recordPath(path, name))
	if err != nil {
		return volume.Snapshot{}, false
	}
	var s volume.Snapshot
	if json.Unmarshal(b, &s) != nil {
		return volume.Snapshot{}, false
	}
	return s, true
}

func writeRecord(path string, s volume.Snapshot) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	tmp := recordPath(path, s.Name) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, recordPath(path, s.Name))
}

// attachment asks libvirt, now, which domain uses the image.
// The connection is nil without libvirt; release it with closeConn.
func (d *Driver) attachment(path string) (domains.Found, *libvirt.Connect, error) {
	if d.LibvirtURI == NoLibvirt {
		return domains.Found{}, nil, nil
	}
	conn, err := domains.Open(d.LibvirtURI)
	if err != nil {
		return domains.Found{}, nil, err
	}
	f, err := domains.Find(conn, func(dk domains.Disk) bool { return dk.File == path })
	if err != nil {
		conn.Close()
		return domains.Found{}, nil, err
	}
	return f, conn, nil
}

func closeConn(conn *libvirt.Connect) {
	if conn != nil {
		conn.Close()
	}
}

// refuseRunning returns an AttachedRunningError when a running domain uses the image.
func (d *Driver) refuseRunning(vol volume.Ref, path string) error {
	f, conn, err := d.attachment(path)
	if err != nil {
		return err
	}
	closeConn(conn)
	if f.Running {
		return &volume.AttachedRunningError{Volume: vol, Domain: f.Domain}
	}
	return nil
}

func (d *Driver) Attachment(ctx context.Context, vol volume.Ref) (volume.Attachment, error) {
	if vol.Type != volume.TypeFile || !filepath.IsAbs(vol.Path) {
		return volume.Attachment{}, fmt.Errorf("file driver: bad volume %s", vol)
	}
	f, conn, err := d.attachment(filepath.Clean(vol.Path))
	if err != nil {
		return volume.Attachment{}, err
	}
	closeConn(conn)
	return f.Attachment, nil
}

func (d *Driver) CreateSnapshot(ctx context.Context, vol volume.Ref, name string) (volume.Snapshot, error) {
	ctx = d.throttled(ctx)
	if err := validName(name); err != nil {
		return volume.Snapshot{}, err
	}
	img, err := d.probe(vol)
	if err != nil {
		return volume.Snapshot{}, err
	}
	if s, ok, err := d.findSnapshot(img, name); err != nil || ok {
		return s, err // idempotent: the snapshot exists
	}
	if err := os.MkdirAll(metaDir(img.path), 0o700); err != nil {
		return volume.Snapshot{}, err
	}
	found, conn, err := d.attachment(img.path)
	if err != nil {
		return volume.Snapshot{}, err
	}
	defer closeConn(conn)
	snap := volume.Snapshot{Name: name, Size: img.size, Consistency: volume.ConsistencyOffline}
	if found.Running {
		thaw, freezeErr := domains.Freeze(conn, found.Domain)
		snap.Consistency, snap.FreezeError = volume.ConsistencyApplication, freezeErr
		if freezeErr != "" {
			snap.Consistency = volume.ConsistencyCrash
		}
		err = d.snapshotRunning(ctx, conn, found.Domain, img, name)
		thaw()
	} else {
		err = d.snapshotOffline(ctx, img, name)
	}
	if err != nil {
		return volume.Snapshot{}, err
	}
	snap.CreatedAt = time.Now().UTC()
	if s, ok, _ := d.findSnapshot(img, name); ok {
		snap.CreatedAt = s.CreatedAt
	}
	return snap, writeRecord(img.path, snap)
}

func (d *Driver) snapshotOffline(ctx context.Context, img image, name string) error {
	if img.format == volume.FormatQCOW2 {
		return qemuImgSnapshot(ctx, img, "-c", name)
	}
	return copySnapshot(ctx, img, name)
}

func (d *Driver) snapshotRunning(ctx context.Context, conn *libvirt.Connect, domain string, img image, name string) error {
	if img.format == volume.FormatQCOW2 {
		node, err := blockNode(conn, domain, img.path)
		if err != nil {
			return err
		}
		_, err = domains.QMP(conn, domain, "blockdev-snapshot-internal-sync",
			map[string]string{"device": node, "name": name})
		return err
	}
	// Pausing the vCPUs stops guest writes; QEMU has completed (and, with the default cache mode, handed to
	// the host page cache) every write the guest saw complete, so the copy is a crash-consistent image.
	resume, err := domains.Suspend(conn, domain)
	if err != nil {
		return err
	}
	err = copySnapshot(ctx, img, name) // a cancelled copy stops within a block, and the guest resumes
	if rerr := resume(); rerr != nil && err == nil {
		err = fmt.Errorf("resume %s: %w", domain, rerr)
	}
	return err
}

// blockNode finds the QEMU block node of the domain's disk whose top image is path.
func blockNode(conn *libvirt.Connect, domain, path string) (string, error) {
	out, err := domains.QMP(conn, domain, "query-block", nil)
	if err != nil {
		return "", err
	}
	var blocks []struct {
		Inserted *struct {
			File     string `json:"file"`
			NodeName string `json:"node-name"`
		} `json:"inserted"`
	}
	if err := json.Unmarshal(out, &blocks); err != nil {
		return "", fmt.Errorf("query-block: %w", err)
	}
	for _, b := range blocks {
		if b.Inserted != nil && filepath.Clean(b.Inserted.File) == path {
			return b.Inserted.NodeName, nil
		}
	}
	return "", fmt.Errorf("domain %s has no block node for %s", domain, path)
}

// findSnapshot looks the snapshot up in the image (qcow2) or metadata directory (raw).
func (d *Driver) findSnapshot(img image, name string) (volume.Snapshot, bool, error) {
	snaps, err := d.list(img)
	if err != nil {
		return volume.Snapshot{}, false, err
	}
	for _, s := range snaps {
		if s.Name == name {
			return s, true, nil
		}
	}
	return volume.Snapshot{}, false, nil
}

func (d *Driver) list(img image) ([]volume.Snapshot, error) {
	var out []volume.Snapshot
	if img.format == volume.FormatQCOW2 {
		f, err := openNoFollow(img.path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		h, err := readHeader(f)
		if err != nil {
			return nil, err
		}
		qs, err := readSnapshots(f, h)
		if err != nil {
			return nil, err
		}
		for _, q := range qs {
			s := volume.Snapshot{Name: q.name, CreatedAt: q.created, Size: snapSize(q, h)}
			if r, ok := readRecord(img.path, q.name); ok {
				s.Consistency, s.FreezeError = r.Consistency, r.FreezeError
			}
			out = append(out, s)
		}
	} else {
		copies, err := filepath.Glob(filepath.Join(metaDir(img.path), "*.raw"))
		if err != nil {
			return nil, err
		}
		for _, c := range copies {
			st, err := os.Stat(c)
			if err != nil {
				continue // deleted meanwhile
			}
			name := strings.TrimSuffix(filepath.Base(c), ".raw")
			s := volume.Snapshot{Name: name, CreatedAt: st.ModTime().UTC(), Size: st.Size()}
			if r, ok := readRecord(img.path, name); ok {
				s.CreatedAt, s.Consistency, s.FreezeError = r.CreatedAt, r.Consistency, r.FreezeError
			}
			out = append(out, s)
		}
	}
	sortSnaps(out)
	return out, nil
}

func (d *Driver) ListSnapshots(ctx context.Context, vol volume.Ref) ([]volume.Snapshot, error) {
	img, err := d.probe(vol)
	if err != nil {
		return nil, err
	}
	return d.list(img)
}

// DeleteSnapshot deletes the snapshot and whatever an interrupted attempt to create it left (a raw volume's
// partial copy), so that the compensation of a snapshot whose agent died mid-copy leaves nothing behind.
func (d *Driver) DeleteSnapshot(ctx context.Context, vol volume.Ref, name string) error {
	if err := validName(name); err != nil {
		return err
	}
	path, _, err := checkRef(vol)
	if err != nil {
		return err
	}
	if err := removeSnapshotPartials(path, name); err != nil {
		return err
	}
	img, err := d.probe(vol)
	if errors.Is(err, volume.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if img.format == volume.FormatRaw {
		if err := os.Remove(rawSnapPath(img.path, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	} else if _, ok, err := d.findSnapshot(img, name); err != nil {
		return err
	} else if ok {
		found, conn, err := d.attachment(img.path)
		if err != nil {
			return err
		}
		defer closeConn(conn)
		if found.Running {
			node, err := blockNode(conn, found.Domain, img.path)
			if err != nil {
				return err
			}
			if _, err := domains.QMP(conn, found.Domain, "blockdev-snapshot-delete-internal-sync",
				map[string]string{"device": node, "name": name}); err != nil {
				return err
			}
		} else if err := qemuImgSnapshot(ctx, img, "-d", name); err != nil {
			return err
		}
	}
	if err := os.Remove(recordPath(img.path, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

func (d *Driver) RollbackSnapshot(ctx context.Context, vol volume.Ref, name string) error {
	ctx = d.throttled(ctx)
	img, err := d.probe(vol)
	if err != nil {
		return err
	}
	if _, ok, err := d.findSnapshot(img, name); err != nil {
		return err
	} else if !ok {
		return volume.NotFound(vol.String() + "@" + name)
	}
	if err := d.refuseRunning(vol, img.path); err != nil {
		return err
	}
	if img.format == volume.FormatQCOW2 {
		return qemuImgSnapshot(ctx, img, "-a", name)
	}
	// The image is replaced by a new file (see copyRollback), so an owner record moves to it.
	before, err := os.Lstat(img.path)
	if err != nil {
		return err
	}
	owner, owned := readOwner(img.path)
	owned = owned && createdBy(img.path, before, owner.CreatedBy)
	err = copyRollback(ctx, img, name)
	if err != nil || !owned {
		return err
	}
	after, err := os.Lstat(img.path)
	if err != nil {
		return err
	}
	return writeOwner(img.path, owner.CreatedBy, after)
}

func (d *Driver) OpenSnapshot(ctx context.Context, vol volume.Ref, name string) (volume.Reader, error) {
	img, err := d.probe(vol)
	if err != nil {
		return nil, err
	}
	if err := validName(name); err != nil {
		return nil, err
	}
	if img.format == volume.FormatQCOW2 {
		return openQCOWSnapshot(img.path, name)
	}
	r, err := openRaw(rawSnapPath(img.path, name), func(p string) string { return rawSnapPath(img.path, p) })
	if errors.Is(err, volume.ErrNotFound) {
		return nil, volume.NotFound(vol.String() + "@" + name)
	}
	return r, err
}

func (d *Driver) OpenWriter(ctx context.Context, vol volume.Ref) (volume.Writer, error) {
	img, err := d.probe(vol)
	if err != nil {
		return nil, err
	}
	if err := d.refuseRunning(vol, img.path); err != nil {
		return nil, err
	}
	return openWriter(ctx, img)
}

func openWriter(ctx context.Context, img image) (volume.Writer, error) {
	if img.format == volume.FormatQCOW2 {
		// qemu-nbd takes QEMU's image lock, so a domain started meanwhile fails instead of sharing writes.
		return startQemuNBD(ctx, img.path, string(img.format))
	}
	f, err := os.OpenFile(img.path, os.O_RDWR|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	return &rawWriter{f: f, size: img.size}, nil
}

// CreateVolume creates the volume exclusively (see owner.go): an existing file at its path is reused only
// by a retry of the operation that created it (vol.CreatedBy), at the size it was created with.
func (d *Driver) CreateVolume(ctx context.Context, vol volume.Ref, size int64) (volume.Writer, error) {
	if size <= 0 {
		return nil, fmt.Errorf("create %s: size %d", vol, size)
	}
	path, format, err := checkRef(vol)
	if err != nil {
		return nil, err
	}
	st, err := os.Lstat(path)
	switch {
	case err == nil:
		return d.reuse(ctx, vol, path, st, size)
	case !errors.Is(err, fs.ErrNotExist):
		return nil, err
	}
	if err := create(ctx, vol, path, format, size); err != nil {
		return nil, err
	}
	return openWriter(ctx, image{path: path, format: format, size: size})
}

// reuse opens the volume found at path for a retry of the operation that created it; anything else there
// (another operation's volume, a file no operation created, a symlink or device) is refused with ErrExists.
func (d *Driver) reuse(ctx context.Context, vol volume.Ref, path string, st fs.FileInfo, size int64) (volume.Writer, error) {
	if !st.Mode().IsRegular() || !createdBy(path, st, vol.CreatedBy) {
		return nil, fmt.Errorf("%s: %w", vol, volume.ErrExists)
	}
	if err := settleClaim(path, st, vol.CreatedBy); err != nil {
		return nil, err
	}
	img, err := d.probe(vol)
	if err != nil {
		return nil, err
	}
	if img.size != size {
		return nil, fmt.Errorf("%s: created at another size: %w", vol, volume.ErrExists)
	}
	return d.OpenWriter(ctx, vol)
}

func (d *Driver) CreateVolumeFromSnapshot(ctx context.Context, src volume.Ref, snapshot string, dst volume.Ref) error {
	ctx = d.throttled(ctx)
	r, err := d.OpenSnapshot(ctx, src, snapshot)
	if err != nil {
		return err
	}
	defer r.Close()
	w, err := d.CreateVolume(ctx, dst, r.Size())
	if err != nil {
		return err
	}
	// From here the volume at dst is this call's (created now, or by an earlier attempt of dst.CreatedBy): a
	// copy that fails or is cancelled removes it rather than leave a half-written volume (a retry makes it
	// again). volume.CopyAllocated checks ctx between blocks.
	err = volume.CopyAllocated(ctx, w, &progressReader{Reader: r, report: progressOf(ctx), ctx: ctx})
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		if derr := d.DeleteVolume(context.WithoutCancel(ctx), dst); derr != nil {
			return errors.Join(err, fmt.Errorf("remove the partial volume %s: %w", dst, derr))
		}
	}
	return err
}

// DeleteVolume deletes the volume and its metadata. With vol.CreatedBy (a compensation) it deletes only a
// volume that operation created, and otherwise nothing (ErrNotOwned); without, whatever volume is there.
func (d *Driver) DeleteVolume(ctx context.Context, vol volume.Ref) error {
	// Not probed: deleting reads no image data, so an image the driver refuses to serve (a qcow2 with a
	// backing file) can still be deleted. Only a regular file is ever a volume.
	path, _, err := checkRef(vol)
	if err != nil {
		return err
	}
	op := vol.CreatedBy
	if op != "" {
		// Ownership is decided and acted on without a creator of this directory in between (see owner.go).
		unlock, err := lockDir(filepath.Dir(path))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if err == nil {
			defer unlock()
		}
	}
	st, err := lstat(vol, path)
	if errors.Is(err, volume.ErrNotFound) {
		if op == "" {
			return os.RemoveAll(metaDir(path))
		}
		// Only this operation's leftovers: a claim from an attempt interrupted before its link, and the
		// metadata of a deletion interrupted after the image went.
		if err := removeClaim(path, op); err != nil {
			return err
		}
		if r, ok := readOwner(path); ok && r.CreatedBy == op {
			return os.RemoveAll(metaDir(path))
		}
		return nil
	}
	if err != nil {
		return err
	}
	if op != "" && !createdBy(path, st, op) {
		return fmt.Errorf("%s: %w", vol, volume.ErrNotOwned)
	}
	if err := d.refuseRunning(vol, path); err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if op != "" {
		if err := removeClaim(path, op); err != nil {
			return err
		}
	}
	return os.RemoveAll(metaDir(path))
}

// qemuImgSnapshot runs `qemu-img snapshot` (op -c, -d or -a) on a qcow2 image. The subcommand has no -f, so
// the image goes in as --image-opts, which states the format (driver=qcow2) instead of letting QEMU probe it.
func qemuImgSnapshot(ctx context.Context, img image, op, name string) error {
	if img.format != volume.FormatQCOW2 {
		return fmt.Errorf("qemu-img snapshot on a %s image: %w", img.format, volume.ErrUnsupported)
	}
	return qemuImg(ctx, "snapshot", "--image-opts", op, name, imageOpts(img))
}

// qemuImg runs qemu-img, bounded by ctx and a generous timeout (snapshot operations rewrite metadata only).
// Every caller names the image's format (-f, or driver= in --image-opts): qemu-img never probes it.
func qemuImg(ctx context.Context, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "qemu-img", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("qemu-img %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

var _ io.ReaderAt = (*qcowSnapshotReader)(nil)
