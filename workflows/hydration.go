package workflows

import (
	"go.temporal.io/sdk/workflow"

	"github.com/holdfast/holdfast/activities"
)

// An instant restore registers its new volume as soon as the volume is usable, marked Hydrating with the
// restore's operation ID, and ends that mark when the hydration is done — or unregisters the volume when
// the restore fails or is aborted (its compensation deletes the volume next). Only that restore may do
// either; the panel cannot register the volume over it meanwhile.

// UpdateHydration ends a new volume's hydration (HydrationEnd).
const UpdateHydration = "hydration"

// EndHydrationActivity is the control activity (task queue TaskQueue) that sends UpdateHydration.
const EndHydrationActivity = "EndHydration"

// HydrationEnd ends the hydration of VolumeID by restore OperationID: done, or Abandon (unregister it).
type HydrationEnd struct {
	VolumeID    string `json:"volume_id"`
	OperationID string `json:"operation_id"`
	Abandon     bool   `json:"abandon,omitempty"`
}

func (v *volume) validateHydration(e HydrationEnd) error {
	switch {
	case !activities.ValidID(e.OperationID):
		return errInvalid("operation_id: must match %s", activities.IDPattern)
	case v.st.Spec.Hydrating == e.OperationID && v.st.Registered:
		return nil
	case e.Abandon && (!v.st.Registered || v.st.Spec.Storage.CreatedBy != e.OperationID):
		return nil // never registered by it, or already given up: nothing of it to undo
	case !e.Abandon && v.st.Registered && v.st.Spec.Hydrating == "" && v.st.Spec.Storage.CreatedBy == e.OperationID:
		return nil // already done
	}
	return errInvalid("operation_id: volume %s is not hydrated by %s", v.volumeID, e.OperationID)
}

func (v *volume) endHydration(ctx workflow.Context, e HydrationEnd) error {
	if err := v.validateHydration(e); err != nil {
		return err
	}
	if v.st.Spec.Hydrating != e.OperationID || !v.st.Registered {
		return nil
	}
	v.st.Spec.Hydrating = ""
	if e.Abandon {
		v.st.Registered = false
	}
	workflow.GetLogger(ctx).Info("hydration ended", "volume_id", v.volumeID, "operation_id", e.OperationID,
		"abandoned", e.Abandon)
	return nil
}
