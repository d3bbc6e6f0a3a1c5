package file

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"libvirt.org/go/libvirt"

	"github.com/holdfast/holdfast/activities/volume"
)

// Instant restore on file volumes (volume.Hydrator): a qcow2 overlay whose backing is the agent's NBD export
// of the backup, hydrated in place.
//
// The backing is written into the image as a "json:" file name that the driver builds from the export (the
// agent's socket and export name) and compares byte for byte: the only backing this driver ever creates or
// accepts on a volume. Everything else the driver does still refuses an image with a backing (probe), so a
// volume is snapshotted, backed up or restored over only once it stands alone.
//
// Hydration while no domain runs the volume is the driver's own copy, in slices: each slice opens the image
// through qemu-nbd (which takes QEMU's write lock, so no domain can start writing it meanwhile), asks which
// ranges the overlay does not hold yet, and copies up to hydrateSliceBytes bytes of the export's data into them
// from the source read in-process; between slices the lock is released, and a domain that started in between
// takes the hydration over: QEMU's own block-stream through libvirt, which copies under the running guest.
// A slice lasts at most hydrateSliceTime, and while the volume is attached to a domain that is not running
// (defined, about to be started) the driver keeps off it for up to hydrateAttachedGrace, so that the
// domain's start is not refused the lock.
// Once nothing is missing, the backing is dropped (a metadata-only rebase). Ranges the export reports as
// zeros are never copied: the overlay reads them as zeros once it stands alone.

// hydrateSliceBytes and hydrateSliceTime bound one slice (the time the image's lock is held: a domain
// started meanwhile fails to open it).
var (
	hydrateSliceBytes int64 = 1 << 30
	hydrateSliceTime        = 2 * time.Second
)

// hydrateAttachedGrace is how long a hydration leaves alone a volume attached to a domain that is not
// running (it is likely about to start it, and QEMU must then get the image's lock) before it copies offline
// anyway.
var hydrateAttachedGrace = 5 * time.Minute

// hydratePoll is how often a block-stream's progress is read.
const hydratePoll = time.Second

// backingSpec is the backing file name written into an overlay of b.
func backingSpec(b volume.NBDBacking) (string, error) {
	if b.Socket == "" || b.Export == "" {
		return "", fmt.Errorf("nbd backing: socket and export are required")
	}
	type server struct {
		Type string `json:"type"`
		Path string `json:"path"`
	}
	type nbd struct {
		Driver string `json:"driver"`
		Server server `json:"server"`
		Export string `json:"export"`
	}
	j, err := json.Marshal(struct {
		File nbd `json:"file"`
	}{nbd{Driver: "nbd", Server: server{Type: "unix", Path: b.Socket}, Export: b.Export}})
	if err != nil {
		return "", err
	}
	return "json:" + string(j), nil
}

// CreateOverlay creates vol as a qcow2 image of size bytes backed by the export b (volume.Hydrator).
func (d *Driver) CreateOverlay(ctx context.Context, vol volume.Ref, size int64, b volume.NBDBacking) error {
	if size <= 0 {
		return fmt.Errorf("create %s: size %d", vol, size)
	}
	path, format, err := checkRef(vol)
	if err != nil {
		return err
	}
	if format != volume.FormatQCOW2 {
		return fmt.Errorf("%s: an instant restore needs a qcow2 volume: %w", vol, volume.ErrUnsupported)
	}
	spec, err := backingSpec(b)
	if err != nil {
		return err
	}
	st, err := os.Lstat(path)
	switch {
	case err == nil:
		return d.reuseOverlay(vol, path, st, size, spec)
	case !errors.Is(err, fs.ErrNotExist):
		return err
	}
	return createWith(ctx, vol, path, func(ctx context.Context, claim string) error {
		// -u: the export is not opened to make the image (its size is given).
		return makeImage(ctx, claim, volume.FormatQCOW2, size, "-F", "raw", "-b", spec, "-u")
	})
}

// reuseOverlay accepts the overlay an earlier attempt of vol.CreatedBy made: the same size, over the same
// backing (or already standing alone). Anything else at the path is ErrExists.
func (d *Driver) reuseOverlay(vol volume.Ref, path string, st fs.FileInfo, size int64, spec string) error {
	if !st.Mode().IsRegular() || !createdBy(path, st, vol.CreatedBy) {
		return fmt.Errorf("%s: %w", vol, volume.ErrExists)
	}
	if err := settleClaim(path, st, vol.CreatedBy); err != nil {
		return err
	}
	h, backing, err := readOverlay(vol, path)
	if err != nil {
		return err
	}
	if int64(h.size) != size || (backing != "" && backing != spec) {
		return fmt.Errorf("%s: made for another restore: %w", vol, volume.ErrExists)
	}
	return nil
}

// readOverlay reads vol's qcow2 header and backing file name ("" when it stands alone).
func readOverlay(vol volume.Ref, path string) (qcowHeader, string, error) {
	f, err := openImage(vol, path)
	if err != nil {
		return qcowHeader{}, "", err
	}
	defer f.Close()
	h, err := readHeader(f)
	if err != nil {
		return qcowHeader{}, "", fmt.Errorf("%s: %w", vol, err)
	}
	if h.incompatible&incompatDataFile != 0 {
		return qcowHeader{}, "", fmt.Errorf("%s: qcow2 image with an external data file: %w", vol, volume.ErrUnsupported)
	}
	backing, err := backingName(f, h)
	if err != nil {
		return qcowHeader{}, "", fmt.Errorf("%s: %w", vol, err)
	}
	return h, backing, nil
}

// backingName reads the backing file name of a qcow2 image (header bytes 8–19: offset and length).
func backingName(f io.ReaderAt, h qcowHeader) (string, error) {
	if h.backingOffset == 0 {
		return "", nil
	}
	var n [4]byte
	if _, err := f.ReadAt(n[:], 16); err != nil {
		return "", fmt.Errorf("read qcow2 backing length: %w", err)
	}
	size := binary.BigEndian.Uint32(n[:])
	if size == 0 || size > 1023 { // QEMU's own limit
		return "", fmt.Errorf("qcow2: backing file name of %d bytes: %w", size, volume.ErrUnsupported)
	}
	b := make([]byte, size)
	if _, err := f.ReadAt(b, int64(h.backingOffset)); err != nil {
		return "", fmt.Errorf("read qcow2 backing name: %w", err)
	}
	return string(b), nil
}

// Hydrated says whether vol stands alone (volume.Hydrator).
func (d *Driver) Hydrated(ctx context.Context, vol volume.Ref) (bool, error) {
	path, _, err := checkRef(vol)
	if err != nil {
		return false, err
	}
	_, backing, err := readOverlay(vol, path)
	return backing == "", err
}

// Hydrate copies the export's data into vol and drops its backing (volume.Hydrator).
func (d *Driver) Hydrate(ctx context.Context, vol volume.Ref, b volume.NBDBacking, src volume.HydrationSource,
	report func(done, total int64)) error {
	path, format, err := checkRef(vol)
	if err != nil {
		return err
	}
	if format != volume.FormatQCOW2 {
		return fmt.Errorf("%s: only qcow2 volumes hydrate: %w", vol, volume.ErrUnsupported)
	}
	spec, err := backingSpec(b)
	if err != nil {
		return err
	}
	data := src.Data()
	var total int64
	for _, e := range data {
		total += e.Length
	}
	var attachedSince time.Time // when the volume was first seen attached to a stopped domain
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		_, backing, err := readOverlay(vol, path)
		switch {
		case err != nil:
			return err
		case backing == "":
			report(total, total)
			return nil
		case backing != spec:
			// Never copy into, or drop the backing of, an image this hydration did not make.
			return fmt.Errorf("%s: backed by something else than this restore's export: %w", vol, volume.ErrUnsupported)
		}
		found, conn, err := d.attachment(path)
		if err != nil {
			return err
		}
		if found.Running {
			err = d.stream(ctx, conn, found.Domain, found.Target, report)
			closeConn(conn)
			if err != nil {
				return err
			}
			if _, backing, err := readOverlay(vol, path); err != nil || backing == "" {
				continue // done, or the error is read again above
			}
			// The job ended (failed, or was cancelled by someone) with the backing in place: the caller's
			// retry starts another, after its back-off.
			return fmt.Errorf("%s: block pull in %s ended before the volume stood alone", vol, found.Domain)
		}
		closeConn(conn)
		if found.Attached {
			if attachedSince.IsZero() {
				attachedSince = time.Now()
			}
			if time.Since(attachedSince) < hydrateAttachedGrace {
				if err := sleep(ctx, hydratePoll); err != nil {
					return err
				}
				continue
			}
		} else {
			attachedSince = time.Time{}
		}
		done, err := d.hydrateOffline(ctx, vol, path, data, src, total, report)
		if err == nil && done {
			// Nothing left to copy: the overlay holds every byte of data (zeros are zeros without a backing).
			err = lockedAs(qemuImg(ctx, "rebase", "-u", "-q", "-f", "qcow2", "-b", "", path))
		}
		if errors.Is(err, errLocked) {
			// A domain started meanwhile: it takes the hydration over (looked up again after a pause, in case
			// libvirt does not list it yet).
			err = sleep(ctx, hydratePoll)
		}
		if err != nil {
			return err
		}
	}
}

// errLocked: another process (a domain's QEMU) holds the image.
var errLocked = errors.New("image in use by another process")

// lockedAs is err, or errLocked when a qemu tool failed on the image's lock.
func lockedAs(err error) error {
	if err != nil && strings.Contains(err.Error(), `get "write" lock`) {
		return errLocked
	}
	return err
}

// hydrateOffline copies up to hydrateSliceBytes bytes of what vol still lacks, holding the image through
// qemu-nbd; done when nothing was missing.
func (d *Driver) hydrateOffline(ctx context.Context, vol volume.Ref, path string, data []volume.Extent,
	src io.ReaderAt, total int64, report func(done, total int64)) (bool, error) {
	// cache=none: each data write reaches the disk before the qcow2 metadata naming it can (QEMU writes
	// its L2 tables from its own cache, later). After a host crash a cluster the map shows allocated
	// therefore holds its data, so resuming from the map never skips a cluster that did not make it.
	w, err := startQemuNBDCache(ctx, path, string(volume.FormatQCOW2), "none")
	if err != nil && strings.Contains(err.Error(), "Invalid argument") {
		// A filesystem without O_DIRECT: writethrough (each write synced before it completes) keeps the
		// same order, slower.
		w, err = startQemuNBDCache(ctx, path, string(volume.FormatQCOW2), "writethrough")
	}
	if err != nil {
		return false, lockedAs(err)
	}
	closed := false
	defer func() {
		if !closed {
			w.kill()
		}
	}()
	// Asked with the lock held, so no one else writes the image until the slice ends.
	missing, err := unallocated(ctx, path)
	if err != nil {
		return false, err
	}
	todo := intersect(data, missing)
	var left int64
	for _, e := range todo {
		left += e.Length
	}
	report(total-left, total)
	if left == 0 {
		closed = true
		return true, w.Close()
	}
	if err := copyPieces(d.throttled(ctx), w, src, todo, func(n int64) { report(total-left+n, total) }); err != nil {
		return false, fmt.Errorf("%s: %w", vol, err)
	}
	closed = true
	return false, w.Close()
}

// hydrateReaders is how many pieces of the backup are read at once (fetched, decrypted, verified) while
// one is written: a hydration keeps pace with a restore, which works on several chunks at a time.
const hydrateReaders = 4

// hydratePiece is the size of one read and write.
const hydratePiece = 4 << 20

type piece struct {
	off int64
	buf []byte
	err error
}

// copyPieces copies the extents todo from src to w, for at most hydrateSliceBytes or hydrateSliceTime,
// reading up to hydrateReaders pieces ahead of the writes (each read throttled by ctx's limiter); progress
// reports the bytes written so far.
func copyPieces(ctx context.Context, w volume.Writer, src io.ReaderAt, todo []volume.Extent,
	progress func(int64)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	free := make(chan []byte, hydrateReaders+1)
	for range hydrateReaders + 1 {
		free <- make([]byte, hydratePiece)
	}
	work := make(chan piece)
	filled := make(chan piece, hydrateReaders)
	go func() { // hands out pieces while the slice lasts
		defer close(work)
		start := time.Now()
		var issued int64
		for _, e := range todo {
			for off := e.Offset; off < e.End(); {
				if issued >= hydrateSliceBytes || time.Since(start) >= hydrateSliceTime {
					return
				}
				n := min(int64(hydratePiece), e.End()-off)
				var buf []byte
				select {
				case buf = <-free:
				case <-ctx.Done():
					return
				}
				select {
				case work <- piece{off: off, buf: buf[:n]}:
				case <-ctx.Done():
					return
				}
				off += n
				issued += n
			}
		}
	}()
	var readers sync.WaitGroup
	for range hydrateReaders {
		readers.Go(func() {
			for p := range work {
				if p.err = throttle(ctx, int64(len(p.buf))); p.err == nil {
					if _, err := src.ReadAt(p.buf, p.off); err != nil && !errors.Is(err, io.EOF) {
						p.err = fmt.Errorf("read the backup at %d: %w", p.off, err)
					}
				}
				filled <- p
			}
		})
	}
	go func() { readers.Wait(); close(filled) }()
	var copied int64
	var firstErr error
	for p := range filled {
		if firstErr == nil && p.err != nil {
			firstErr = p.err
		}
		if firstErr == nil {
			if _, err := w.WriteAt(p.buf, p.off); err != nil {
				firstErr = err
			} else {
				copied += int64(len(p.buf))
				progress(copied)
			}
		}
		if firstErr != nil {
			cancel() // the rest is drained, not written
		}
		free <- p.buf[:cap(p.buf)]
	}
	return firstErr
}

// unallocated lists the ranges of the overlay at path that it does not hold itself (they read through to
// the backing), from qemu-img map of the image opened without its backing (the caller holds the write lock,
// hence -U).
func unallocated(ctx context.Context, path string) ([]volume.Extent, error) {
	opts, err := json.Marshal(map[string]any{"driver": "qcow2", "backing": nil,
		"file": map[string]string{"driver": "file", "filename": path}})
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, "qemu-img", "map", "-U", "--output=json", "json:"+string(opts))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("qemu-img map: %w: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	var entries []struct {
		Start   int64 `json:"start"`
		Length  int64 `json:"length"`
		Present *bool `json:"present"`
	}
	if err := json.Unmarshal(out, &entries); err != nil {
		return nil, fmt.Errorf("qemu-img map: %w", err)
	}
	var gaps []volume.Extent
	for _, e := range entries {
		if e.Present == nil {
			return nil, fmt.Errorf("qemu-img map: no \"present\" field: %w", volume.ErrUnsupported)
		}
		if *e.Present {
			continue
		}
		if n := len(gaps); n > 0 && gaps[n-1].End() == e.Start {
			gaps[n-1].Length += e.Length
			continue
		}
		gaps = append(gaps, volume.Extent{Offset: e.Start, Length: e.Length})
	}
	return gaps, nil
}

// intersect returns the parts of a that lie in b (both sorted, non-overlapping).
func intersect(a, b []volume.Extent) []volume.Extent {
	var out []volume.Extent
	for i, j := 0, 0; i < len(a) && j < len(b); {
		from, to := max(a[i].Offset, b[j].Offset), min(a[i].End(), b[j].End())
		if from < to {
			out = append(out, volume.Extent{Offset: from, Length: to - from})
		}
		if a[i].End() < b[j].End() {
			i++
		} else {
			j++
		}
	}
	return out
}

// stream hydrates the disk target of a running domain with QEMU's block-stream (libvirt's block pull),
// throttled to the driver's limit, until the job ends; cancelling ctx cancels the job.
func (d *Driver) stream(ctx context.Context, conn *libvirt.Connect, domain, target string,
	report func(done, total int64)) error {
	dom, err := conn.LookupDomainByName(domain)
	if err != nil {
		return err
	}
	defer dom.Free()
	var bandwidth uint64
	flags := libvirt.DOMAIN_BLOCK_PULL_BANDWIDTH_BYTES
	if d.Limiter != nil && d.Limiter.Limit() > 0 && d.Limiter.Limit() != rate.Inf {
		bandwidth = uint64(d.Limiter.Limit())
	}
	info, err := dom.GetBlockJobInfo(target, 0)
	if err != nil {
		return err
	}
	if info.Type == 0 { // none yet (a retry finds the job its first attempt started)
		if err := dom.BlockPull(target, bandwidth, flags); err != nil {
			return fmt.Errorf("block pull on %s/%s: %w", domain, target, err)
		}
	}
	t := time.NewTicker(hydratePoll)
	defer t.Stop()
	for {
		info, err := dom.GetBlockJobInfo(target, 0)
		if err != nil {
			return err
		}
		if info.Type == 0 {
			return nil
		}
		report(int64(info.Cur), int64(info.End))
		select {
		case <-ctx.Done():
			if err := dom.BlockJobAbort(target, 0); err != nil {
				return errors.Join(ctx.Err(), fmt.Errorf("abort block pull on %s/%s: %w", domain, target, err))
			}
			return ctx.Err()
		case <-t.C:
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
