package volume

import (
	"context"
	"io"
)

// Instant restore: a new volume is made usable at once as an overlay that reads what it has not yet copied
// from a read-only NBD export of the backup, then hydrated (the export's data copied in) until it no longer
// needs the export.

// NBDBacking is a read-only NBD export on a UNIX socket, the backing of a volume being hydrated. The agent
// decides both fields (a socket in its own directory, the target volume's ID as the export name); they are
// written into the new image, so a driver accepts no other backing on a volume it did not create.
type NBDBacking struct {
	Socket string `json:"socket"`
	Export string `json:"export"`
}

// HydrationSource is what a hydration copies from: the export's data, read in-process rather than through
// the socket, and the extents of it that may hold data (the rest reads as zeros, so it is never copied).
type HydrationSource interface {
	io.ReaderAt
	Size() int64
	Data() []Extent
}

// Hydrator is a driver that can create a volume over an NBD export and hydrate it (the file driver, for
// qcow2 volumes). Drivers without it restore normally.
type Hydrator interface {
	// CreateOverlay creates vol (exclusively, on behalf of vol.CreatedBy, as CreateVolume) at size bytes,
	// reading through to b wherever it has not been written. A retry of the same operation finds its own
	// overlay over the same backing and succeeds; anything else at vol is ErrExists.
	CreateOverlay(ctx context.Context, vol Ref, size int64, b NBDBacking) error
	// Hydrate copies into vol every byte it still reads through b (from src, which holds the same data),
	// throttled like a restore, reporting progress (bytes of src's data hydrated, of the total), then makes
	// vol stand alone. Idempotent and resumable: a second call copies only what the first did not, and a
	// volume already standing alone is done. While a running domain uses vol, the copy is QEMU's own
	// (block-stream through libvirt), since only that process may write the image.
	Hydrate(ctx context.Context, vol Ref, b NBDBacking, src HydrationSource, report func(done, total int64)) error
	// Hydrated says whether vol stands alone (no backing left).
	Hydrated(ctx context.Context, vol Ref) (bool, error)
}

// Importer is a driver that can create a volume as an import of a raw HTTP stream, usable at once (what is
// not imported yet is read from the stream) and imported in the background (RBD: Ceph's import-only live
// migration, which every librbd client of the image follows).
type Importer interface {
	// CreateImport creates vol (exclusively, on behalf of vol.CreatedBy) as an import of the raw stream at
	// url, of size bytes. A retry of the same operation finds its own import and succeeds.
	CreateImport(ctx context.Context, vol Ref, size int64, url string) error
	// Import copies what is left of the stream into vol and makes vol stand alone (execute and commit).
	// Idempotent; a cancelled ctx returns at once (the copy itself stops when the stream goes away).
	Import(ctx context.Context, vol Ref) error
	// Imported says whether vol stands alone (no import in progress).
	Imported(ctx context.Context, vol Ref) (bool, error)
}
