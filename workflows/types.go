// Package workflows holds Holdfast's Temporal workflows: VolumeWorkflow (one per volume: its state and its
// mutex), OwnerWorkflow (one per owner: at most N operations in flight), and the operation sagas
// (SnapshotWorkflow, BackupWorkflow, RestoreWorkflow, DeleteWorkflow) they run as children.
//
// Everything here is deterministic workflow code: no time.Now, goroutines, map iteration for output or I/O.
// Side effects are activities (package activities), ordered on the hypervisor's task queue.
package workflows

import (
	"time"

	"github.com/holdfast/holdfast/activities"
)

// TaskQueue is where the control plane's workflows and control activities run.
const TaskQueue = "holdfast-control"

// Update, query and signal names (part of the wire contract: never rename).
const (
	UpdateRegister = "register"
	UpdateRequest  = "request"
	UpdateAbort    = "abort"
	QueryState     = "state"

	UpdateAcquire = "acquire"
	SignalClaim   = "claim"
	SignalRelease = "release"
	// SignalPermitRequest asks an owner's workflow for a permit on a volume's behalf (PermitRequest);
	// SignalPermit is the owner's answer to the volume (PermitReply).
	SignalPermitRequest = "permit-request"
	SignalPermit        = "permit"
	QueryPermits        = "permits"
	// SignalTurn tells a scheduled run waiting for the owner's permit that one has been freed, or for a
	// volume that it is free (no payload).
	SignalTurn = "turn"
	// SignalWaitIdle asks a volume to tell a scheduled run refused VolumeBusy (payload: the run's workflow
	// ID) its turn once the operation holding the volume ends.
	SignalWaitIdle = "wait-idle"
)

// Search attributes kept current on volume and operation workflows (register them on the namespace).
const (
	SearchVolume          = "HoldfastVolume"
	SearchOwner           = "HoldfastOwner"
	SearchHypervisor      = "HoldfastHypervisor"
	SearchActiveOperation = "HoldfastActiveOperation"
	// SearchOperations (KeywordList, on volume workflows) lists the volume's recent and active operation
	// ids: it finds an operation's volume when the operation never got a child workflow (aborted before it
	// started, or failed making room at the plan cap).
	SearchOperations = "HoldfastOperations"
)

// VolumeWorkflowID and OwnerWorkflowID are the entity IDs.
func VolumeWorkflowID(volumeID string) string { return "volume/" + volumeID }

// OwnerWorkflowID is the ID of an owner's permit workflow.
func OwnerWorkflowID(ownerID string) string { return "owner/" + ownerID }

// OperationWorkflowID is the ID of an operation's child workflow.
func OperationWorkflowID(operationID string) string { return "operation/" + operationID }

// Kind of an operation.
type Kind string

// Operation kinds.
const (
	KindSnapshot Kind = "snapshot"
	KindBackup   Kind = "backup"
	KindRestore  Kind = "restore"
	KindDelete   Kind = "delete"
	// KindDeregister removes a volume from Holdfast (DELETE /v1/volumes/{volume_id}): its snapshots are
	// deleted, its backups too unless kept for a retention period; its disk is the panel's and stays.
	KindDeregister Kind = "deregister"
)

// Status of an item (snapshot, backup) or of an operation.
type Status string

// Statuses: items move pending → creating → available | failed (deleting while being deleted); operations
// end completed/available, failed or aborted.
const (
	StatusPending   Status = "pending"
	StatusCreating  Status = "creating"
	StatusAvailable Status = "available"
	StatusFailed    Status = "failed"
	StatusAborted   Status = "aborted"
	StatusRestoring Status = "restoring"
	StatusDeleting  Status = "deleting"
	StatusCompleted Status = "completed"
)

// Restore modes.
const (
	ModeInPlace   = "in_place"
	ModeNewVolume = "new_volume"
)

// Plan is a volume's retention caps and prices, resolved from the config at registration.
type Plan struct {
	PlanID              string  `json:"plan_id"`
	MaxSnapshots        int     `json:"max_snapshots"`
	MaxBackups          int     `json:"max_backups"`
	SnapshotCreditValue float64 `json:"snapshot_credit_value"`
	BackupCreditValue   float64 `json:"backup_credit_value"`
}

// VolumeSpec is everything the control plane knows about a volume. It is resolved against the config by the
// client that registers the volume, so that validators (which cannot do I/O) have what they check.
type VolumeSpec struct {
	VolumeID     string               `json:"volume_id"`
	Name         string               `json:"name"`
	OwnerID      string               `json:"owner_id"`
	HypervisorID string               `json:"hypervisor_id"`
	Plan         Plan                 `json:"plan"`
	Storage      activities.VolumeRef `json:"storage"`
	SizeBytes    int64                `json:"size_bytes"`
	// BackupStorage is the backup storage of the hypervisor's group ("": none configured).
	BackupStorage string `json:"backup_storage"`
	// BackupReplica is the storage every backup is copied to after it is made ("": none); with
	// RequireReplication a backup only counts as available once its replica verified.
	BackupReplica      string `json:"backup_replica,omitempty"`
	RequireReplication bool   `json:"require_replication,omitempty"`
	// OwnerLimit, Cooldown and Deadline are the guard rails in force for this volume.
	OwnerLimit int           `json:"owner_limit"`
	Cooldown   time.Duration `json:"cooldown"`
	Deadline   time.Duration `json:"deadline"`
	// Hydrating is the instant restore (operation ID) whose new volume this is, while it hydrates: the
	// volume is usable by its domain, and refuses every request (VolumeBusy, restore) until it stands alone.
	Hydrating string `json:"hydrating,omitempty"`
}

// Item is a snapshot or a backup of a volume.
type Item struct {
	ItemID      string    `json:"item_id"`
	Name        string    `json:"name"`
	Status      Status    `json:"status"`
	CreatedAt   time.Time `json:"created_at"`
	SizeBytes   int64     `json:"size_bytes"`
	StoredBytes int64     `json:"stored_bytes,omitempty"`
	Storage     string    `json:"storage,omitempty"`
	Consistency string    `json:"consistency,omitempty"`
	Scheduled   bool      `json:"scheduled,omitempty"`
	OperationID string    `json:"operation_id,omitempty"`
	Error       string    `json:"error,omitempty"`
	// Replica is the state of a backup's off-site copy (nil: the storage has no replica).
	Replica *Replica `json:"replica,omitempty"`
	// How a backup was read: ReadBytes from the volume; Incremental when only what changed since the previous
	// backup was read, otherwise FullReadReason says why everything was.
	ReadBytes      int64  `json:"read_bytes,omitempty"`
	Incremental    bool   `json:"incremental,omitempty"`
	FullReadReason string `json:"full_read_reason,omitempty"`
	// Recovered marks a backup found in storage by a catalog rebuild rather than made by this control plane.
	Recovered bool `json:"recovered,omitempty"`
	// AvailableAt is when the item became available, DeletedAt when it went (on an item in VolumeState.Gone):
	// billing bills an hour from the items that existed in it, whenever it runs.
	AvailableAt *time.Time `json:"available_at,omitempty"`
	DeletedAt   *time.Time `json:"deleted_at,omitempty"`
}

// Replication states of a backup's replica.
const (
	ReplicaReplicated = "replicated"
	ReplicaFailed     = "failed"
)

// Replica is where a backup's copy lives and whether it is complete.
type Replica struct {
	Storage      string     `json:"storage"`
	Status       string     `json:"status"`
	ReplicatedAt *time.Time `json:"replicated_at,omitempty"`
	BytesCopied  int64      `json:"bytes_copied,omitempty"`
	Error        string     `json:"error,omitempty"`
}

// OperationRequest asks a volume for one operation. The client fills OperationID (also the Update ID, so a
// retried request is deduplicated).
type OperationRequest struct {
	OperationID string `json:"operation_id"`
	Kind        Kind   `json:"kind"`
	// Name of the snapshot/backup to create.
	Name string `json:"name,omitempty"`
	// SnapshotID or BackupID: the source of a restore, or the item to delete.
	SnapshotID string `json:"snapshot_id,omitempty"`
	BackupID   string `json:"backup_id,omitempty"`
	// Mode of a restore: in_place or new_volume.
	Mode string `json:"mode,omitempty"`
	// Confirm repeats the volume's name (in-place restore) or the item's name (delete).
	Confirm string `json:"confirm,omitempty"`
	// NewVolume is the resolved spec of the volume a new_volume restore creates.
	NewVolume *VolumeSpec `json:"new_volume,omitempty"`
	// OwnerLease is the owner permit held for this operation. Clients leave it empty and the volume takes the
	// permit itself once the request passed its checks; a lease set by a client of an earlier version, which
	// acquired it by Update, is claimed as before.
	OwnerLease string `json:"owner_lease,omitempty"`
	// Scheduled marks requests from schedules (retention may delete only scheduled items).
	Scheduled bool `json:"scheduled,omitempty"`
	// PolicyID and Retention come with scheduled requests: the policy whose schedule sent it (the volume
	// must still be attached to it) and the retention to apply, at the plan cap and after success.
	PolicyID  string     `json:"policy_id,omitempty"`
	Retention *Retention `json:"retention,omitempty"`
	// Waiter, with a scheduled request, is its run's workflow ID: refused at the owner's limit, the run is
	// queued at the owner and told when a permit frees (PermitRequest.Waiter).
	Waiter string `json:"waiter,omitempty"`
	// Instant, with a restore of a backup to a new volume, makes the new volume usable at once: created over
	// the target agent's export of the backup and registered while it hydrates (VolumeSpec.Hydrating).
	Instant bool `json:"instant,omitempty"`
	// KeepBackupsFor, with a deregistration, keeps the volume's backups (restorable by the panel, their ID
	// reserved) for this long before they are deleted; 0 deletes them with the volume.
	KeepBackupsFor time.Duration `json:"keep_backups_for,omitempty"`
}

// ItemKind says whether a restore or delete is about a snapshot or a backup.
func (r OperationRequest) ItemKind() Kind {
	if r.BackupID != "" {
		return KindBackup
	}
	return KindSnapshot
}

// ItemID is the snapshot or backup the request is about.
func (r OperationRequest) ItemID() string {
	if r.BackupID != "" {
		return r.BackupID
	}
	return r.SnapshotID
}

// Operation is the record of one operation, live or finished.
type Operation struct {
	OperationID string               `json:"operation_id"`
	VolumeID    string               `json:"volume_id"`
	Kind        Kind                 `json:"kind"`
	ItemKind    Kind                 `json:"item_kind,omitempty"`
	ItemID      string               `json:"item_id"`
	Status      Status               `json:"status"`
	Progress    *activities.Progress `json:"progress,omitempty"`
	Error       *ErrorInfo           `json:"error,omitempty"`
	StartedAt   time.Time            `json:"started_at"`
	FinishedAt  *time.Time           `json:"finished_at,omitempty"`
	Scheduled   bool                 `json:"scheduled,omitempty"`
	// NewVolumeID is the volume a restore to a new volume creates (chosen by Holdfast for owner tokens).
	NewVolumeID string `json:"new_volume_id,omitempty"`
	// InstantFallback says why an instant restore was made as a full one instead ("": it was instant, or
	// none was asked).
	InstantFallback string `json:"instant_fallback,omitempty"`
}

// ErrorInfo is a typed error as users see it.
type ErrorInfo struct {
	Type    string `json:"type"`
	Message string `json:"message"`
}

// VolumeState is what the state query returns and what continue-as-new carries.
type VolumeState struct {
	Registered    bool        `json:"registered"`
	Spec          VolumeSpec  `json:"spec"`
	Active        *Operation  `json:"active_operation,omitempty"`
	CooldownUntil time.Time   `json:"cooldown_until"`
	Snapshots     []Item      `json:"snapshots"`
	Backups       []Item      `json:"backups"`
	Recent        []Operation `json:"recent_operations"`
	// Queued holds an accepted request not yet started (it survives continue-as-new).
	Queued *OperationRequest `json:"queued,omitempty"`
	// Reservation is the restore operation that holds this (unregistered) volume ID until it registers the
	// volume it creates, or gives the ID back ("": none).
	Reservation string `json:"reservation,omitempty"`
	// ReservedUntil is when Reservation lapses (nil: when given back).
	ReservedUntil *time.Time `json:"reserved_until,omitempty"`
	// GoneSnapshots and GoneBackups list items that were available and have been deleted (with DeletedAt)
	// within keepGone, so that an hour billed late still bills what existed in it.
	GoneSnapshots []Item `json:"gone_snapshots,omitempty"`
	GoneBackups   []Item `json:"gone_backups,omitempty"`
	// BackupsKeptUntil is set on a deregistered volume whose backups are kept for a while: until then its ID
	// cannot be registered again, and then its backups are deleted.
	BackupsKeptUntil *time.Time `json:"backups_kept_until,omitempty"`
	// PolicyID is the policy the volume is attached to ("": none); its schedule is ScheduleID(PolicyID, id).
	PolicyID string `json:"policy_id,omitempty"`
	// Base is the snapshot the last backup was read from, kept for the next one (nil: none kept).
	Base *BackupBase `json:"base,omitempty"`
	// IdleWaiters are the scheduled runs (workflow IDs) to tell their turn when the active operation ends.
	IdleWaiters []string `json:"idle_waiters,omitempty"`
	// CooldownRemainingSeconds is filled by the state query (never stored).
	CooldownRemainingSeconds int64 `json:"cooldown_remaining_seconds"`
}

// BackupBase is the snapshot a volume's last backup (BackupID) was read from, kept on the volume's storage
// so that the next backup reads only what changed since (UploadBackupInput.BaseSnapshotID). It is not an
// Item: never listed, counted against a plan or billed. One per volume: it is replaced, and the old one
// deleted, when the next backup succeeds. Stale, when set, is why it can no longer be trusted (the volume
// was restored in place): the next backup reads everything, and the snapshot still goes after it.
type BackupBase struct {
	SnapshotID   string               `json:"snapshot_id"`
	BackupID     string               `json:"backup_id"`
	HypervisorID string               `json:"hypervisor_id"`
	Volume       activities.VolumeRef `json:"volume"`
	Stale        string               `json:"stale,omitempty"`
}

// VolumeInput starts (or continues) a VolumeWorkflow.
type VolumeInput struct {
	VolumeID string       `json:"volume_id"`
	State    *VolumeState `json:"state,omitempty"`
}

// OperationInput starts an operation child workflow.
type OperationInput struct {
	Volume   VolumeSpec       `json:"volume"`
	Request  OperationRequest `json:"request"`
	Item     Item             `json:"item"`
	ParentID string           `json:"parent_backup_id,omitempty"`
	// Unreplicated are earlier available backups whose best-effort replication failed: a backup retries them
	// after its own (catch-up), so one outage of the replica does not leave them without a copy for good.
	Unreplicated []string  `json:"unreplicated,omitempty"`
	Source       *Item     `json:"source,omitempty"`
	StartedAt    time.Time `json:"started_at"`
	// Snapshots and Backups are what a deregistration deletes.
	Snapshots []Item `json:"snapshots,omitempty"`
	Backups   []Item `json:"backups,omitempty"`
	// Base is the volume's kept backup base: a backup diffs against it and deletes it once replaced, a
	// deregistration deletes it.
	Base *BackupBase `json:"base,omitempty"`
}

// OperationResult is what an operation child returns on success.
type OperationResult struct {
	SizeBytes   int64    `json:"size_bytes"`
	StoredBytes int64    `json:"stored_bytes"`
	Consistency string   `json:"consistency,omitempty"`
	FreezeError string   `json:"freeze_error,omitempty"`
	Replica     *Replica `json:"replica,omitempty"`
	// CaughtUp are the replicas of earlier backups this backup retried (by backup id), whatever their outcome.
	CaughtUp map[string]*Replica `json:"caught_up,omitempty"`
	// A backup's read: the bytes read from the volume, whether only the changes since the base were read
	// (else why not), and the base it leaves for the next backup (nil: none kept).
	ReadBytes      int64       `json:"read_bytes,omitempty"`
	Incremental    bool        `json:"incremental,omitempty"`
	FullReadReason string      `json:"full_read_reason,omitempty"`
	Base           *BackupBase `json:"base,omitempty"`
	// InstantFallback: an instant restore made as a full one, and why.
	InstantFallback string `json:"instant_fallback,omitempty"`
}

// AcquireRequest asks an owner's workflow for a permit.
type AcquireRequest struct {
	LeaseID  string `json:"lease_id"`
	VolumeID string `json:"volume_id"`
	Limit    int    `json:"limit"`
}

// PermitRequest is sent by a volume that has checked a request and took its lock: the owner grants a permit,
// claimed at once for TTL, or refuses at Limit, and answers the volume with a PermitReply. Asking again for a
// held lease is granted again.
type PermitRequest struct {
	LeaseID  string        `json:"lease_id"`
	VolumeID string        `json:"volume_id"`
	Limit    int           `json:"limit"`
	TTL      time.Duration `json:"ttl"`
	// Waiter, from a scheduled request, is the workflow to tell (SignalTurn) when a permit frees should this
	// one be refused: the owner queues it.
	Waiter string `json:"waiter,omitempty"`
}

// Waiter is a scheduled run waiting in an owner's queue for a permit, since Since.
type Waiter struct {
	WorkflowID string    `json:"workflow_id"`
	Since      time.Time `json:"since"`
}

// PermitReply answers a PermitRequest.
type PermitReply struct {
	LeaseID string `json:"lease_id"`
	Granted bool   `json:"granted"`
	Limit   int    `json:"limit"`
}

// ClaimSignal tells an owner's workflow that a volume took the operation a lease was acquired for.
type ClaimSignal struct {
	LeaseID  string `json:"lease_id"`
	VolumeID string `json:"volume_id"`
	// TTL bounds how long a claimed permit is held should its release never arrive (deadline + margin).
	TTL time.Duration `json:"ttl"`
}

// PolicyAttachment attaches a volume to a policy (UpdateSetPolicy); PolicyID "" detaches it.
type PolicyAttachment struct {
	PolicyID string `json:"policy_id"`
}

// ReleaseSignal returns a permit.
type ReleaseSignal struct {
	LeaseID string `json:"lease_id"`
}

// Lease is one permit held for an operation.
type Lease struct {
	LeaseID   string    `json:"lease_id"`
	VolumeID  string    `json:"volume_id"`
	Claimed   bool      `json:"claimed"`
	ExpiresAt time.Time `json:"expires_at"`
	// Waiter marks a permit kept for a scheduled run told its turn, until its request comes (or turnTTL).
	Waiter string `json:"waiter,omitempty"`
}

// OwnerInput starts (or continues) an OwnerWorkflow.
type OwnerInput struct {
	OwnerID string   `json:"owner_id"`
	Leases  []Lease  `json:"leases,omitempty"`
	Waiters []Waiter `json:"waiters,omitempty"`
}

// SearchAttribute is a custom search attribute to register on the namespace; Type is spelled as the
// temporal CLI takes it (--type, and NAME=TYPE in start-dev's --search-attribute).
type SearchAttribute struct{ Name, Type string }

// SearchAttributes are the custom search attributes Holdfast's workflows upsert: a namespace without
// them fails their workflow tasks, so workers check for them at start.
var SearchAttributes = []SearchAttribute{
	{SearchVolume, "Keyword"}, {SearchOwner, "Keyword"}, {SearchHypervisor, "Keyword"},
	{SearchActiveOperation, "Keyword"}, {SearchOperations, "KeywordList"},
}

// DevServerArgs are the `temporal server start-dev` flags every Holdfast dev server takes: SQLite in WAL mode
// with normal sync (one fsync per checkpoint rather than per commit: the dev server's single SQLite connection
// serialises every workflow task, and this alone doubles what it sustains; a crash of the machine may lose the
// last commits, as befits a dev server), the search-attribute cache on (the CLI turns it off, which cost every
// operation some 70 database reads, half of all its requests), and the SearchAttributes registered.
func DevServerArgs() []string {
	args := []string{"--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal",
		// The CLI rereads search attributes from the database on every read (so that ones created while it runs
		// show at once); Holdfast's are created at start, so the cache may serve them.
		"--dynamic-config-value", "system.forceSearchAttributesCacheRefreshOnRead=false"}
	for _, sa := range SearchAttributes {
		args = append(args, "--search-attribute", sa.Name+"="+sa.Type)
	}
	return args
}
