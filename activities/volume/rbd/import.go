package rbd

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/ceph/go-ceph/rados"
	librbd "github.com/ceph/go-ceph/rbd"

	"github.com/holdfast/holdfast/activities/volume"
)

// Instant restore onto RBD (volume.Importer): Ceph's import-only live migration of a raw HTTP stream (the
// agent's export of the backup). The new image is usable as soon as it is prepared — every librbd client
// reads what is not migrated yet from the stream — and `execute` copies the rest in, `commit` ends it. The
// stream's URL is written into the image by Ceph; the driver builds the source spec itself from the URL the
// agent gives it, and only an http URL.

var _ volume.Importer = (*Driver)(nil)

// importSpec is the migration source spec of a raw stream at url.
func importSpec(url string) (string, error) {
	if !strings.HasPrefix(url, "http://") {
		return "", fmt.Errorf("import source %q: only http URLs: %w", url, volume.ErrUnsupported)
	}
	b, err := json.Marshal(map[string]any{"type": "raw", "stream": map[string]string{"type": "http", "url": url}})
	return string(b), err
}

// CreateImport prepares vol as an import of the raw stream at url (volume.Importer).
func (d *Driver) CreateImport(ctx context.Context, vol volume.Ref, size int64, url string) error {
	if size <= 0 {
		return fmt.Errorf("create %s: size %d", vol, size)
	}
	spec, err := importSpec(url)
	if err != nil {
		return err
	}
	return d.createExclusive(vol, size, func(io *rados.IOContext) error {
		opts := librbd.NewRbdImageOptions()
		defer opts.Destroy()
		return librbd.MigrationPrepareImport(spec, io, vol.Image, opts)
	})
}

// importState is vol's migration state, or ok false when vol is not being migrated (it stands alone).
func (d *Driver) importState(vol volume.Ref) (librbd.MigrationImageState, bool, error) {
	io, err := d.ioctx(vol)
	if err != nil {
		return 0, false, err
	}
	st, err := librbd.MigrationStatus(io, vol.Image)
	if err == nil {
		return st.State, true, nil
	}
	if isENOENT(err) || isErrno(err, -22) {
		// No migration header (EINVAL), or no image: tell them apart.
		img, oerr := d.open(vol, "", true)
		if oerr != nil {
			return 0, false, oerr
		}
		img.Close()
		return 0, false, nil
	}
	return 0, false, fmt.Errorf("migration status of %s: %w", vol, err)
}

// Imported says whether vol stands alone (volume.Importer).
func (d *Driver) Imported(ctx context.Context, vol volume.Ref) (bool, error) {
	_, migrating, err := d.importState(vol)
	return !migrating, err
}

// Import executes and commits vol's import (volume.Importer).
func (d *Driver) Import(ctx context.Context, vol volume.Ref) error {
	state, migrating, err := d.importState(vol)
	if err != nil || !migrating {
		return err
	}
	io, err := d.ioctx(vol)
	if err != nil {
		return err
	}
	if state != librbd.MigrationImageExecuted {
		done := make(chan error, 1)
		// librbd's execute cannot be interrupted: it ends when the copy does, or fails once its source (the
		// agent's export) goes away.
		go func() { done <- librbd.MigrationExecute(io, vol.Image) }()
		select {
		case err := <-done:
			if err != nil {
				return fmt.Errorf("migration execute of %s: %w", vol, err)
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := librbd.MigrationCommit(io, vol.Image); err != nil {
		return fmt.Errorf("migration commit of %s: %w", vol, err)
	}
	return nil
}

// abortImport gives up vol's import, which removes the image Ceph made for it, and says whether it did;
// false, nil when vol is not being migrated. It asks no status first: librbd reads a migration's status
// through its source, which is gone when the agent that served it died, while the abort needs no source.
// (Only an image of Holdfast's own reaches here: the caller checked who created it.)
func (d *Driver) abortImport(vol volume.Ref) (bool, error) {
	io, err := d.ioctx(vol)
	if err != nil {
		return false, err
	}
	err = librbd.MigrationAbort(io, vol.Image)
	switch {
	case err == nil || isENOENT(err):
		return true, nil
	case isErrno(err, -22): // EINVAL: no migration
		return false, nil
	}
	return true, fmt.Errorf("abort the import of %s: %w", vol, err)
}
