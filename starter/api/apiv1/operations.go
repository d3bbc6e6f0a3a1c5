package apiv1

import "time"

// Restore modes.
const (
	ModeInPlace   = "in_place"
	ModeNewVolume = "new_volume"
)

// CreateItemRequest is the body of POST /v1/volumes/{volume_id}/snapshots and .../backups; the body may be
// left out. An empty Name is left out, so that Holdfast names the item.
type CreateItemRequest struct {
	Name string `json:"name,omitempty"`
}

// RestoreRequest is the body of POST /v1/volumes/{volume_id}/restore: one of SnapshotID and BackupID, and
// Mode in_place (with Confirm, the volume's name) or new_volume. NewVolumeID, Plan, HypervisorID and
// Storage place the new volume; only a panel token may give them (an owner's is a 400 naming the field).
type RestoreRequest struct {
	SnapshotID    string   `json:"snapshot_id,omitempty"`
	BackupID      string   `json:"backup_id,omitempty"`
	Mode          string   `json:"mode"`
	Confirm       string   `json:"confirm,omitempty"`
	NewVolumeID   string   `json:"new_volume_id,omitempty"`
	NewVolumeName string   `json:"new_volume_name,omitempty"`
	Plan          string   `json:"plan,omitempty"`
	HypervisorID  string   `json:"hypervisor_id,omitempty"`
	Storage       *Storage `json:"storage,omitempty"`
	// Instant (beyond v1, optional) makes a restore of a backup to a new volume usable at once: the new
	// volume is registered, hydrating, as soon as it reads the backup through the target agent.
	Instant bool `json:"instant,omitempty"`
}

// Accepted is the 202 answer to every request that starts an operation.
type Accepted struct {
	OperationID string `json:"operation_id"`
	VolumeID    string `json:"volume_id"`
	// Kind is snapshot, backup, restore, delete or deregister.
	Kind   string `json:"kind"`
	ItemID string `json:"item_id"`
	Status string `json:"status"`
	// NewVolumeID is the volume a restore to a new volume creates (beyond v1: present only then; for an
	// owner token, the caller's only way to learn the ID Holdfast chose).
	NewVolumeID string `json:"new_volume_id,omitempty"`
}

// Operation is the body of GET /v1/operations/{operation_id}.
type Operation struct {
	OperationID string `json:"operation_id"`
	VolumeID    string `json:"volume_id"`
	Kind        string `json:"kind"`
	ItemID      string `json:"item_id"`
	// Status is pending, creating, restoring, deleting, available, completed, failed or aborted.
	Status string `json:"status"`
	// Progress is null when there is none to show.
	Progress *Progress `json:"progress"`
	// Error is null unless the operation failed or was aborted.
	Error     *Error    `json:"error"`
	StartedAt time.Time `json:"started_at"`
	// FinishedAt is null while the operation runs.
	FinishedAt  *time.Time `json:"finished_at"`
	NewVolumeID string     `json:"new_volume_id,omitempty"`
	// InstantFallback (beyond v1) says why an instant restore was made as a full one.
	InstantFallback string `json:"instant_fallback,omitempty"`
}

// Progress is a running operation's live progress.
type Progress struct {
	Phase          string  `json:"phase"`
	BytesDone      int64   `json:"bytes_done"`
	BytesTotal     int64   `json:"bytes_total"`
	BytesPerSecond float64 `json:"bytes_per_second"`
	// ETASeconds is whole seconds left, null when not known (which 0 seconds left is not).
	ETASeconds *int64 `json:"eta_seconds"`
}
