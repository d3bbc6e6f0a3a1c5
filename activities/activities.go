// Package activities is the contract between Holdfast's workflows and the side effects they order: the
// names, inputs and outputs of the activities that run on a hypervisor's task queue
// ("hypervisor/<hypervisor_id>"), and the error types they fail with.
//
// This package holds types only, so that workflows (deterministic code) can name activities without linking
// volume drivers (cgo: libvirt, Ceph) or backup stores. Implementations live in subpackages and in the
// hypervisor agent; they must never be imported by workflows/.
//
// Every activity is idempotent: Temporal retries are normal, so creating what exists, deleting what is gone
// and uploading what is present all succeed.
package activities

import (
	"context"
	"time"
)

// TaskQueue returns the task queue of one hypervisor's agent: activities run where the disk is.
func TaskQueue(hypervisorID string) string { return "hypervisor/" + hypervisorID }

// CleanupTaskQueue is where a hypervisor's agent takes compensations (the same Hypervisor activities) with
// slots of their own, so that a cleanup never waits behind long transfers and an untaken one means the agent
// is gone.
func CleanupTaskQueue(hypervisorID string) string { return TaskQueue(hypervisorID) + "/cleanup" }

// Error types of non-retryable activity failures (temporal.ApplicationError.Type()). Workflows list them in
// their retry policies and map them onto user-facing errors.
const (
	// ErrAttachedRunning: the volume is attached to a running instance and cannot be overwritten.
	ErrAttachedRunning = "AttachedRunning"
	// ErrNotFound: the volume, snapshot or backup does not exist.
	ErrNotFound = "NotFound"
	// ErrInvalidArgument: the request can never succeed as given.
	ErrInvalidArgument = "InvalidArgument"
	// ErrCorrupt: stored backup data failed verification.
	ErrCorrupt = "Corrupt"
	// ErrNoBackupStorage: the hypervisor has no backup storage configured (or not the one named).
	ErrNoBackupStorage = "NoBackupStorage"
	// ErrNoSpace: a disk (the fs backup storage, or a restore's target) is full or over quota. Retrying
	// until the deadline would hold the volume's lock for nothing; an operator must make room.
	ErrNoSpace = "NoSpace"
)

// MsgAttachedRunning is the spec's message for an in-place overwrite of a volume a running instance uses,
// given by the workflows' live check and by the agent alike.
const MsgAttachedRunning = "Cannot restore in-place while attached to a running instance"

// NonRetryable lists the error types a retry can never fix.
var NonRetryable = []string{ErrAttachedRunning, ErrNotFound, ErrInvalidArgument, ErrCorrupt, ErrNoBackupStorage,
	ErrNoSpace}

// Volume types: a VolumeRef's Type, and the drivers a hypervisor serves (hypervisors.<id>.drivers). The
// drivers themselves are listed in activities/volume/drivers; workflows and the API only tell them apart.
const (
	VolumeFile = "file" // a qcow2 or raw image file on the hypervisor, used by libvirt/QEMU domains
	VolumeRBD  = "rbd"  // a Ceph RBD image
)

// VolumeTypes returns every volume type, in the order messages name them.
func VolumeTypes() []string { return []string{VolumeFile, VolumeRBD} }

// VolumeRef says where a volume's bytes live. Type is VolumeFile or VolumeRBD.
type VolumeRef struct {
	Type string `json:"type"`
	Path string `json:"path,omitempty"`
	// Format of a file volume ("raw" or "qcow2"), stated at registration or derived from the path's
	// extension by the control plane, and recorded with the volume: never guessed from the file's bytes,
	// which a guest writes.
	Format string `json:"format,omitempty"`
	Pool   string `json:"pool,omitempty"`
	Image  string `json:"image,omitempty"`
	// CreatedBy is the operation that creates this volume (a restore to a new volume): the driver creates it
	// exclusively, reuses it only on a retry of that same operation, and deletes it only for that operation.
	// Empty for volumes Holdfast did not create. Never taken from a caller: the control plane sets it.
	CreatedBy string `json:"created_by,omitempty"`
}

// Progress is what long activities heartbeat: it is shown to users (phase, rate, ETA) and it is the resume
// checkpoint a retried activity starts from (NextOffset).
type Progress struct {
	Phase          string  `json:"phase"`
	BytesDone      int64   `json:"bytes_done"`
	BytesTotal     int64   `json:"bytes_total"`
	NextOffset     int64   `json:"next_offset"`
	BytesPerSecond float64 `json:"bytes_per_second"`
}

// Consistency of a snapshot: "application" when the guest's filesystems were frozen through the QEMU guest
// agent, "crash" otherwise (never silently claimed consistent).
const (
	ConsistencyApplication = "application"
	ConsistencyCrash       = "crash"
)

// AttachmentInput names the volume whose attachment state is wanted.
type AttachmentInput struct {
	VolumeID string    `json:"volume_id"`
	Volume   VolumeRef `json:"volume"`
}

// AttachmentResult is the live attachment state of a volume.
type AttachmentResult struct {
	Attached bool   `json:"attached"`
	Domain   string `json:"domain,omitempty"`
	Running  bool   `json:"running"`
}

// SnapshotInput creates snapshot SnapshotID of a volume (Freeze: try guest fsfreeze first).
type SnapshotInput struct {
	VolumeID   string    `json:"volume_id"`
	Volume     VolumeRef `json:"volume"`
	SnapshotID string    `json:"snapshot_id"`
	Freeze     bool      `json:"freeze"`
}

// SnapshotResult describes a created snapshot.
type SnapshotResult struct {
	SnapshotID  string `json:"snapshot_id"`
	SizeBytes   int64  `json:"size_bytes"`
	Consistency string `json:"consistency"`
	FreezeError string `json:"freeze_error,omitempty"`
}

// SnapshotRef names one snapshot of a volume (delete, rollback).
type SnapshotRef struct {
	VolumeID   string    `json:"volume_id"`
	Volume     VolumeRef `json:"volume"`
	SnapshotID string    `json:"snapshot_id"`
}

// UploadBackupInput streams snapshot SnapshotID of a volume into backup storage Storage as backup BackupID.
// ParentBackupID (optional) is the volume's previous backup: chunks it has are not uploaded again.
type UploadBackupInput struct {
	VolumeID       string            `json:"volume_id"`
	Volume         VolumeRef         `json:"volume"`
	SnapshotID     string            `json:"snapshot_id"`
	BackupID       string            `json:"backup_id"`
	ParentBackupID string            `json:"parent_backup_id,omitempty"`
	Storage        string            `json:"storage"`
	Labels         map[string]string `json:"labels,omitempty"`
	// BaseSnapshotID is the snapshot ParentBackupID was read from, kept on the volume's storage since: the
	// upload reads only the extents that changed since it (the driver's Changed), and takes the others from
	// the parent's manifest. Empty, or unusable (gone, the volume resized, the parent unreadable), means a
	// full read, for the reason FullReadReason gives (the workflow's, when it had no base to give).
	BaseSnapshotID string `json:"base_snapshot_id,omitempty"`
	FullReadReason string `json:"full_read_reason,omitempty"`
}

// UploadBackupResult describes a stored backup and how it was read.
type UploadBackupResult struct {
	SizeBytes   int64 `json:"size_bytes"`
	StoredBytes int64 `json:"stored_bytes"`
	// ReadBytes is what the upload read from the volume's snapshot. Incremental is true when it read only
	// what changed since BaseSnapshotID; otherwise FullReadReason says why it read everything.
	ReadBytes      int64  `json:"read_bytes"`
	Incremental    bool   `json:"incremental,omitempty"`
	FullReadReason string `json:"full_read_reason,omitempty"`
	// KeepSnapshot says that the volume's driver tracks changes against a snapshot cheaply (RBD, qcow2): the
	// workflow keeps the snapshot this backup was read from as the next backup's base. Raw files have no
	// change tracking (a diff would read two full copies), so theirs is dropped.
	KeepSnapshot bool `json:"keep_snapshot,omitempty"`
}

// BackupRef names one backup in a backup storage (delete, verify).
type BackupRef struct {
	VolumeID string `json:"volume_id"`
	BackupID string `json:"backup_id"`
	Storage  string `json:"storage"`
}

// RestoreBackupInput writes backup BackupID (of volume SourceVolumeID, in Storage) onto Target. Create makes
// Target as a new volume of the backup's size first; otherwise Target is overwritten in place (refused with
// ErrAttachedRunning while a running instance uses it).
type RestoreBackupInput struct {
	SourceVolumeID string    `json:"source_volume_id"`
	BackupID       string    `json:"backup_id"`
	Storage        string    `json:"storage"`
	TargetVolumeID string    `json:"target_volume_id"`
	Target         VolumeRef `json:"target"`
	Create         bool      `json:"create"`
}

// RestoreResult describes a restored volume.
type RestoreResult struct {
	SizeBytes    int64 `json:"size_bytes"`
	BytesWritten int64 `json:"bytes_written"`
}

// InstantRestoreResult is what PrepareInstantRestore made: the new volume, readable and writable at once,
// reading what it does not hold yet from the agent's export of the backup (Instant), or nothing, when the
// target cannot be restored instantly (FallbackReason says why, in a short fixed phrase users read).
type InstantRestoreResult struct {
	SizeBytes      int64  `json:"size_bytes"`
	Instant        bool   `json:"instant"`
	FallbackReason string `json:"fallback_reason,omitempty"`
}

// CloneSnapshotInput creates Target as a new volume holding snapshot SnapshotID of Source.
type CloneSnapshotInput struct {
	SourceVolumeID string    `json:"source_volume_id"`
	Source         VolumeRef `json:"source"`
	SnapshotID     string    `json:"snapshot_id"`
	TargetVolumeID string    `json:"target_volume_id"`
	Target         VolumeRef `json:"target"`
}

// DeleteVolumeInput removes a volume Holdfast created (compensation of a failed restore to a new volume).
type DeleteVolumeInput struct {
	VolumeID string    `json:"volume_id"`
	Volume   VolumeRef `json:"volume"`
}

// Activity names: the method names of Hypervisor, which is how workers register an implementation.
const (
	AttachmentName       = "Attachment"
	CreateSnapshotName   = "CreateSnapshot"
	DeleteSnapshotName   = "DeleteSnapshot"
	RollbackSnapshotName = "RollbackSnapshot"
	UploadBackupName     = "UploadBackup"
	DeleteBackupName     = "DeleteBackup"
	RestoreBackupName    = "RestoreBackup"
	CloneSnapshotName    = "CloneSnapshot"
	DeleteVolumeName     = "DeleteVolume"
	InspectVolumeName    = "InspectVolume"
	// PrepareInstantRestoreName and HydrateVolumeName are an instant restore's two steps (RestoreBackupInput).
	PrepareInstantRestoreName = "PrepareInstantRestore"
	HydrateVolumeName         = "HydrateVolume"
	AbandonInstantRestoreName = "AbandonInstantRestore"
)

// InspectResult is what a hypervisor found at a volume's location when it was registered.
type InspectResult struct {
	SizeBytes int64 `json:"size_bytes"`
}

// Hypervisor is the set of activities one hypervisor agent serves on TaskQueue(hypervisor_id). A worker
// registers an implementation with worker.RegisterActivity, so activity names are these method names.
type Hypervisor interface {
	// Attachment reports whether a running instance uses the volume, checked live.
	Attachment(ctx context.Context, in AttachmentInput) (AttachmentResult, error)
	// CreateSnapshot creates a snapshot (idempotent: an existing one with the same id is success).
	CreateSnapshot(ctx context.Context, in SnapshotInput) (SnapshotResult, error)
	// DeleteSnapshot removes a snapshot (idempotent: a missing one is success).
	DeleteSnapshot(ctx context.Context, in SnapshotRef) error
	// RollbackSnapshot overwrites the volume with the snapshot, refusing while attached to a running instance.
	RollbackSnapshot(ctx context.Context, in SnapshotRef) error
	// UploadBackup streams a snapshot into backup storage; it heartbeats Progress and resumes from it.
	UploadBackup(ctx context.Context, in UploadBackupInput) (UploadBackupResult, error)
	// DeleteBackup removes a backup's manifest (its chunks go at garbage collection; idempotent).
	DeleteBackup(ctx context.Context, in BackupRef) error
	// RestoreBackup writes a backup onto a volume; it heartbeats Progress.
	RestoreBackup(ctx context.Context, in RestoreBackupInput) (RestoreResult, error)
	// PrepareInstantRestore serves a backup as a read-only export on the target's host and creates the new
	// volume over it (Create is implied), or reports why the target cannot be restored instantly.
	PrepareInstantRestore(ctx context.Context, in RestoreBackupInput) (InstantRestoreResult, error)
	// HydrateVolume copies the export's data into the volume PrepareInstantRestore made until it stands
	// alone, then ends the export; it heartbeats Progress and resumes with what is still missing.
	HydrateVolume(ctx context.Context, in RestoreBackupInput) (RestoreResult, error)
	// AbandonInstantRestore deletes the volume PrepareInstantRestore made (as DeleteVolume, serving the
	// backup meanwhile where the volume reads through it even to be deleted: an RBD import) and ends its
	// export (a compensation; idempotent).
	AbandonInstantRestore(ctx context.Context, in RestoreBackupInput) error
	// CloneSnapshot creates a new volume from a snapshot.
	CloneSnapshot(ctx context.Context, in CloneSnapshotInput) (RestoreResult, error)
	// DeleteVolume removes a volume (idempotent).
	DeleteVolume(ctx context.Context, in DeleteVolumeInput) error
	// InspectVolume checks, on the hypervisor, that a volume being registered is one it may serve: inside its
	// roots or pools, a regular file (no link on the way) or an RBD image, of the recorded format. It returns
	// the volume's size. Read-only.
	InspectVolume(ctx context.Context, in AttachmentInput) (InspectResult, error)
}

// StorageTaskQueue returns the task queue of the activities that touch only a backup storage (catalog,
// replication, scrub, garbage collection, deleting a backup). Every agent configured with the storage serves
// it, so this work never waits on one host: when a hypervisor burns down, any surviving agent takes it.
func StorageTaskQueue(storage string) string { return "storage/" + storage }

// Storage activity names: the method names of Storage.
const (
	ListCatalogName     = "ListCatalog"
	ReplicateBackupName = "ReplicateBackup"
	ScrubStorageName    = "ScrubStorage"
	CollectGarbageName  = "CollectGarbage"
	AbandonBackupName   = "AbandonBackup"
)

// Manifest labels Holdfast writes on every backup. With them a fresh control plane can rebuild a volume's
// registration and backup catalog from the storage alone (holdfast recover).
const (
	LabelItemName     = "name"
	LabelOwnerID      = "owner_id"
	LabelHypervisorID = "hypervisor_id"
	LabelConsistency  = "consistency"
	LabelVolumeName   = "volume_name"
	LabelPlanID       = "plan_id"
	LabelVolumeType   = "volume_type"
	LabelVolumePath   = "volume_path"
	LabelVolumeFormat = "volume_format"
	LabelVolumePool   = "volume_pool"
	LabelVolumeImage  = "volume_image"
	LabelScheduled    = "scheduled"
	LabelOperationID  = "operation_id"
)

// CatalogInput asks for one page of a storage's catalog: the backups whose manifests sort after After
// ("volume_id/backup_id"; "" from the start), at most Limit (<= 0: DefaultCatalogPage).
type CatalogInput struct {
	Storage string `json:"storage"`
	After   string `json:"after,omitempty"`
	Limit   int    `json:"limit,omitempty"`
}

// DefaultCatalogPage keeps a catalog page well inside Temporal's payload limits.
const DefaultCatalogPage = 500

// CatalogEntry is one backup found in a storage, read from its manifest.
type CatalogEntry struct {
	VolumeID    string            `json:"volume_id"`
	BackupID    string            `json:"backup_id"`
	SizeBytes   int64             `json:"size_bytes"`
	StoredBytes int64             `json:"stored_bytes"`
	SourceType  string            `json:"source_type,omitempty"`
	CreatedAt   time.Time         `json:"created_at"`
	CompletedAt time.Time         `json:"completed_at"`
	Labels      map[string]string `json:"labels,omitempty"`
}

// CatalogProblem is a manifest that could not be read (damaged, or encrypted with another key).
type CatalogProblem struct {
	VolumeID string `json:"volume_id"`
	BackupID string `json:"backup_id"`
	Error    string `json:"error"`
}

// CatalogPage is one page of a storage's catalog, ordered by (volume_id, backup_id). Next is the After of
// the following page ("" when this is the last).
type CatalogPage struct {
	Entries  []CatalogEntry   `json:"entries"`
	Problems []CatalogProblem `json:"problems,omitempty"`
	Next     string           `json:"next,omitempty"`
}

// ReplicateInput copies backup BackupID of VolumeID from storage From to storage To: the chunks To lacks
// first, then the manifest (a replica exists iff its manifest does), then verifies the replica.
type ReplicateInput struct {
	VolumeID string `json:"volume_id"`
	BackupID string `json:"backup_id"`
	From     string `json:"from"`
	To       string `json:"to"`
}

// ReplicateResult says what a replication moved and that the replica verified.
type ReplicateResult struct {
	ChunksCopied  int   `json:"chunks_copied"`
	ChunksPresent int   `json:"chunks_present"`
	BytesCopied   int64 `json:"bytes_copied"`
	Verified      bool  `json:"verified"`
}

// ScrubInput verifies every backup of a storage (or of one volume when VolumeID is set) by reading and
// checking every chunk it references.
type ScrubInput struct {
	Storage  string `json:"storage"`
	VolumeID string `json:"volume_id,omitempty"`
}

// ScrubFinding is one damaged backup: the chunks it references that are gone or fail their hash.
type ScrubFinding struct {
	VolumeID string   `json:"volume_id"`
	BackupID string   `json:"backup_id"`
	Missing  []string `json:"missing,omitempty"`
	Corrupt  []string `json:"corrupt,omitempty"`
	Error    string   `json:"error,omitempty"`
}

// ScrubResult is a scrub's report; Damaged is empty when every backup verified.
type ScrubResult struct {
	Backups   int            `json:"backups"`
	Chunks    int            `json:"chunks"`
	BytesRead int64          `json:"bytes_read"`
	Damaged   []ScrubFinding `json:"damaged,omitempty"`
}

// GCInput collects a storage's unreferenced chunks (of one volume when VolumeID is set) older than Grace.
type GCInput struct {
	Storage  string        `json:"storage"`
	VolumeID string        `json:"volume_id,omitempty"`
	Grace    time.Duration `json:"grace"`
}

// GCResult says what garbage collection removed.
type GCResult struct {
	ChunksDeleted int   `json:"chunks_deleted"`
	BytesFreed    int64 `json:"bytes_freed"`
	ChunksKept    int   `json:"chunks_kept"`
}

// Storage is the set of activities every agent serves on StorageTaskQueue(name) for each backup storage it is
// configured with. Like Hypervisor, activity names are the method names; DeleteBackup is the same activity as
// Hypervisor.DeleteBackup, served here so deleting a backup never waits on the host that made it.
type Storage interface {
	// ListCatalog returns one page of the backups (manifests) in a storage.
	ListCatalog(ctx context.Context, in CatalogInput) (CatalogPage, error)
	// ReplicateBackup copies a backup to another storage (chunks, then manifest) and verifies the copy;
	// idempotent, heartbeats Progress.
	ReplicateBackup(ctx context.Context, in ReplicateInput) (ReplicateResult, error)
	// ScrubStorage verifies every chunk of every backup; damage is reported in the result, not as an error.
	ScrubStorage(ctx context.Context, in ScrubInput) (ScrubResult, error)
	// CollectGarbage removes chunks no manifest (nor in-progress backup) references, older than the grace.
	CollectGarbage(ctx context.Context, in GCInput) (GCResult, error)
	// DeleteBackup removes a backup's manifest (idempotent).
	DeleteBackup(ctx context.Context, in BackupRef) error
	// AbandonBackup is a failed or aborted backup's compensation: it removes everything that backup left in
	// the storage — its manifest if written, its resume journal and in-progress marker, and the chunks it
	// uploaded that no other backup references — at once, not after a GC grace. Idempotent.
	AbandonBackup(ctx context.Context, in BackupRef) error
}
