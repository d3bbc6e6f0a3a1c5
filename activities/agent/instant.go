package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/activities/backup"
	"github.com/holdfast/holdfast/activities/export"
	"github.com/holdfast/holdfast/activities/export/nbd"
	"github.com/holdfast/holdfast/activities/volume"
)

// Instant restore. PrepareInstantRestore serves the backup as a read-only NBD export on a UNIX socket of
// the agent's own (Config.ExportDir; the socket's name derives from the new volume's ID, the export's name
// is that ID) and has the driver create the new volume over it; HydrateVolume copies the export's data into
// the volume until it stands alone, then ends the export. The export lives in this process, for as long as
// the volume needs it: a restarted agent serves it again when the retried HydrateVolume starts (a domain
// reading the volume meanwhile sees I/O errors until QEMU's NBD client reconnects, within seconds of that).
// DeleteVolume (an aborted or failed restore's compensation) ends it too.

// PhaseHydrating is the progress phase of a hydration.
const PhaseHydrating = "hydrating"

// exports are the backups this agent serves, by new volume ID.
type exports struct {
	dir string
	log *slog.Logger

	mu   sync.Mutex
	live map[string]*liveExport
}

type liveExport struct {
	source  string // storage/volume/backup served
	backing volume.NBDBacking
	reader  *backup.BackupReader
	stop    context.CancelFunc
	done    chan struct{}
}

// exportName is the file or URL path name of the new volume target's export: derived from its ID, so that
// a restarted agent serves it where the volume (or Ceph) looks for it.
func exportName(target string) string {
	sum := sha256.Sum256([]byte(target))
	return hex.EncodeToString(sum[:12])
}

// backing is where the export of the new volume target is served.
func (x *exports) backing(target string) volume.NBDBacking {
	return volume.NBDBacking{Socket: filepath.Join(x.dir, exportName(target)+".sock"), Export: target}
}

func exportSource(in activities.RestoreBackupInput) string {
	return in.Storage + "/" + in.SourceVolumeID + "/" + in.BackupID
}

// sameSource refuses to serve a new volume a second backup: an export, once its volume reads through it,
// serves only the backup it was made for.
func sameSource(served string, in activities.RestoreBackupInput) error {
	if served != exportSource(in) {
		return fmt.Errorf("volume %s is served another backup (%s)", in.TargetVolumeID, served)
	}
	return nil
}

// ensure serves the backup in names to target's volume, unless it already is.
func (x *exports) ensure(e *backup.Engine, in activities.RestoreBackupInput) (*liveExport, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if l := x.live[in.TargetVolumeID]; l != nil {
		return l, sameSource(l.source, in)
	}
	if err := x.prepareDir(); err != nil {
		return nil, err
	}
	b := x.backing(in.TargetVolumeID)
	r, err := e.OpenBackup(context.Background(), in.SourceVolumeID, in.BackupID, backup.ReaderOptions{ReadAhead: 8, CacheCells: 32})
	if err != nil {
		return nil, err
	}
	srv, err := nbd.New(nbd.Options{Logger: x.log.With("volume_id", in.TargetVolumeID)}, export.Backup(b.Export, r))
	if err != nil {
		r.Close()
		return nil, err
	}
	ln, err := listenSocket(b.Socket)
	if err != nil {
		r.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &liveExport{source: exportSource(in), backing: b, reader: r, stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		err := srv.Serve(ctx, ln)
		r.Close()
		if ctx.Err() == nil {
			x.log.Error("instant restore export ended", "volume_id", in.TargetVolumeID, "error", err)
		}
	}()
	if x.live == nil {
		x.live = map[string]*liveExport{}
	}
	x.live[in.TargetVolumeID] = l
	x.log.Info("instant restore export serving", "volume_id", in.TargetVolumeID, "source_volume_id",
		in.SourceVolumeID, "backup_id", in.BackupID, "storage", in.Storage, "socket", b.Socket)
	return l, nil
}

// end stops serving target's export (nothing when none is served).
func (x *exports) end(target string) {
	x.mu.Lock()
	l := x.live[target]
	delete(x.live, target)
	x.mu.Unlock()
	if l == nil {
		return
	}
	l.stop()
	<-l.done
	_ = os.Remove(l.backing.Socket)
	x.log.Info("instant restore export ended", "volume_id", target)
}

// count is the number of exports served.
func (x *exports) count() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return len(x.live)
}

// ready checks that exports can be served.
func (x *exports) ready() error {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.prepareDir()
}

// maxSocketPath is the longest UNIX socket path Linux takes (sun_path, less its terminating NUL).
const maxSocketPath = 107

// prepareDir makes the export directory, or checks the one there: a directory (not a link) of this process's
// user that no one else may write, so that nobody can put a socket of theirs where a volume's backing points.
func (x *exports) prepareDir() error {
	if x.dir == "" {
		return errors.New("instant restore: no export directory configured")
	}
	if len(x.backing("x").Socket) > maxSocketPath {
		return fmt.Errorf("export directory %s: too long for a UNIX socket path", x.dir)
	}
	if err := os.MkdirAll(x.dir, 0o711); err != nil {
		return err
	}
	st, err := os.Lstat(x.dir)
	if err != nil {
		return err
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	switch {
	case !st.IsDir():
		return fmt.Errorf("export directory %s is not a directory", x.dir)
	case !ok || int(sys.Uid) != os.Geteuid():
		return fmt.Errorf("export directory %s is not this agent's", x.dir)
	case st.Mode().Perm()&0o022 != 0:
		return fmt.Errorf("export directory %s is writable by others", x.dir)
	}
	return nil
}

// listenSocket listens at path, replacing a socket left by an earlier run of the agent (nothing else).
// The socket is for QEMU: its group is libvirt's QEMU group when there is one.
func listenSocket(path string) (net.Listener, error) {
	if st, err := os.Lstat(path); err == nil {
		if st.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, err
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	mode := os.FileMode(0o600)
	if g, err := user.LookupGroup("libvirt-qemu"); err == nil {
		if gid, err := strconv.Atoi(g.Gid); err == nil && os.Lchown(path, -1, gid) == nil {
			mode = 0o660
		}
	}
	if err := os.Chmod(path, mode); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// hydrationSource is a served backup as a hydration reads it.
type hydrationSource struct{ r *backup.BackupReader }

func (s hydrationSource) ReadAt(p []byte, off int64) (int, error) { return s.r.ReadAt(p, off) }
func (s hydrationSource) Size() int64                             { return s.r.Size() }

// Data is every range the backup holds data in (its zero ranges left out).
func (s hydrationSource) Data() []volume.Extent {
	var out []volume.Extent
	var off int64
	for _, run := range s.r.Runs(0, s.r.Size()) {
		if !run.Zero {
			out = append(out, volume.Extent{Offset: off, Length: run.Length})
		}
		off += run.Length
	}
	return out
}

// Fallback reasons (users read them on the operation).
const (
	fallbackNotQCOW2 = "instant restore needs a qcow2 file volume or an RBD image; restored in full"
	fallbackNoExport = "instant restore is not set up on this hypervisor; restored in full"
)

// PrepareInstantRestore serves the backup and creates the new volume over it (activities.Hypervisor).
func (a *Activities) PrepareInstantRestore(ctx context.Context, in activities.RestoreBackupInput) (activities.InstantRestoreResult, error) {
	var res activities.InstantRestoreResult
	h, ref, e, log, err := a.instantTarget(ctx, in)
	if err != nil {
		return res, err
	}
	// An RBD image imports an HTTP stream (Ceph's migration); a qcow2 file reads through an NBD socket.
	imp, importing := a.drivers[in.Target.Type].(volume.Importer)
	ready, end := a.exports.ready, a.exports.end
	switch {
	case importing:
		ready, end = a.http.ready, a.http.end
	case h == nil || sourceType(ref) != string(volume.FormatQCOW2):
		res.FallbackReason = fallbackNotQCOW2
		return res, nil
	}
	if err := ready(); err != nil {
		log.Error("instant restore unavailable on this hypervisor; restoring in full", "error", err)
		res.FallbackReason = fallbackNoExport
		return res, nil
	}
	// The manifest first: a missing or damaged backup must not create the volume at all.
	m, err := e.Manifest(ctx, in.SourceVolumeID, in.BackupID)
	if err != nil {
		log.Error("read manifest failed", "error", err)
		return res, classify(ctx, activities.PrepareInstantRestoreName, err)
	}
	var create func(context.Context) error
	var where string
	if importing {
		var l *httpExport
		if l, err = a.http.ensure(e, in); err == nil {
			where = l.url
			create = func(ctx context.Context) error { return imp.CreateImport(ctx, ref, m.Size, l.url) }
		}
	} else {
		var l *liveExport
		if l, err = a.exports.ensure(e, in); err == nil {
			where = l.backing.Socket
			create = func(ctx context.Context) error { return h.CreateOverlay(ctx, ref, m.Size, l.backing) }
		}
	}
	if err != nil {
		log.Error("serve backup failed", "error", err)
		return res, classify(ctx, activities.PrepareInstantRestoreName, err)
	}
	if err := hypervisorDo(ctx, log, "create", a.drivers[in.Target.Type], create); err != nil {
		log.Error("create volume over the export failed", "error", err)
		if errors.Is(err, volume.ErrExists) {
			end(in.TargetVolumeID) // nothing of this restore's reads it
		}
		return res, classify(ctx, activities.PrepareInstantRestoreName, err)
	}
	a.metrics.InstantExports(a.hypervisorID, a.exportCount())
	log.Info("instant restore volume ready", "size_bytes", m.Size, "export", where)
	return activities.InstantRestoreResult{SizeBytes: m.Size, Instant: true}, nil
}

// HydrateVolume hydrates the volume PrepareInstantRestore made, then ends its export (activities.Hypervisor).
func (a *Activities) HydrateVolume(ctx context.Context, in activities.RestoreBackupInput) (activities.RestoreResult, error) {
	h, ref, e, log, err := a.instantTarget(ctx, in)
	if err != nil {
		return activities.RestoreResult{}, err
	}
	if imp, ok := a.drivers[in.Target.Type].(volume.Importer); ok {
		return a.hydrateImport(ctx, imp, ref, e, in, log)
	}
	if h == nil {
		return activities.RestoreResult{}, invalid("target: volume type cannot hydrate")
	}
	done, err := h.Hydrated(ctx, ref)
	if err != nil || done { // done: an earlier attempt finished
		return a.hydratedEarlier(ctx, ref, in, log, a.exports.end, err)
	}
	l, err := a.exports.ensure(e, in) // served again after an agent restart
	if err != nil {
		log.Error("serve backup failed", "error", err)
		return activities.RestoreResult{}, classify(ctx, activities.HydrateVolumeName, err)
	}
	m := a.startHydration(ctx, log, l.reader.Size())
	first, last := int64(-1), int64(0)
	err = h.Hydrate(ctx, ref, l.backing, hydrationSource{l.reader}, func(done, total int64) {
		if first < 0 {
			first = done
		}
		last = done
		m.report(done, total, first)
	})
	return m.end(ctx, err, in.TargetVolumeID, a.exports.end, last-max(first, 0))
}

// hydratedEarlier answers a hydration whose volume already stands alone (err nil), or whose state could not
// be read (err).
func (a *Activities) hydratedEarlier(ctx context.Context, ref volume.Ref, in activities.RestoreBackupInput,
	log *slog.Logger, end func(string), err error) (activities.RestoreResult, error) {
	if err != nil {
		log.Error("read volume failed", "error", err)
		return activities.RestoreResult{}, classify(ctx, activities.HydrateVolumeName, err)
	}
	end(in.TargetVolumeID)
	size, err := a.drivers[in.Target.Type].Size(ctx, ref)
	return activities.RestoreResult{SizeBytes: size}, classify(ctx, activities.HydrateVolumeName, err)
}

// hydration is one HydrateVolume's heartbeats, metrics and log, whichever way it hydrates.
type hydration struct {
	a     *Activities
	log   *slog.Logger
	hb    *heartbeater
	start time.Time
	size  int64
}

func (a *Activities) startHydration(ctx context.Context, log *slog.Logger, size int64) *hydration {
	a.metrics.InstantExports(a.hypervisorID, a.exportCount())
	a.metrics.Hydrations(a.hypervisorID, 1)
	log.Info("hydration started", "size_bytes", size)
	return &hydration{a: a, log: log, hb: startHeartbeats(ctx, 0), start: time.Now(), size: size}
}

// report heartbeats done of total bytes hydrated, at the rate since the start counted from first.
func (h *hydration) report(done, total, first int64) {
	p := backup.Progress{Phase: PhaseHydrating, BytesDone: done, BytesTotal: total}
	if s := time.Since(h.start).Seconds(); s > 0 && done > first {
		p.BytesPerSecond = float64(done-first) / s
	}
	h.hb.report(p)
}

// end closes the hydration: on success the export ends (end) and hydrated bytes are counted; an error is
// classified.
func (h *hydration) end(ctx context.Context, err error, target string, end func(string),
	hydrated int64) (activities.RestoreResult, error) {
	a := h.a
	h.hb.close()
	a.metrics.Hydrations(a.hypervisorID, -1)
	if err != nil {
		h.log.Error("hydration failed", "error", err)
		return activities.RestoreResult{}, classify(ctx, activities.HydrateVolumeName, err)
	}
	end(target)
	a.metrics.InstantExports(a.hypervisorID, a.exportCount())
	h.log.Info("hydration done", "size_bytes", h.size, "bytes_hydrated", hydrated,
		"duration", time.Since(h.start).Round(time.Millisecond))
	a.metrics.RestoreWritten(a.hypervisorID, hydrated)
	return activities.RestoreResult{SizeBytes: h.size, BytesWritten: hydrated}, nil
}

// instantTarget checks an instant restore's input and returns its target's hydrator (nil: the driver has
// none), driver ref, engine and logger.
func (a *Activities) instantTarget(ctx context.Context, in activities.RestoreBackupInput) (volume.Hydrator,
	volume.Ref, *backup.Engine, *slog.Logger, error) {
	if err := checkIDs("source_volume_id", in.SourceVolumeID, "backup_id", in.BackupID,
		"target_volume_id", in.TargetVolumeID); err != nil {
		return nil, volume.Ref{}, nil, nil, err
	}
	e, err := a.engine(in.Storage)
	if err != nil {
		return nil, volume.Ref{}, nil, nil, err
	}
	d, ref, err := a.driver("target", in.Target)
	if err != nil {
		return nil, volume.Ref{}, nil, nil, err
	}
	if ref.CreatedBy == "" {
		return nil, volume.Ref{}, nil, nil, invalid("target: an instant restore creates its volume (created_by is required)")
	}
	log := a.logger(ctx, in.TargetVolumeID, "source_volume_id", in.SourceVolumeID, "backup_id", in.BackupID,
		"storage", in.Storage)
	h, _ := d.(volume.Hydrator)
	return h, ref, e, log, nil
}

// exportCount is the number of exports this agent serves.
func (a *Activities) exportCount() int { return a.exports.count() + a.http.count() }

// hydrateImport completes an RBD volume's import (HydrateVolume): Ceph copies from the export, whose bytes
// served are the progress.
func (a *Activities) hydrateImport(ctx context.Context, imp volume.Importer, ref volume.Ref, e *backup.Engine,
	in activities.RestoreBackupInput, log *slog.Logger) (activities.RestoreResult, error) {
	// Served first (again, after an agent restart, at the URL Ceph recorded): librbd reads even the
	// migration's status through its source.
	l, err := a.http.ensure(e, in)
	if err != nil {
		log.Error("serve backup failed", "error", err)
		return activities.RestoreResult{}, classify(ctx, activities.HydrateVolumeName, err)
	}
	done, err := imp.Imported(ctx, ref)
	if err != nil || done {
		return a.hydratedEarlier(ctx, ref, in, log, a.http.end, err)
	}
	size := l.reader.Size()
	m := a.startHydration(ctx, log.With("url", l.url), size)
	first := l.served.Load()
	stop := make(chan struct{})
	ticked := make(chan struct{})
	go func() { // progress: what Ceph (and any guest) read from the export
		defer close(ticked)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			m.report(min(l.served.Load(), size), size, first)
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	err = imp.Import(ctx, ref)
	close(stop)
	<-ticked
	if err != nil && ctx.Err() != nil {
		// Given up (abort, deadline): the volume is deleted next; without its source, Ceph's copy ends.
		a.http.end(in.TargetVolumeID)
	}
	return m.end(ctx, err, in.TargetVolumeID, a.http.end, l.served.Load()-first)
}

// AbandonInstantRestore deletes an instant restore's new volume and ends its export (activities.Hypervisor).
// An RBD import is opened through its source even to be deleted, and its source is this agent's export,
// which a restarted agent no longer serves: it is served again for the delete.
func (a *Activities) AbandonInstantRestore(ctx context.Context, in activities.RestoreBackupInput) error {
	_, _, e, log, err := a.instantTarget(ctx, in)
	if err != nil {
		return err
	}
	if _, ok := a.drivers[in.Target.Type].(volume.Importer); ok {
		if _, err := a.http.ensure(e, in); err != nil {
			log.Error("serve backup failed", "error", err)
			return classify(ctx, activities.AbandonInstantRestoreName, err)
		}
	}
	// DeleteVolume ends the exports once the volume is gone; while a running domain still uses it, it
	// refuses and the export stays for that domain.
	return a.DeleteVolume(ctx, activities.DeleteVolumeInput{VolumeID: in.TargetVolumeID, Volume: in.Target})
}
