// Package volume owns the contract between Holdfast's hypervisor activities and the storage that holds a
// virtual machine's block volumes: the Driver interface, the types it speaks (Ref, Snapshot, Extent,
// Attachment) and the errors callers branch on. Implementations live in sub-packages (file, rbd); the
// conformance suite every implementation must pass lives in volumetest.
//
// This package must never talk to a hypervisor or a storage system itself, and must never hold state: a
// driver answers from the live system on every call (attachment, snapshot list), because the caller's view
// (a workflow's state, a request) may be stale.
package volume

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/holdfast/holdfast/activities"
)

// Type names a driver; it is the Ref.Type of the volumes that driver serves. The names are the activities
// contract's (activities.VolumeTypes).
type Type string

const (
	TypeFile Type = activities.VolumeFile
	TypeRBD  Type = activities.VolumeRBD
)

// Format is the on-disk format of a file volume.
type Format string

const (
	FormatRaw   Format = "raw"
	FormatQCOW2 Format = "qcow2"
)

// Ref identifies a volume. It is small and serialisable so that it can travel in activity inputs.
type Ref struct {
	Type Type `json:"type"`
	// Path is the absolute path of a file volume's image.
	Path string `json:"path,omitempty"`
	// Format of a file volume, as recorded at registration: never probed from the image's bytes (which a
	// raw volume's guest writes). Empty means qcow2 for a Path ending in ".qcow2", raw otherwise.
	Format Format `json:"format,omitempty"`
	// Pool and Image name an RBD image.
	Pool  string `json:"pool,omitempty"`
	Image string `json:"image,omitempty"`
	// CreatedBy names the operation creating this volume (CreateVolume, CreateVolumeFromSnapshot) or allowed
	// to delete it (DeleteVolume); empty for volumes the caller did not create.
	CreatedBy string `json:"created_by,omitempty"`
}

func (r Ref) String() string {
	if r.Type == TypeRBD {
		return fmt.Sprintf("rbd:%s/%s", r.Pool, r.Image)
	}
	return fmt.Sprintf("%s:%s", r.Type, r.Path)
}

// Consistency says what a snapshot's contents can be trusted for. It is recorded at creation and never
// upgraded afterwards: a snapshot is claimed application-consistent only when the guest froze its filesystems.
type Consistency string

const (
	// ConsistencyApplication: the guest agent froze the guest's filesystems around the snapshot.
	ConsistencyApplication Consistency = "application"
	// ConsistencyCrash: a running domain used the volume and could not be frozen (Snapshot.FreezeError says
	// why); the snapshot is what a power cut would leave.
	ConsistencyCrash Consistency = "crash"
	// ConsistencyOffline: no running domain used the volume, so nothing was writing to it.
	ConsistencyOffline Consistency = "offline"
)

// Snapshot describes one point-in-time snapshot of a volume.
type Snapshot struct {
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
	// Size is the volume's size in bytes at the snapshot.
	Size int64 `json:"size"`
	// Consistency and FreezeError are as recorded when the snapshot was created. A driver that keeps no
	// record for a snapshot it did not create (or whose record was lost) reports an empty Consistency.
	Consistency Consistency `json:"consistency,omitempty"`
	// FreezeError is libvirt's message when a guest freeze was attempted and impossible (no agent, agent not
	// connected, ...). Empty when the freeze succeeded or was not attempted.
	FreezeError string `json:"freeze_error,omitempty"`
}

// Extent is a byte range [Offset, Offset+Length) of a volume.
type Extent struct {
	Offset int64 `json:"offset"`
	Length int64 `json:"length"`
}

// End returns the first byte after the extent.
func (e Extent) End() int64 { return e.Offset + e.Length }

// Attachment is the live attachment state of a volume, as the hypervisor sees it now.
type Attachment struct {
	// Attached is true when a libvirt domain (running or merely defined) has the volume as a disk.
	Attached bool `json:"attached"`
	// Domain is the name of that domain ("" when not attached). When several domains list the volume, a
	// running one is preferred.
	Domain string `json:"domain,omitempty"`
	// Running is true when that domain is running (or paused): its QEMU process has the volume open.
	Running bool `json:"running"`
}

// Reader is a point-in-time, read-only view of a snapshot. Reads beyond Size return io.EOF. A Reader is safe
// for concurrent ReadAt calls; Close releases it (and any helper process or handle it holds).
type Reader interface {
	io.ReaderAt
	io.Closer
	// Size is the volume's size at the snapshot.
	Size() int64
	// Allocated returns, sorted and non-overlapping, the extents that may hold non-zero data. Bytes outside
	// them read as zeros, so a backup may skip them without reading.
	Allocated(ctx context.Context) ([]Extent, error)
	// Changed returns, sorted and non-overlapping, extents that cover every byte that differs between the
	// snapshot named parent (of the same volume) and this one. It may over-approximate (whole clusters or
	// objects) but never miss a byte. It returns an error wrapping ErrChangesUnavailable when the driver
	// cannot tell (parent gone, unsupported layout); the caller then reads Allocated instead.
	Changed(ctx context.Context, parent string) ([]Extent, error)
}

// Writer overwrites a volume in place (restore). Close flushes and must be checked: a restore is complete only
// when Close returned nil.
type Writer interface {
	io.WriterAt
	io.Closer
	// Size is the volume's size; writes must stay within it.
	Size() int64
}

// Flusher is a Writer that can make every write so far durable before Close (every driver's writer can):
// once Flush returned nil, those writes survive the writing process being killed. A restore flushes before
// it vouches for a resume point.
type Flusher interface {
	Flush() error
}

// Driver snapshots, reads, restores and creates the volumes of one storage type.
//
// Contract, which volumetest.Run checks against every implementation on real services:
//   - Every method takes ctx first, honours its cancellation/deadline, and never blocks forever on a sick
//     backend (drivers bound their calls with timeouts). A long copy checks ctx between blocks.
//   - The partial artifacts of an interrupted call (one that failed or was cancelled, whose process was
//     killed, or whose caller gave up on it while it hung), such as a partial snapshot copy or a half-written
//     new volume, are removed by the matching delete, which is what a compensation runs: DeleteSnapshot
//     removes those of CreateSnapshot of that name, DeleteVolume those of CreateVolume and
//     CreateVolumeFromSnapshot of that volume. A retry of the interrupted call replaces or reuses them. (The
//     file driver also removes them itself when a call fails or is cancelled. Checked so far by the file
//     driver's own tests, not yet by volumetest.)
//   - Every method is idempotent, because activities are retried: creating a snapshot that exists returns
//     it (its original record when the driver keeps one) without error; deleting a snapshot or volume that
//     does not exist succeeds.
//   - Missing volumes or snapshots (other than in deletes) yield an error wrapping ErrNotFound.
//   - State is read live from the hypervisor and storage on every call, never cached across calls.
//   - CreateSnapshot on a volume a running domain uses first asks the guest agent to freeze the guest's
//     filesystems and thaws them afterwards, whatever happened. When the freeze is impossible the snapshot
//     is still taken, recorded ConsistencyCrash with libvirt's error in FreezeError; never claimed consistent.
//   - RollbackSnapshot and OpenWriter refuse with an error wrapping ErrAttachedRunning when a running domain
//     uses the volume, checked live at the call (the request's own idea of the state is not trusted).
//   - A Reader from OpenSnapshot keeps returning the snapshot's bytes while the volume keeps changing.
//     The caller serialises operations on one volume (the volume workflow is its mutex): deleting or rolling
//     back to a snapshot while a Reader of it is open is not supported.
//   - CreateVolume and CreateVolumeFromSnapshot create the destination exclusively: never over an existing
//     volume or file, never adopting one. An existing destination is reused only by a retry of the
//     operation that created it (the same non-empty Ref.CreatedBy) and at the size it was created with;
//     anything else there (another operation's volume, one created by no operation, a symlink or device),
//     and any existing destination when CreatedBy is empty, is refused with ErrExists and left untouched.
//     The creator is recorded durably and creation never replaces the final name, so that no crash at any
//     point lets another operation claim the volume.
//   - DeleteVolume with a non-empty Ref.CreatedBy (a compensation) deletes only a volume that operation
//     created; any other is left untouched and the call returns an error wrapping ErrNotOwned. With an empty
//     CreatedBy it deletes the volume there. A missing volume is success either way.
//   - Nothing a guest wrote decides how a volume is read: its format is Ref.Format (or, when empty, derived
//     from its name), never guessed from its contents, and a reference stored in the volume to data outside
//     it (a qcow2 backing or external data file) is refused with ErrUnsupported, never followed.
//   - A volume is what the driver stores volumes as (a regular file, an RBD image): a symlink, device or other
//     object at a volume's location is refused with ErrUnsupported, before anything is created beside it.
//
// A driver whose copies can take long may also report their progress to the caller, through a method
// WithProgress(ctx, report func(done, total int64)) context.Context (the file driver has it); the agent
// heartbeats what it reports.
type Driver interface {
	// Type returns the Ref.Type this driver serves.
	Type() Type
	// Size returns the volume's current size in bytes.
	Size(ctx context.Context, vol Ref) (int64, error)
	// CreateSnapshot takes a point-in-time snapshot named name (freezing the guest when possible).
	CreateSnapshot(ctx context.Context, vol Ref, name string) (Snapshot, error)
	// DeleteSnapshot removes the snapshot; a missing one is not an error.
	DeleteSnapshot(ctx context.Context, vol Ref, name string) error
	// ListSnapshots returns the volume's snapshots, oldest first.
	ListSnapshots(ctx context.Context, vol Ref) ([]Snapshot, error)
	// RollbackSnapshot makes the volume's contents equal the snapshot's, in place. The snapshot is kept.
	RollbackSnapshot(ctx context.Context, vol Ref, name string) error
	// OpenSnapshot opens a point-in-time reader of the snapshot, for streaming a backup.
	OpenSnapshot(ctx context.Context, vol Ref, name string) (Reader, error)
	// OpenWriter opens the existing volume for an in-place restore.
	OpenWriter(ctx context.Context, vol Ref) (Writer, error)
	// CreateVolume creates a new volume of size bytes (reading as zeros), exclusively, on behalf of
	// vol.CreatedBy, and opens it for writing.
	CreateVolume(ctx context.Context, vol Ref, size int64) (Writer, error)
	// CreateVolumeFromSnapshot creates dst (exclusively, on behalf of dst.CreatedBy) with the contents of
	// src's snapshot.
	CreateVolumeFromSnapshot(ctx context.Context, src Ref, snapshot string, dst Ref) error
	// DeleteVolume removes the volume and its snapshots; a missing volume is not an error. With
	// vol.CreatedBy it removes only a volume that operation created (ErrNotOwned otherwise). It refuses with
	// ErrAttachedRunning when a running domain uses the volume.
	DeleteVolume(ctx context.Context, vol Ref) error
	// Attachment reports whether a libvirt domain uses the volume, which, and whether it runs.
	Attachment(ctx context.Context, vol Ref) (Attachment, error)
}

var (
	// ErrNotFound: the volume or snapshot does not exist.
	ErrNotFound = errors.New("not found")
	// ErrAttachedRunning: a running domain uses the volume, so it must not be overwritten or rolled back.
	ErrAttachedRunning = errors.New("volume is attached to a running instance")
	// ErrExists: the destination volume exists and does not match the request.
	ErrExists = errors.New("volume already exists")
	// ErrNotOwned: the volume exists but was not created by the operation named in Ref.CreatedBy, so that
	// operation may not delete it.
	ErrNotOwned = errors.New("volume not created by this operation")
	// ErrChangesUnavailable: changed extents cannot be computed; read the allocated extents instead.
	ErrChangesUnavailable = errors.New("changed extents unavailable")
	// ErrUnsupported: the request is valid but this driver cannot serve it for this volume.
	ErrUnsupported = errors.New("unsupported")
)

// AttachedRunningError is the error behind ErrAttachedRunning: it names the domain so that a user-facing
// message can say which instance to stop. errors.Is(err, ErrAttachedRunning) holds for it.
type AttachedRunningError struct {
	Volume Ref
	Domain string
}

func (e *AttachedRunningError) Error() string {
	return fmt.Sprintf("%s: %v (domain %q)", e.Volume, ErrAttachedRunning, e.Domain)
}

func (e *AttachedRunningError) Is(target error) bool { return target == ErrAttachedRunning }

// NotFound returns an error wrapping ErrNotFound for what (a volume or "volume@snapshot").
func NotFound(what string) error { return fmt.Errorf("%s: %w", what, ErrNotFound) }
