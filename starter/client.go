// Package starter is the Go client hosting panels embed to drive Holdfast: register volumes, request
// snapshots, backups, restores and deletes, abort, and read state and live progress. Every call is a
// Temporal Update or Query against the volume's entity workflow; guard-rail rejections come back
// synchronously as *Error with the spec's type and exact message.
//
// It never decides a guard rail itself: the workflows do, so every client (Go, HTTP API, CLI) gets the same
// answers.
package starter

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	commonpb "go.temporal.io/api/common/v1"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/workers/config"
	"github.com/holdfast/holdfast/workflows"
)

// Error is a typed, user-facing error: Type is stable (VolumeBusy, Cooldown, SnapshotLimit, BackupLimit,
// OwnerLimit, AttachedRunning, NoBackupStorage, ConfirmationMismatch, NotFound, InvalidArgument,
// NoActiveOperation, …) and Message is the exact text to show.
type Error struct {
	Type    string
	Message string
	// RetryAfter is when to try again, in seconds, for a Retry-After header: the cooldown's remaining seconds
	// (Cooldown), workflows.OwnerLimitRetryAfter (OwnerLimit) or workflows.UnavailableRetryAfter (Unavailable).
	RetryAfter int64
}

func (e *Error) Error() string { return e.Message }

// Client is the panel-facing client. It resolves plans, hypervisors and storages against the config.
type Client struct {
	temporal client.Client
	cfg      *config.Config
	// volumes remembers which volume each recently looked-up operation belongs to: that never changes, and a
	// panel polling an operation would otherwise pay a Describe per poll to learn it again.
	volumes *lru
}

// operationsRemembered bounds Client.volumes: a night's operations of a large fleet, a few MiB.
const operationsRemembered = 20_000

// New returns a client over a connected Temporal client.
func New(c client.Client, cfg *config.Config) *Client {
	return &Client{temporal: c, cfg: cfg, volumes: newLRU(operationsRemembered)}
}

// Temporal returns the underlying Temporal client.
func (c *Client) Temporal() client.Client { return c.temporal }

// Volume is a volume's state as panels see it.
type Volume struct {
	workflows.VolumeState
	// CooldownRemainingSeconds is computed at read time from the durable cooldown deadline.
	CooldownRemainingSeconds int64 `json:"cooldown_remaining_seconds"`
}

// RegisterRequest registers (or updates) a volume.
type RegisterRequest struct {
	VolumeID     string               `json:"volume_id"`
	Name         string               `json:"name"`
	OwnerID      string               `json:"owner_id"`
	HypervisorID string               `json:"hypervisor_id"`
	Plan         string               `json:"plan"`
	Storage      activities.VolumeRef `json:"storage"`
	SizeBytes    int64                `json:"size_bytes,omitempty"`
}

// Spec resolves a registration against the config: plan caps, the hypervisor group's backup storage and the
// guard-rail limits. Unknown plans or hypervisors are InvalidArgument naming the field.
func (c *Client) Spec(req RegisterRequest) (workflows.VolumeSpec, error) {
	planID := req.Plan
	if planID == "" {
		planID = config.DefaultPlan
	}
	plan, ok := c.cfg.Plans[planID]
	if !ok {
		return workflows.VolumeSpec{}, invalid("plan: unknown plan %q", planID)
	}
	if _, ok := c.cfg.Hypervisors[req.HypervisorID]; !ok {
		return workflows.VolumeSpec{}, invalid("hypervisor_id: unknown hypervisor %q", req.HypervisorID)
	}
	storage, err := c.cfg.Placement(req.HypervisorID, req.Storage)
	if err != nil {
		return workflows.VolumeSpec{}, invalid("%s", err)
	}
	spec := workflows.VolumeSpec{VolumeID: req.VolumeID, Name: req.Name, OwnerID: req.OwnerID,
		HypervisorID: req.HypervisorID, Storage: storage, SizeBytes: req.SizeBytes,
		Plan: workflows.Plan{PlanID: planID, MaxSnapshots: plan.MaxSnapshots, MaxBackups: plan.MaxBackups,
			SnapshotCreditValue: plan.SnapshotCreditValue, BackupCreditValue: plan.BackupCreditValue},
		BackupStorage: c.cfg.BackupStorage(req.HypervisorID), OwnerLimit: c.cfg.Limits.OwnerInFlight,
		Cooldown: c.cfg.Limits.Cooldown, Deadline: c.cfg.Limits.Deadline}
	spec.BackupReplica, spec.RequireReplication = c.cfg.Replica(spec.BackupStorage)
	if err := workflows.ValidateSpec(spec); err != nil {
		return workflows.VolumeSpec{}, typed(err)
	}
	return spec, nil
}

// RegisterVolume registers or updates a volume, creating its entity workflow on first use
// (Update-With-Start). The volume's hypervisor first checks, live, that the location holds a volume it may
// serve (a regular file of the stated format inside its roots with no link on the way, or an RBD image in its
// pools): a refusal is InvalidArgument naming storage, no answer is HypervisorUnavailable.
func (c *Client) RegisterVolume(ctx context.Context, req RegisterRequest) (*Volume, error) {
	spec, err := c.Spec(req)
	if err != nil {
		return nil, err
	}
	if err := c.inspect(ctx, spec); err != nil {
		return nil, err
	}
	return c.register(ctx, spec)
}

// inspect runs the registration check (workflows.InspectWorkflow) and waits for its answer.
func (c *Client) inspect(ctx context.Context, spec workflows.VolumeSpec) error {
	run, err := c.temporal.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID: workflows.InspectWorkflowID(NewOperationID()), TaskQueue: workflows.TaskQueue,
		WorkflowExecutionTimeout: time.Minute,
	}, workflows.InspectWorkflow, workflows.InspectInput{VolumeID: spec.VolumeID, HypervisorID: spec.HypervisorID,
		Storage: spec.Storage})
	if err != nil {
		return typed(err)
	}
	return typed(run.Get(ctx, nil))
}

// register claims the volume's location for it (no two volumes ever share a file or an image), then registers
// it. A volume moved to another location gives its old one back; a refused registration gives back the
// location it had just claimed.
func (c *Client) register(ctx context.Context, spec workflows.VolumeSpec) (*Volume, error) {
	location := workflows.LocationWorkflowID(spec.HypervisorID, spec.Storage)
	previous := ""
	if old, err := c.state(ctx, spec.VolumeID); err == nil {
		previous = workflows.LocationWorkflowID(old.Spec.HypervisorID, old.Spec.Storage)
	}
	if err := c.claim(ctx, location, spec.VolumeID); err != nil {
		return nil, err
	}
	var st workflows.VolumeState
	if err := c.updateWithStart(ctx, workflows.VolumeWorkflowID(spec.VolumeID), workflows.VolumeWorkflow,
		workflows.VolumeInput{VolumeID: spec.VolumeID}, workflows.UpdateRegister, "", spec, &st); err != nil {
		if isType(err, workflows.ErrInvalidArgument) && previous != location {
			c.unclaim(location, spec.VolumeID)
		}
		return nil, err
	}
	if previous != "" && previous != location {
		c.unclaim(previous, spec.VolumeID)
	}
	return withCooldown(st), nil
}

// claim takes a location for a volume; another volume's location is InvalidArgument naming storage.
func (c *Client) claim(ctx context.Context, locationID, volumeID string) error {
	return c.updateWithStart(ctx, locationID, workflows.LocationWorkflow, workflows.LocationInput{},
		workflows.UpdateClaim, "", workflows.LocationClaim{VolumeID: volumeID}, nil)
}

// unclaim gives a location back (best effort, bounded: a location left claimed refuses other volumes, it
// never lets one in).
func (c *Client) unclaim(locationID, volumeID string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = c.update(ctx, locationID, workflows.UpdateUnclaim, "", workflows.LocationClaim{VolumeID: volumeID}, nil)
}

// updateWithStart sends an Update to an entity workflow, starting it first when it does not run (conflict
// policy UseExisting), waits for the update to complete and decodes its result into out (may be nil).
func (c *Client) updateWithStart(ctx context.Context, workflowID string, wf, input any, update, updateID string,
	arg, out any) error {
	if updateID == "" {
		updateID = NewOperationID()
	}
	return typed(retryTransient(ctx, func() error {
		// A start operation is single-use: each attempt builds its own.
		start := c.temporal.NewWithStartWorkflowOperation(client.StartWorkflowOptions{
			ID: workflowID, TaskQueue: workflows.TaskQueue,
			WorkflowIDConflictPolicy: enumspb.WORKFLOW_ID_CONFLICT_POLICY_USE_EXISTING,
		}, wf, input)
		h, err := c.temporal.UpdateWithStartWorkflow(ctx, client.UpdateWithStartWorkflowOptions{
			StartWorkflowOperation: start,
			UpdateOptions: client.UpdateWorkflowOptions{UpdateName: update, UpdateID: updateID, Args: []any{arg},
				WaitForStage: client.WorkflowUpdateStageCompleted},
		})
		if err != nil {
			return err
		}
		return h.Get(ctx, out)
	}))
}

// transientFor bounds how long an update or a query is re-sent while the server pushes back on a busy entity
// (e.g. more than 10 updates in flight on one volume's workflow).
const transientFor = 20 * time.Second

// retryTransient runs send again while the server pushes back (see transient) until ctx ends or transientFor
// has passed. Anything else, answers and an unreachable server alike, returns at once. Re-sending is safe:
// every update carries a fixed Update ID, which the server deduplicates, and queries only read.
func retryTransient(ctx context.Context, send func() error) error {
	deadline, wait := time.Now().Add(transientFor), 100*time.Millisecond
	for {
		err := send()
		if !transient(ctx, err) || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// transient reports a control plane too busy to answer in time, while the caller still waits: the server's
// ResourceExhausted (e.g. more than 10 updates in flight on one volume's workflow), the SDK's wait for an
// update timing out, a query no worker picked up in time, or one RPC hitting the deadline the SDK put on it
// (not ours: ctx is still live). An unreachable server (Unavailable) is not: the SDK already retried it.
func transient(ctx context.Context, err error) bool {
	if err == nil || ctx.Err() != nil {
		return false
	}
	var busy *serviceerror.ResourceExhausted
	var deadline *serviceerror.DeadlineExceeded
	var waitTimeout *client.WorkflowUpdateServiceTimeoutOrCanceledError
	return errors.As(err, &busy) || errors.As(err, &deadline) || errors.As(err, &waitTimeout) ||
		errors.Is(err, context.DeadlineExceeded) || updateLost(err)
}

// updateLost reports an update the workflow never answered itself: the server aborted it because the workflow
// task that carried it failed (Unavailable "workflow update was aborted"), or the SDK failed it with an error
// of its own rather than one of Holdfast's typed answers. Server 1.29 fails workflow tasks now and then under a
// storm of updates (temporalio/temporal#7741, "premature end of stream"); the next task runs normally.
// Sending the update again with the same Update ID is answered by the workflow.
func updateLost(err error) bool {
	var unavailable *serviceerror.Unavailable
	if errors.As(err, &unavailable) {
		return strings.Contains(unavailable.Message, "update was aborted")
	}
	var panicked *temporal.PanicError
	var app *temporal.ApplicationError
	return errors.As(err, &panicked) || (errors.As(err, &app) && app.Type() == "")
}

// ErrUnavailable is the type of the answer given when the control plane stays too busy to answer within
// transientFor (HTTP 503 with Retry-After), or an owner's permit workflow does not answer its volume in time.
// A read may simply be sent again. A request may or may not have been taken: the volume's active_operation
// tells, and sending it again is answered VolumeBusy if it was.
const ErrUnavailable = workflows.ErrUnavailable

// Volume returns a volume's state, with the active operation's live progress.
func (c *Client) Volume(ctx context.Context, volumeID string) (*Volume, error) {
	st, err := c.state(ctx, volumeID)
	if err != nil {
		return nil, err
	}
	v := withCooldown(*st)
	if v.Active != nil {
		resp, err := c.temporal.DescribeWorkflowExecution(ctx, workflows.OperationWorkflowID(v.Active.OperationID), "")
		if err == nil {
			if p, err := progress(resp); err == nil {
				v.Active.Progress = p
			}
		}
	}
	return v, nil
}

func (c *Client) state(ctx context.Context, volumeID string) (*workflows.VolumeState, error) {
	st, err := c.entityState(ctx, volumeID)
	if err != nil {
		return nil, err
	}
	if !st.Registered {
		return nil, notFound(volumeID)
	}
	return st, nil
}

// entityState is a volume workflow's state, registered or not (a deregistered volume still answers for
// its operations).
func (c *Client) entityState(ctx context.Context, volumeID string) (*workflows.VolumeState, error) {
	var res converter.EncodedValue
	err := retryTransient(ctx, func() (err error) {
		res, err = c.temporal.QueryWorkflow(ctx, workflows.VolumeWorkflowID(volumeID), "", workflows.QueryState)
		return err
	})
	if err != nil {
		var nf *serviceerror.NotFound
		if errors.As(err, &nf) {
			return nil, notFound(volumeID)
		}
		return nil, typed(err)
	}
	var st workflows.VolumeState
	if err := res.Get(&st); err != nil {
		return nil, err
	}
	return &st, nil
}

func notFound(volumeID string) error {
	return &Error{Type: workflows.ErrNotFound, Message: fmt.Sprintf("Volume %s not found.", volumeID)}
}

func withCooldown(st workflows.VolumeState) *Volume {
	v := &Volume{VolumeState: st}
	if left := time.Until(st.CooldownUntil); left > 0 {
		v.CooldownRemainingSeconds = int64((left + time.Second - 1) / time.Second)
	}
	return v
}

// Snapshot requests a snapshot (blank name: a timestamped one).
func (c *Client) Snapshot(ctx context.Context, volumeID, name string) (*workflows.Operation, error) {
	return c.Request(ctx, volumeID, workflows.OperationRequest{Kind: workflows.KindSnapshot, Name: name})
}

// Backup requests a backup to the volume's hypervisor group's backup storage.
func (c *Client) Backup(ctx context.Context, volumeID, name string) (*workflows.Operation, error) {
	return c.Request(ctx, volumeID, workflows.OperationRequest{Kind: workflows.KindBackup, Name: name})
}

// RestoreRequest restores a snapshot or a backup in place (Confirm repeats the volume's name) or to a new
// volume. A new volume's ID is NewVolumeID, or one Holdfast chooses when it is empty (always, for owner
// tokens); it inherits the source's plan and hypervisor unless Plan and HypervisorID name others, and lives
// where Holdfast places it (the hypervisor's first volume root or RBD pool, under a name Holdfast chooses)
// unless Storage names a location inside the hypervisor's roots that nothing occupies yet. Owners never
// choose plan, hypervisor, storage or ID (the HTTP API refuses them).
type RestoreRequest struct {
	SnapshotID    string                `json:"snapshot_id,omitempty"`
	BackupID      string                `json:"backup_id,omitempty"`
	Mode          string                `json:"mode"`
	Confirm       string                `json:"confirm,omitempty"`
	NewVolumeID   string                `json:"new_volume_id,omitempty"`
	NewVolumeName string                `json:"new_volume_name,omitempty"`
	Plan          string                `json:"plan,omitempty"`
	HypervisorID  string                `json:"hypervisor_id,omitempty"`
	Storage       *activities.VolumeRef `json:"storage,omitempty"`
	// Instant makes a restore of a backup to a new volume usable at once (workflows.OperationRequest.Instant).
	Instant bool `json:"instant,omitempty"`
}

// Restore requests a restore. A restore to a new volume first reserves the new volume's ID and claims its
// location, atomically, so a concurrent restore or registration of the same ID or location is refused at
// once; both are given back when the request is refused, and by the restore's compensation when it fails.
func (c *Client) Restore(ctx context.Context, volumeID string, req RestoreRequest) (*workflows.Operation, error) {
	op := workflows.OperationRequest{Kind: workflows.KindRestore, SnapshotID: req.SnapshotID, BackupID: req.BackupID,
		Mode: req.Mode, Confirm: req.Confirm, Instant: req.Instant}
	if req.Mode != workflows.ModeNewVolume {
		return c.Request(ctx, volumeID, op)
	}
	op.OperationID = NewOperationID()
	spec, err := c.newVolumeSpec(ctx, volumeID, op.OperationID, req)
	if err != nil {
		return nil, err
	}
	op.NewVolume = &spec
	release, err := c.reservePlacement(ctx, spec, op.OperationID)
	if err != nil {
		return nil, err
	}
	res, err := c.Request(ctx, volumeID, op)
	var e *Error
	if errors.As(err, &e) && e.Type != ErrUnavailable {
		release() // refused: nothing runs that would use them
	}
	return res, err
}

// newVolumeSpec resolves the volume a restore creates: it inherits the source's owner, plan and hypervisor
// unless the request names others; its location is placed by Holdfast (or checked, when a panel names one)
// and marked as created by operationID, so the driver creates it exclusively and only this restore's
// compensation may delete it.
func (c *Client) newVolumeSpec(ctx context.Context, volumeID, operationID string, req RestoreRequest) (workflows.VolumeSpec, error) {
	newVolumeID := req.NewVolumeID
	if newVolumeID == "" {
		newVolumeID = NewVolumeID()
	} else if !activities.ValidID(newVolumeID) {
		return workflows.VolumeSpec{}, invalid("new_volume_id: must match %s", activities.IDPattern)
	}
	if newVolumeID == volumeID {
		return workflows.VolumeSpec{}, invalid("new_volume_id: must differ from the source volume")
	}
	src, err := c.state(ctx, volumeID)
	if err != nil {
		return workflows.VolumeSpec{}, err
	}
	reg := RegisterRequest{VolumeID: newVolumeID, Name: req.NewVolumeName, OwnerID: src.Spec.OwnerID,
		HypervisorID: req.HypervisorID, Plan: req.Plan}
	if reg.Name == "" {
		reg.Name = newVolumeID
	}
	if reg.HypervisorID == "" {
		reg.HypervisorID = src.Spec.HypervisorID
	}
	if reg.Plan == "" {
		reg.Plan = src.Spec.Plan.PlanID
	}
	if req.Storage != nil {
		reg.Storage = *req.Storage
	} else {
		ref, err := c.cfg.NewVolumeRef(reg.HypervisorID, src.Spec.Storage.Type, config.FormatOf(src.Spec.Storage), operationID)
		if err != nil {
			return workflows.VolumeSpec{}, invalid("%s", err)
		}
		ref.CreatedBy = "" // placement refuses a caller's created_by; set below, after the check
		reg.Storage = ref
	}
	spec, err := c.Spec(reg)
	if err != nil {
		return workflows.VolumeSpec{}, err
	}
	spec.Storage.CreatedBy = operationID
	return spec, nil
}

// reservePlacement reserves a new volume's ID and claims its location for the restore operationID. The
// returned func gives both back.
func (c *Client) reservePlacement(ctx context.Context, spec workflows.VolumeSpec, operationID string) (func(), error) {
	if err := c.updateWithStart(ctx, workflows.VolumeWorkflowID(spec.VolumeID), workflows.VolumeWorkflow,
		workflows.VolumeInput{VolumeID: spec.VolumeID}, workflows.UpdateReserve, "",
		workflows.Reservation{OperationID: operationID, TTL: spec.Deadline + time.Hour}, nil); err != nil {
		return nil, err
	}
	in := workflows.ReleasePlacementInput{OperationID: operationID, VolumeID: spec.VolumeID,
		HypervisorID: spec.HypervisorID, Storage: spec.Storage}
	release := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_ = c.releasePlacement(ctx, in)
	}
	if err := c.claim(ctx, workflows.LocationWorkflowID(spec.HypervisorID, spec.Storage), spec.VolumeID); err != nil {
		release() // the ID goes back; the location's unclaim is a no-op, another volume holds it
		return nil, err
	}
	return release, nil
}

// releasePlacement gives back what reservePlacement took, unless the volume got registered meanwhile (then
// the location is its own).
func (c *Client) releasePlacement(ctx context.Context, in workflows.ReleasePlacementInput) error {
	if st, err := c.state(ctx, in.VolumeID); err == nil && st.Spec.Storage.CreatedBy == in.OperationID {
		return nil
	}
	if err := c.update(ctx, workflows.VolumeWorkflowID(in.VolumeID), workflows.UpdateUnreserve, "",
		workflows.Reservation{OperationID: in.OperationID}, nil); err != nil && !isNotFound(err) {
		return err
	}
	err := c.update(ctx, workflows.LocationWorkflowID(in.HypervisorID, in.Storage), workflows.UpdateUnclaim, "",
		workflows.LocationClaim{VolumeID: in.VolumeID}, nil)
	if err != nil && !isNotFound(err) {
		return err
	}
	return nil
}

func isNotFound(err error) bool {
	var nf *serviceerror.NotFound
	return errors.As(err, &nf)
}

// NewVolumeID returns a fresh volume ID for a volume whose ID Holdfast chooses.
func NewVolumeID() string { return "vol-" + strings.TrimPrefix(NewOperationID(), "op-") }

// Deregister removes a volume from Holdfast (confirm repeats its name): it is detached from its policy,
// its snapshots are deleted, and its backups too unless keepBackupsFor keeps them (for its owner, who may
// register it again meanwhile and gets them back). Its disk is left as it is. Refused while an operation
// runs (VolumeBusy); the volume's cooldown does not apply.
func (c *Client) Deregister(ctx context.Context, volumeID, confirm string, keepBackupsFor time.Duration) (*workflows.Operation, error) {
	st, err := c.state(ctx, volumeID)
	if err != nil {
		return nil, err
	}
	if confirm != st.Spec.Name {
		return nil, &Error{Type: workflows.ErrConfirmationMismatch,
			Message: fmt.Sprintf("Confirmation does not match: type the volume name %q to confirm.", st.Spec.Name)}
	}
	if st.PolicyID != "" {
		if _, err := c.AttachPolicy(ctx, volumeID, ""); err != nil {
			return nil, err
		}
	}
	return c.Request(ctx, volumeID, workflows.OperationRequest{Kind: workflows.KindDeregister, Confirm: confirm,
		KeepBackupsFor: keepBackupsFor})
}

// DeleteSnapshot deletes a snapshot; confirm repeats its name.
func (c *Client) DeleteSnapshot(ctx context.Context, volumeID, snapshotID, confirm string) (*workflows.Operation, error) {
	return c.Request(ctx, volumeID, workflows.OperationRequest{Kind: workflows.KindDelete, SnapshotID: snapshotID,
		Confirm: confirm})
}

// DeleteBackup deletes a backup; confirm repeats its name.
func (c *Client) DeleteBackup(ctx context.Context, volumeID, backupID, confirm string) (*workflows.Operation, error) {
	return c.Request(ctx, volumeID, workflows.OperationRequest{Kind: workflows.KindDelete, BackupID: backupID,
		Confirm: confirm})
}

// Request sends one operation request to the volume, which checks it, takes its lock and then the owner's
// permit itself, so a rejection always names its true cause. req.OperationID may be set by the caller to make
// a retried request idempotent (it is also the Update ID).
func (c *Client) Request(ctx context.Context, volumeID string, req workflows.OperationRequest) (*workflows.Operation, error) {
	return c.request(ctx, volumeID, nil, req)
}

// RequestRead is Request for a volume the caller has just read (v, from Volume, as the API does to check
// who owns it): the first attempt checks v instead of reading the volume's state a second time. Under a
// burst that second read cost every request a round trip to the volume's worker, and a replay of its
// workflow when it had left the worker's cache.
func (c *Client) RequestRead(ctx context.Context, v *Volume, req workflows.OperationRequest) (*workflows.Operation, error) {
	return c.request(ctx, v.Spec.VolumeID, &v.VolumeState, req)
}

// request sends req to the volume, checking first the state read (nil: read it now).
func (c *Client) request(ctx context.Context, volumeID string, read *workflows.VolumeState, req workflows.OperationRequest) (*workflows.Operation, error) {
	if req.OperationID == "" {
		req.OperationID = NewOperationID()
	}
	var op workflows.Operation
	// Every attempt checks the volume's state first and answers at once what its first checks would refuse
	// (workflows.Precheck): once one request of a burst is taken, the others are answered VolumeBusy from
	// the state instead of each costing the workflow a task, again and again while the server pushes back.
	// The first attempt may use the state the caller read; a retry reads it again (an earlier attempt may
	// have been taken though its answer was lost).
	err := retryTransient(ctx, func() error {
		st := read
		read = nil
		if st == nil {
			var err error
			if st, err = c.state(ctx, volumeID); err != nil {
				return err
			}
		}
		if taken := takenOperation(st, req.OperationID); taken != nil {
			op = *taken // an earlier attempt was taken, though its answer was lost
			return nil
		}
		if err := workflows.Precheck(*st, volumeID, req); err != nil {
			return err
		}
		return c.sendUpdate(ctx, workflows.VolumeWorkflowID(volumeID), workflows.UpdateRequest, req.OperationID,
			req, &op)
	})
	if err != nil {
		return nil, typed(err)
	}
	return &op, nil
}

// takenOperation is the operation operationID as the volume's state shows it once the volume took it: the
// active one, or a recent one (nil if the state does not show it). Operation ids are unique, so at most one
// recent operation matches.
func takenOperation(st *workflows.VolumeState, operationID string) *workflows.Operation {
	if st.Active != nil && st.Active.OperationID == operationID {
		return st.Active
	}
	for i := range st.Recent {
		if st.Recent[i].OperationID == operationID {
			return &st.Recent[i]
		}
	}
	return nil
}

// Abort stops the volume's active operation; its saga cleans up and the lock is released once it has.
func (c *Client) Abort(ctx context.Context, volumeID, reason string) (*workflows.Operation, error) {
	if _, err := c.state(ctx, volumeID); err != nil {
		return nil, err
	}
	var op workflows.Operation
	if err := c.update(ctx, workflows.VolumeWorkflowID(volumeID), workflows.UpdateAbort, "", reason, &op); err != nil {
		return nil, typed(err)
	}
	return &op, nil
}

// update sends an Update to a running workflow, waits for it to complete and decodes its result into out. The
// error is returned as Temporal gave it (callers tell rejections from transport errors, then call typed).
// Transport errors are retried for a while with the same Update ID (see retryTransient).
func (c *Client) update(ctx context.Context, workflowID, name, updateID string, arg, out any) error {
	if updateID == "" {
		updateID = NewOperationID()
	}
	return retryTransient(ctx, func() error { return c.sendUpdate(ctx, workflowID, name, updateID, arg, out) })
}

// sendUpdate sends an Update once and waits for its result (see update).
func (c *Client) sendUpdate(ctx context.Context, workflowID, name, updateID string, arg, out any) error {
	h, err := c.temporal.UpdateWorkflow(ctx, client.UpdateWorkflowOptions{WorkflowID: workflowID,
		UpdateID: updateID, UpdateName: name, Args: []any{arg}, WaitForStage: client.WorkflowUpdateStageCompleted})
	if err != nil {
		return err
	}
	return h.Get(ctx, out)
}

// Operation returns one operation, live (with progress) or finished.
func (c *Client) Operation(ctx context.Context, operationID string) (*workflows.Operation, error) {
	volumeID, described, err := c.operationVolume(ctx, operationID)
	if err != nil {
		return nil, err
	}
	st, err := c.entityState(ctx, volumeID)
	if err != nil {
		return nil, err
	}
	taken := takenOperation(st, operationID)
	if taken == nil {
		return nil, &Error{Type: workflows.ErrNotFound, Message: fmt.Sprintf("Operation %s not found.", operationID)}
	}
	op := *taken
	if taken == st.Active {
		if described == nil {
			described, err = c.temporal.DescribeWorkflowExecution(ctx, workflows.OperationWorkflowID(operationID), "")
		}
		if err == nil {
			if p, err := progress(described); err == nil {
				op.Progress = p
			}
		}
	}
	return &op, nil
}

// operationVolume finds an operation's volume: remembered from an earlier lookup, else from its child
// workflow's search attributes (read from the workflow itself, so it is current; the description read is
// returned too), or else from the volume workflow whose SearchOperations lists it (an operation aborted before
// it started never had a child). An operation accepted a moment ago may be in neither yet, so a miss is
// retried briefly.
func (c *Client) operationVolume(ctx context.Context, operationID string) (string, *workflowservice.DescribeWorkflowExecutionResponse, error) {
	notFound := &Error{Type: workflows.ErrNotFound, Message: fmt.Sprintf("Operation %s not found.", operationID)}
	if !activities.ValidID(operationID) {
		return "", nil, notFound
	}
	if volumeID, ok := c.volumes.get(operationID); ok {
		return volumeID, nil, nil
	}
	for attempt := 0; ; attempt++ {
		resp, err := c.temporal.DescribeWorkflowExecution(ctx, workflows.OperationWorkflowID(operationID), "")
		if err == nil {
			if volumeID := keyword(resp.GetWorkflowExecutionInfo().GetSearchAttributes(), workflows.SearchVolume); volumeID != "" {
				c.volumes.put(operationID, volumeID)
				return volumeID, resp, nil
			}
		}
		var nf *serviceerror.NotFound
		if err != nil && !errors.As(err, &nf) {
			return "", nil, typed(err)
		}
		volumeID, err := c.indexedVolume(ctx, operationID)
		if err != nil {
			return "", nil, err
		}
		if volumeID != "" {
			c.volumes.put(operationID, volumeID)
			return volumeID, nil, nil
		}
		if attempt >= 10 {
			return "", nil, notFound
		}
		select {
		case <-ctx.Done():
			return "", nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// indexedVolume looks the operation up in the volume workflows' SearchOperations ("" if none lists it); the
// volume is the one in the listing workflow's ID (volume/<volume_id>).
func (c *Client) indexedVolume(ctx context.Context, operationID string) (string, error) {
	resp, err := c.temporal.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{
		PageSize: 1,
		Query:    fmt.Sprintf("%s = '%s'", workflows.SearchOperations, operationID), // a ValidID has no quote
	})
	if err != nil {
		return "", typed(err)
	}
	for _, ex := range resp.GetExecutions() {
		if id, ok := strings.CutPrefix(ex.GetExecution().GetWorkflowId(), workflows.VolumeWorkflowID("")); ok {
			return id, nil
		}
	}
	return "", nil
}

// keyword decodes one Keyword search attribute ("" if absent).
func keyword(sa *commonpb.SearchAttributes, name string) string {
	var v string
	if field := sa.GetIndexedFields()[name]; field != nil {
		if converter.GetDefaultDataConverter().FromPayload(field, &v) != nil {
			return ""
		}
	}
	return v
}

// progress is the live progress an operation's running activity heartbeats, from its workflow's
// description (the server's view of pending activities: it costs no workflow history).
func progress(resp *workflowservice.DescribeWorkflowExecutionResponse) (*activities.Progress, error) {
	for _, pa := range resp.GetPendingActivities() {
		details := pa.GetHeartbeatDetails()
		if details == nil || len(details.GetPayloads()) == 0 {
			continue
		}
		var p activities.Progress
		if err := converter.GetDefaultDataConverter().FromPayloads(details, &p); err == nil {
			return &p, nil
		}
	}
	return nil, errors.New("no progress reported yet")
}

// Watch calls fn with the operation every interval until it ends (or ctx is done); it returns the final
// state.
func (c *Client) Watch(ctx context.Context, operationID string, interval time.Duration, fn func(workflows.Operation)) (*workflows.Operation, error) {
	if interval <= 0 {
		interval = time.Second
	}
	for {
		op, err := c.Operation(ctx, operationID)
		if err != nil {
			return nil, err
		}
		if fn != nil {
			fn(*op)
		}
		if op.FinishedAt != nil {
			return op, nil
		}
		select {
		case <-ctx.Done():
			return op, ctx.Err()
		case <-time.After(interval):
		}
	}
}

// NewOperationID returns a fresh operation id (also the Update ID and the owner permit's lease id).
func NewOperationID() string {
	var b [10]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return "op-" + hex.EncodeToString(b[:])
}

func invalid(format string, args ...any) error {
	return &Error{Type: workflows.ErrInvalidArgument, Message: fmt.Sprintf(format, args...)}
}

// typed turns Temporal errors carrying a Holdfast application error into *Error; other errors pass through.
func typed(err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	var app *temporal.ApplicationError
	if errors.As(err, &app) && app.Type() != "" {
		out := &Error{Type: app.Type(), Message: app.Message()}
		switch out.Type {
		case workflows.ErrCooldown, ErrUnavailable:
			_ = app.Details(&out.RetryAfter)
		case workflows.ErrOwnerLimit:
			out.RetryAfter = workflows.OwnerLimitRetryAfter
		}
		return out
	}
	var nf *serviceerror.NotFound
	if errors.As(err, &nf) {
		return &Error{Type: workflows.ErrNotFound, Message: strings.TrimSpace(nf.Message)}
	}
	if transient(context.Background(), err) {
		return &Error{Type: ErrUnavailable, RetryAfter: workflows.UnavailableRetryAfter,
			Message: workflows.UnavailableMessage}
	}
	return err
}
