// Package rbd is the volume driver for Ceph RBD images, through librbd (go-ceph, built with -tags pacific).
//
// It owns one RADOS connection per Driver, the images it is given and their snapshots, and small records in
// an image's metadata: "holdfast.snapshot.<name>" per snapshot (consistency and freeze error) and
// "holdfast.created_by" (the operation that created the image, see create.go). Whether an image is in use
// is asked of the cluster (the clients watching or locking it, wherever they run) and of the local libvirt
// (which domain has it as a disk, to freeze its guest), see inuse.go. It must never change pools, cluster
// configuration or a domain's definition, never overwrite or delete an image another client uses or another
// operation created, and never block forever: every RADOS/RBD operation is bounded by the client's op
// timeouts, so a full or dead OSD fails calls instead of hanging the activity.
package rbd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ceph/go-ceph/rados"
	librbd "github.com/ceph/go-ceph/rbd"

	"github.com/holdfast/holdfast/activities/volume"
	"github.com/holdfast/holdfast/activities/volume/domains"
)

// OpTimeout bounds every monitor and OSD operation of the driver's RADOS client.
const OpTimeout = 60 * time.Second

const metaPrefix = "holdfast.snapshot."

// Config says how to reach the cluster and libvirt.
type Config struct {
	// CephConf is the ceph.conf path; empty uses librados' default search.
	CephConf string
	// User is the cephx user without "client." (empty: admin).
	User string
	// LibvirtURI is the libvirt connection for attachment checks; empty means domains.DefaultURI, NoLibvirt
	// none (a host without a hypervisor daemon: only the cluster is asked).
	LibvirtURI string
}

// NoLibvirt as Config.LibvirtURI runs the driver without libvirt.
const NoLibvirt = "none"

// Driver serves volume.TypeRBD volumes.
type Driver struct {
	cfg  Config
	conn *rados.Conn

	mu     sync.Mutex
	ioctxs map[string]*rados.IOContext
	// protection serialises this agent's protect-and-clone and unprotect of parent snapshots (see
	// withSnapshot); a clone is a metadata operation, so restores wait on it only briefly.
	protection sync.Mutex
}

var _ volume.Driver = (*Driver)(nil)

// New connects to the cluster. Close releases the connection.
func New(ctx context.Context, cfg Config) (*Driver, error) {
	var conn *rados.Conn
	var err error
	if cfg.User != "" {
		conn, err = rados.NewConnWithUser(cfg.User)
	} else {
		conn, err = rados.NewConn()
	}
	if err != nil {
		return nil, err
	}
	if cfg.CephConf != "" {
		err = conn.ReadConfigFile(cfg.CephConf)
	} else {
		err = conn.ReadDefaultConfigFile()
	}
	if err != nil {
		return nil, fmt.Errorf("read ceph config %q: %w", cfg.CephConf, err)
	}
	secs := fmt.Sprint(int(OpTimeout.Seconds()))
	for k, v := range map[string]string{"rados_osd_op_timeout": secs, "rados_mon_op_timeout": secs,
		"client_mount_timeout": "15"} {
		if err := conn.SetConfigOption(k, v); err != nil {
			return nil, fmt.Errorf("ceph option %s: %w", k, err)
		}
	}
	done := make(chan error, 1)
	go func() { done <- conn.Connect() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		err = ctx.Err() // Connect itself gives up after client_mount_timeout
	}
	if err != nil {
		return nil, fmt.Errorf("connect to ceph: %w", err)
	}
	return &Driver{cfg: cfg, conn: conn, ioctxs: map[string]*rados.IOContext{}}, nil
}

// Open is the driver a hypervisor's configuration sets up (activities/volume/drivers lists it): connected with
// the host's ceph.conf, and asking its libvirt (or, with "none", the cluster alone) who uses an image.
// Close releases it.
func Open(ctx context.Context, host volume.HostConfig) (volume.Driver, error) {
	d, err := New(ctx, Config{CephConf: host.CephConf, LibvirtURI: host.LibvirtURI})
	if err != nil {
		return nil, err
	}
	return d, nil
}

// Close releases the cluster connection.
func (d *Driver) Close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, io := range d.ioctxs {
		io.Destroy()
	}
	d.ioctxs = nil
	d.conn.Shutdown()
}

func (d *Driver) Type() volume.Type { return volume.TypeRBD }

func (d *Driver) ioctx(vol volume.Ref) (*rados.IOContext, error) {
	if vol.Type != volume.TypeRBD || vol.Pool == "" || vol.Image == "" {
		return nil, fmt.Errorf("rbd driver: bad volume %s: %w", vol, volume.ErrUnsupported)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if io, ok := d.ioctxs[vol.Pool]; ok {
		return io, nil
	}
	io, err := d.conn.OpenIOContext(vol.Pool)
	if err != nil {
		return nil, fmt.Errorf("open pool %s: %w", vol.Pool, mapErr(vol.String(), err))
	}
	d.ioctxs[vol.Pool] = io
	return io, nil
}

// mapErr turns librbd's ENOENT into volume.ErrNotFound.
func mapErr(what string, err error) error {
	if errors.Is(err, librbd.ErrNotFound) || errors.Is(err, librbd.ErrNotExist) || errors.Is(err, rados.ErrNotFound) {
		return volume.NotFound(what)
	}
	return err
}

// open opens the image (at snapshot snap, "" for the head).
func (d *Driver) open(vol volume.Ref, snap string, readOnly bool) (*librbd.Image, error) {
	io, err := d.ioctx(vol)
	if err != nil {
		return nil, err
	}
	var img *librbd.Image
	if readOnly {
		img, err = librbd.OpenImageReadOnly(io, vol.Image, snap)
	} else {
		img, err = librbd.OpenImage(io, vol.Image, snap)
	}
	if err != nil {
		what := vol.String()
		if snap != "" {
			what += "@" + snap
		}
		return nil, mapErr(what, err)
	}
	return img, nil
}

func (d *Driver) Size(ctx context.Context, vol volume.Ref) (int64, error) {
	img, err := d.open(vol, "", true)
	if err != nil {
		return 0, err
	}
	defer img.Close()
	size, err := img.GetSize()
	return int64(size), err
}

func (d *Driver) list(img *librbd.Image) ([]volume.Snapshot, error) {
	infos, err := img.GetSnapshotNames()
	if err != nil {
		return nil, err
	}
	out := make([]volume.Snapshot, 0, len(infos))
	for _, si := range infos {
		s := volume.Snapshot{Name: si.Name, Size: int64(si.Size)}
		if ts, err := img.GetSnapTimestamp(si.Id); err == nil {
			s.CreatedAt = time.Unix(ts.Sec, ts.Nsec).UTC()
		}
		if raw, err := img.GetMetadata(metaPrefix + si.Name); err == nil {
			var rec volume.Snapshot
			if json.Unmarshal([]byte(raw), &rec) == nil {
				s.Consistency, s.FreezeError = rec.Consistency, rec.FreezeError
			}
		}
		out = append(out, s)
	}
	// librbd lists in snapshot id order, which is creation order: oldest first.
	return out, nil
}

func find(snaps []volume.Snapshot, name string) (volume.Snapshot, bool) {
	for _, s := range snaps {
		if s.Name == name {
			return s, true
		}
	}
	return volume.Snapshot{}, false
}

func (d *Driver) ListSnapshots(ctx context.Context, vol volume.Ref) ([]volume.Snapshot, error) {
	img, err := d.open(vol, "", true)
	if err != nil {
		return nil, err
	}
	defer img.Close()
	return d.list(img)
}

func (d *Driver) CreateSnapshot(ctx context.Context, vol volume.Ref, name string) (volume.Snapshot, error) {
	if name == "" {
		return volume.Snapshot{}, errors.New("empty snapshot name")
	}
	img, err := d.open(vol, "", false)
	if err != nil {
		return volume.Snapshot{}, err
	}
	defer img.Close()
	snaps, err := d.list(img)
	if err != nil {
		return volume.Snapshot{}, err
	}
	if s, ok := find(snaps, name); ok {
		return s, nil // idempotent
	}
	snap := volume.Snapshot{Name: name, Consistency: volume.ConsistencyOffline}
	u, err := d.usage(vol)
	if err != nil {
		return volume.Snapshot{}, err
	}
	thaw := func() {}
	switch {
	case u.local.Running:
		conn, err := domains.Open(d.cfg.LibvirtURI)
		if err != nil {
			return volume.Snapshot{}, err
		}
		defer conn.Close()
		thaw, snap.FreezeError = domains.Freeze(conn, u.local.Domain)
		snap.Consistency = volume.ConsistencyApplication
		if snap.FreezeError != "" {
			snap.Consistency = volume.ConsistencyCrash
		}
	case u.remote != "":
		// Written by a client this host's libvirt does not know (a VM elsewhere): nothing here can freeze it.
		snap.Consistency = volume.ConsistencyCrash
		snap.FreezeError = fmt.Sprintf("in use by %s, not by a domain of this host: its guest cannot be frozen "+
			"from here", u.remote)
	}
	// librbd asks the exclusive-lock owner (a running QEMU) to flush its cache before the snapshot is taken.
	_, err = img.CreateSnapshot(name)
	thaw()
	if err != nil && !errors.Is(err, librbd.ErrExist) {
		return volume.Snapshot{}, fmt.Errorf("snapshot %s@%s: %w", vol, name, err)
	}
	rec, _ := json.Marshal(volume.Snapshot{Consistency: snap.Consistency, FreezeError: snap.FreezeError})
	if err := img.SetMetadata(metaPrefix+name, string(rec)); err != nil {
		return volume.Snapshot{}, fmt.Errorf("record snapshot %s@%s: %w", vol, name, err)
	}
	// Re-read: a snapshot made by CreateSnapshot dies with its handle, and the listing has the size and time.
	snaps, err = d.list(img)
	if err != nil {
		return volume.Snapshot{}, err
	}
	s, _ := find(snaps, name)
	s.Consistency, s.FreezeError = snap.Consistency, snap.FreezeError
	return s, nil
}

// openListed opens the image's head read-write and lists its snapshots.
func (d *Driver) openListed(vol volume.Ref) (*librbd.Image, []volume.Snapshot, error) {
	img, err := d.open(vol, "", false)
	if err != nil {
		return nil, nil, err
	}
	snaps, err := d.list(img)
	if err != nil {
		img.Close()
		return nil, nil, err
	}
	return img, snaps, nil
}

func (d *Driver) DeleteSnapshot(ctx context.Context, vol volume.Ref, name string) error {
	img, snaps, err := d.openListed(vol)
	if errors.Is(err, volume.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	defer img.Close()
	if _, ok := find(snaps, name); ok {
		s := img.GetSnapshot(name)
		// A snapshot left protected by an interrupted restore-to-new (its clone flattened since) unprotects.
		if p, err := s.IsProtected(); err == nil && p {
			if err := s.Unprotect(); err != nil {
				return fmt.Errorf("unprotect %s@%s: %w", vol, name, err)
			}
		}
		if err := s.Remove(); err != nil && !errors.Is(err, librbd.ErrNotFound) {
			return fmt.Errorf("remove %s@%s: %w", vol, name, err)
		}
	}
	if err := img.RemoveMetadata(metaPrefix + name); err != nil && !errors.Is(err, librbd.ErrNotFound) &&
		!errors.Is(err, librbd.ErrNotExist) {
		return err
	}
	return nil
}

func (d *Driver) RollbackSnapshot(ctx context.Context, vol volume.Ref, name string) error {
	img, snaps, err := d.openListed(vol)
	if err != nil {
		return err
	}
	defer img.Close()
	if _, ok := find(snaps, name); !ok {
		return volume.NotFound(vol.String() + "@" + name)
	}
	if err := d.refuseRunning(vol); err != nil {
		return err
	}
	return img.GetSnapshot(name).Rollback()
}

func (d *Driver) OpenSnapshot(ctx context.Context, vol volume.Ref, name string) (volume.Reader, error) {
	if name == "" {
		return nil, errors.New("empty snapshot name")
	}
	img, size, err := d.openSized(vol, name, true)
	if err != nil {
		return nil, err
	}
	return &reader{img: img, size: size}, nil
}

// openSized opens the image and reads its size (at the snapshot), closing it on failure.
func (d *Driver) openSized(vol volume.Ref, snap string, readOnly bool) (*librbd.Image, int64, error) {
	img, err := d.open(vol, snap, readOnly)
	if err != nil {
		return nil, 0, err
	}
	size, err := img.GetSize()
	if err != nil {
		img.Close()
		return nil, 0, err
	}
	return img, int64(size), nil
}

func (d *Driver) OpenWriter(ctx context.Context, vol volume.Ref) (volume.Writer, error) {
	if err := d.refuseRunning(vol); err != nil {
		return nil, err
	}
	img, size, err := d.openSized(vol, "", false)
	if err != nil {
		return nil, err
	}
	return &writer{img: img, size: size}, nil
}

// reader reads an image opened at a snapshot.
type reader struct {
	// mu lets reads run together (rbd_read on one image is thread-safe: librbd queues every request on the
	// image's own work queue, and go-ceph's ReadAt keeps no state) and keeps diffs and Close to themselves.
	mu   sync.RWMutex
	img  *librbd.Image
	size int64
}

func (r *reader) Size() int64 { return r.size }

func (r *reader) ReadAt(p []byte, off int64) (int, error) {
	p, short := volume.ClampRead(p, off, r.size)
	if len(p) == 0 {
		return 0, short
	}
	r.mu.RLock()
	n, err := r.img.ReadAt(p, off)
	r.mu.RUnlock()
	if err == nil && n == len(p) {
		err = short
	}
	return n, err
}

func (r *reader) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.img.Close()
}

func (r *reader) diff(ctx context.Context, from string, keep func(exists int) bool) ([]volume.Extent, error) {
	var out []volume.Extent
	r.mu.Lock()
	defer r.mu.Unlock()
	err := r.img.DiffIterate(librbd.DiffIterateConfig{
		SnapName: from,
		Offset:   0,
		Length:   uint64(r.size),
		Callback: func(off, length uint64, exists int, _ interface{}) int {
			if ctx.Err() != nil {
				return -4 // EINTR: stop iterating
			}
			if !keep(exists) {
				return 0
			}
			if k := len(out); k > 0 && out[k-1].End() == int64(off) {
				out[k-1].Length += int64(length)
			} else {
				out = append(out, volume.Extent{Offset: int64(off), Length: int64(length)})
			}
			return 0
		},
	})
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	return out, err
}

func (r *reader) Allocated(ctx context.Context) ([]volume.Extent, error) {
	return r.diff(ctx, "", func(exists int) bool { return exists != 0 })
}

func (r *reader) Changed(ctx context.Context, parent string) ([]volume.Extent, error) {
	// Changed data and discarded (zeroed) ranges both differ from the parent.
	exts, err := r.diff(ctx, parent, func(int) bool { return true })
	if err != nil && (errors.Is(err, librbd.ErrNotFound) || errors.Is(err, librbd.ErrNotExist)) {
		return nil, fmt.Errorf("parent snapshot %q: %w", parent, volume.ErrChangesUnavailable)
	}
	return exts, err
}

type writer struct {
	img  *librbd.Image
	size int64
	// mu lets writes run together, as reads do (see reader.mu); a Flush waits for the writes in flight, so
	// that it covers every write that returned before it began.
	mu sync.RWMutex
}

func (w *writer) Size() int64 { return w.size }

func (w *writer) WriteAt(p []byte, off int64) (int, error) {
	if err := volume.CheckWrite(off, len(p), w.size); err != nil {
		return 0, err
	}
	w.mu.RLock()
	defer w.mu.RUnlock()
	return w.img.WriteAt(p, off)
}

// Flush flushes librbd's cache to the cluster.
func (w *writer) Flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.img.Flush()
}

func (w *writer) Close() error {
	err := w.img.Flush()
	if cerr := w.img.Close(); err == nil {
		err = cerr
	}
	return err
}
