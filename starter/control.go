package starter

import (
	"context"
	"errors"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/holdfast/holdfast/workflows"
)

// ControlActivities are the control plane's own activities (task queue workflows.TaskQueue): what
// workflows need done through the Temporal client itself.
type ControlActivities struct {
	Client *Client
}

// RegisterVolume registers the volume a restore created (activity workflows.RegisterVolumeActivity).
// Idempotent: registering the same spec again is an update to the same state.
func (a *ControlActivities) RegisterVolume(ctx context.Context, spec workflows.VolumeSpec) error {
	_, err := a.Client.register(ctx, spec)
	return finalIfInvalid(err)
}

// EndHydration ends an instantly restored volume's hydration, done or abandoned (activity
// workflows.EndHydrationActivity). Idempotent; a volume workflow that does not exist has nothing to end.
func (a *ControlActivities) EndHydration(ctx context.Context, e workflows.HydrationEnd) error {
	err := a.Client.update(ctx, workflows.VolumeWorkflowID(e.VolumeID), workflows.UpdateHydration, "", e, nil)
	if isNotFound(err) {
		return nil
	}
	return finalIfInvalid(typed(err))
}

// finalIfInvalid makes an InvalidArgument answer non-retryable: the same request would be refused again.
func finalIfInvalid(err error) error {
	var e *Error
	if errors.As(err, &e) && e.Type == workflows.ErrInvalidArgument {
		return temporal.NewNonRetryableApplicationError(e.Message, e.Type, err)
	}
	return err
}

// ReleasePlacement gives back the ID and location a failed restore to a new volume reserved (activity
// workflows.ReleasePlacementActivity). Idempotent; a volume the restore did register keeps both.
func (a *ControlActivities) ReleasePlacement(ctx context.Context, in workflows.ReleasePlacementInput) error {
	return a.Client.releasePlacement(ctx, in)
}

// AcquirePermit delivers a volume's permit request to its owner's workflow, starting that workflow if it does
// not run (activity workflows.AcquirePermitActivity). The owner answers the volume by signal. Sending the
// same request again is harmless: a held lease is granted again.
func (a *ControlActivities) AcquirePermit(ctx context.Context, in workflows.AcquirePermitInput) error {
	_, err := a.Client.temporal.SignalWithStartWorkflow(ctx, workflows.OwnerWorkflowID(in.OwnerID),
		workflows.SignalPermitRequest, in.Request, client.StartWorkflowOptions{
			ID: workflows.OwnerWorkflowID(in.OwnerID), TaskQueue: workflows.TaskQueue,
		}, workflows.OwnerWorkflow, workflows.OwnerInput{OwnerID: in.OwnerID})
	return err
}

// ControlActivities returns the control activities over this client, for the control worker to host
// (workers.NewControl).
func (c *Client) ControlActivities() *ControlActivities { return &ControlActivities{Client: c} }
