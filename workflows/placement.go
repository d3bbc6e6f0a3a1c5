package workflows

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/holdfast/holdfast/activities"
)

// Placement: which volume holds a volume ID before it is registered, and which volume holds a location
// (a file on a hypervisor, an RBD image). Both are decided atomically by one entity workflow each, so two
// concurrent restores, or a panel registration racing a customer's restore, can never end up sharing one.

// Update names of reservations (on VolumeWorkflow) and location claims (on LocationWorkflow).
const (
	UpdateReserve   = "reserve"
	UpdateUnreserve = "unreserve"
	UpdateClaim     = "claim"
	UpdateUnclaim   = "unclaim"
)

// ReleasePlacementActivity is the control-plane activity that gives up what a failed restore to a new volume
// reserved: the new volume's ID and its location (input ReleasePlacementInput).
const ReleasePlacementActivity = "ReleasePlacement"

// placementChange makes a restore to a new volume give its reservation and location back on failure.
const placementChange = "placement-release"

// Reservation holds a volume ID for the restore creating that volume. TTL bounds it (0: until given back):
// a reservation whose restore never started — its request lost between the reservation and the volume —
// lapses instead of holding the ID for good. The client sets it past the restore's deadline.
type Reservation struct {
	OperationID string        `json:"operation_id"`
	TTL         time.Duration `json:"ttl,omitempty"`
}

// ReleasePlacementInput names what a failed restore gives back.
type ReleasePlacementInput struct {
	OperationID  string               `json:"operation_id"`
	VolumeID     string               `json:"volume_id"`
	HypervisorID string               `json:"hypervisor_id"`
	Storage      activities.VolumeRef `json:"storage"`
}

// LocationClaim asks a location for a volume.
type LocationClaim struct {
	VolumeID string `json:"volume_id"`
}

// LocationWorkflowID is the ID of the entity that says which volume holds a location. A file is a location
// on its hypervisor; an RBD image is one cluster-wide. The key is hashed: paths may be long.
func LocationWorkflowID(hypervisorID string, ref activities.VolumeRef) string {
	key := "rbd\x00" + ref.Pool + "\x00" + ref.Image
	if ref.Type != activities.VolumeRBD {
		key = "file\x00" + hypervisorID + "\x00" + ref.Path
	}
	sum := sha256.Sum256([]byte(key))
	return "location/" + hex.EncodeToString(sum[:16])
}

// LocationInput starts (or continues) a LocationWorkflow.
type LocationInput struct {
	Holder string `json:"holder,omitempty"`
}

// LocationWorkflow holds one location for one volume: a claim by another volume is refused until the holder
// gives it up.
func LocationWorkflow(ctx workflow.Context, in LocationInput) error {
	holder := in.Holder
	validateClaim := func(ctx workflow.Context, c LocationClaim) error {
		if !activities.ValidID(c.VolumeID) {
			return errInvalid("volume_id: must match %s", activities.IDPattern)
		}
		if holder != "" && holder != c.VolumeID {
			return errInvalid("storage: already used by another volume")
		}
		return nil
	}
	if err := workflow.SetUpdateHandlerWithOptions(ctx, UpdateClaim, func(ctx workflow.Context, c LocationClaim) error {
		if err := validateClaim(ctx, c); err != nil {
			return err
		}
		holder = c.VolumeID
		return nil
	}, workflow.UpdateHandlerOptions{Validator: validateClaim}); err != nil {
		return err
	}
	if err := workflow.SetUpdateHandler(ctx, UpdateUnclaim, func(ctx workflow.Context, c LocationClaim) error {
		if holder == c.VolumeID {
			holder = ""
		}
		return nil
	}); err != nil {
		return err
	}
	if err := workflow.SetQueryHandler(ctx, QueryState, func() (string, error) { return holder, nil }); err != nil {
		return err
	}
	// An idle location costs one row: it keeps running, so a claim never races the workflow's end.
	if err := workflow.Await(ctx, func() bool { return workflow.GetInfo(ctx).GetContinueAsNewSuggested() }); err != nil {
		return err
	}
	if err := workflow.Await(ctx, func() bool { return workflow.AllHandlersFinished(ctx) }); err != nil {
		return err
	}
	return workflow.NewContinueAsNewError(ctx, LocationWorkflow, LocationInput{Holder: holder})
}

// placementReleaseTimeout bounds the control activity that gives a failed restore's placement back.
const placementReleaseTimeout = time.Minute

// InspectInput asks a hypervisor about a volume being registered.
type InspectInput struct {
	VolumeID     string               `json:"volume_id"`
	HypervisorID string               `json:"hypervisor_id"`
	Storage      activities.VolumeRef `json:"storage"`
}

// InspectWorkflowID is the ID of one registration check.
func InspectWorkflowID(checkID string) string { return "inspect/" + checkID }

// InspectWorkflow asks the volume's hypervisor, before a panel's registration is taken, whether the location
// holds a volume it may serve (activities.Hypervisor.InspectVolume): a refusal is InvalidArgument naming
// storage, no answer within attachmentTimeout is HypervisorUnavailable.
func InspectWorkflow(ctx workflow.Context, in InspectInput) (activities.InspectResult, error) {
	actx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		TaskQueue:              activities.TaskQueue(in.HypervisorID),
		ScheduleToCloseTimeout: attachmentTimeout,
		StartToCloseTimeout:    attachmentTimeout / 2,
		RetryPolicy:            &temporal.RetryPolicy{MaximumAttempts: 2, NonRetryableErrorTypes: activities.NonRetryable},
	})
	var res activities.InspectResult
	err := workflow.ExecuteActivity(actx, activities.InspectVolumeName,
		activities.AttachmentInput{VolumeID: in.VolumeID, Volume: in.Storage}).Get(ctx, &res)
	var app *temporal.ApplicationError
	switch {
	case err == nil:
		return res, nil
	case errors.As(err, &app) && app.Type() == activities.ErrNotFound:
		return res, errInvalid("storage: no volume at that location on hypervisor %s", in.HypervisorID)
	case errors.As(err, &app) && app.Type() != "":
		return res, errInvalid("storage: hypervisor %s refused it: %s", in.HypervisorID, app.Message())
	}
	return res, userError(ErrHypervisorDown, "Hypervisor %s did not answer the registration check.", in.HypervisorID)
}
