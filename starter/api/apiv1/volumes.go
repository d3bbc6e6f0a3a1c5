package apiv1

import "time"

// RegisterVolumeRequest is the body of PUT /v1/volumes/{volume_id} (panel tokens only).
type RegisterVolumeRequest struct {
	// VolumeID may be left out: it is the path's, and refused when it names another.
	VolumeID     string  `json:"volume_id"`
	Name         string  `json:"name"`
	OwnerID      string  `json:"owner_id"`
	HypervisorID string  `json:"hypervisor_id"`
	Plan         string  `json:"plan"`
	Storage      Storage `json:"storage"`
	SizeBytes    int64   `json:"size_bytes,omitempty"`
}

// Volume is the body of GET /v1/volumes/{volume_id}, and of the 200 answer to a registration.
type Volume struct {
	VolumeID     string  `json:"volume_id"`
	Name         string  `json:"name"`
	OwnerID      string  `json:"owner_id"`
	HypervisorID string  `json:"hypervisor_id"`
	Plan         string  `json:"plan"`
	Storage      Storage `json:"storage"`
	SizeBytes    int64   `json:"size_bytes"`
	// ActiveOperation is null when the volume is idle.
	ActiveOperation          *ActiveOperation `json:"active_operation"`
	CooldownRemainingSeconds int64            `json:"cooldown_remaining_seconds"`
	// PolicyID is the policy the volume is attached to (beyond v1: present only when attached).
	PolicyID string `json:"policy_id,omitempty"`
	// Hydrating (beyond v1: present only then) marks a volume an instant restore made that still reads part
	// of its data from the backup: usable, but refusing requests until the restore ends.
	Hydrating bool `json:"hydrating,omitempty"`
	// Snapshots and Backups are [] when there are none, never null.
	Snapshots []Snapshot `json:"snapshots"`
	Backups   []Backup   `json:"backups"`
}

// ActiveOperation is the operation a volume is running, as its volume shows it.
type ActiveOperation struct {
	OperationID string    `json:"operation_id"`
	Kind        string    `json:"kind"`
	ItemID      string    `json:"item_id"`
	Status      string    `json:"status"`
	Progress    *Progress `json:"progress"`
}

// Snapshot is one snapshot of a volume.
type Snapshot struct {
	SnapshotID string    `json:"snapshot_id"`
	Name       string    `json:"name"`
	Status     string    `json:"status"`
	CreatedAt  time.Time `json:"created_at"`
	SizeBytes  int64     `json:"size_bytes"`
	ItemDetails
}

// Backup is one backup of a volume; Storage is the backup storage that holds it.
type Backup struct {
	BackupID    string    `json:"backup_id"`
	Name        string    `json:"name"`
	Status      string    `json:"status"`
	CreatedAt   time.Time `json:"created_at"`
	SizeBytes   int64     `json:"size_bytes"`
	StoredBytes int64     `json:"stored_bytes"`
	Storage     string    `json:"storage"`
	ItemDetails
}

// ItemDetails are a snapshot's or backup's fields beyond v1, each present only when set, so that a v1
// panel sees exactly the v1 shape of every other item.
type ItemDetails struct {
	// Consistency is "application" (the guest's filesystems were frozen), "crash" (a running guest, not frozen) or
	// "offline" (no running guest used the volume).
	Consistency string `json:"consistency,omitempty"`
	// Error is why the item failed: for an owner token a plain sentence, never a hypervisor's or store's text.
	Error string `json:"error,omitempty"`
	// Scheduled marks items a policy's schedule made.
	Scheduled bool `json:"scheduled,omitempty"`
	// Replica is the state of a backup's off-site copy, when its storage has one.
	Replica *Replica `json:"replica,omitempty"`
	// Recovered marks a backup found in its storage by a catalog rebuild.
	Recovered bool `json:"recovered,omitempty"`
	// How a backup was read: ReadBytes from the volume; Incremental when only what changed since the
	// previous backup was read, otherwise FullReadReason, a short fixed phrase, says why all of it was.
	ReadBytes      int64  `json:"read_bytes,omitempty"`
	Incremental    bool   `json:"incremental,omitempty"`
	FullReadReason string `json:"full_read_reason,omitempty"`
}

// Replica is where a backup's copy lives and whether it is complete (Status "replicated" or "failed").
type Replica struct {
	Storage      string     `json:"storage"`
	Status       string     `json:"status"`
	ReplicatedAt *time.Time `json:"replicated_at,omitempty"`
	BytesCopied  int64      `json:"bytes_copied,omitempty"`
	Error        string     `json:"error,omitempty"`
}
