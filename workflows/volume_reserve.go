package workflows

import (
	"go.temporal.io/sdk/workflow"

	"github.com/holdfast/holdfast/activities"
)

func (v *volume) validateReserve(ctx workflow.Context, r Reservation) error {
	switch {
	case !activities.ValidID(r.OperationID):
		return errInvalid("operation_id: must match %s", activities.IDPattern)
	case v.st.Registered:
		return errInvalid("new_volume_id: volume %s already exists", v.volumeID)
	case v.st.BackupsKeptUntil != nil:
		return errInvalid("new_volume_id: volume %s was deregistered and its backups are kept", v.volumeID)
	case v.reservedBy(ctx) != "" && v.st.Reservation != r.OperationID:
		return errInvalid("new_volume_id: volume %s is being created by another restore", v.volumeID)
	}
	return nil
}

// reservedBy is the restore holding the ID ("" when none, or when its reservation lapsed).
func (v *volume) reservedBy(ctx workflow.Context) string {
	if v.st.ReservedUntil != nil && !workflow.Now(ctx).Before(*v.st.ReservedUntil) {
		return ""
	}
	return v.st.Reservation
}

// reserve holds the (unregistered) volume ID for the restore that will create the volume: registration then
// accepts only that restore's registration, and a second restore to the same ID is refused at once.
func (v *volume) reserve(ctx workflow.Context, r Reservation) error {
	if err := v.validateReserve(ctx, r); err != nil {
		return err
	}
	v.st.Reservation, v.st.ReservedUntil = r.OperationID, nil
	if r.TTL > 0 {
		until := workflow.Now(ctx).Add(r.TTL)
		v.st.ReservedUntil = &until
	}
	return nil
}

// unreserve gives the ID back (the restore failed or was refused); only its holder can.
func (v *volume) unreserve(ctx workflow.Context, r Reservation) error {
	if v.st.Reservation == r.OperationID {
		v.st.Reservation, v.st.ReservedUntil = "", nil
	}
	return nil
}

// checkReservation is registration's rule: a restore (its spec's storage names the creating operation) may
// register only the ID it reserved, and no one else may register an ID a restore holds.
func (v *volume) checkReservation(ctx workflow.Context, spec VolumeSpec) error {
	by, holder := spec.Storage.CreatedBy, v.reservedBy(ctx)
	switch {
	case by == "" && holder != "":
		return errInvalid("volume_id: volume %s is being created by a restore", v.volumeID)
	case by == "" || by == holder:
		return nil
	case v.st.Registered && v.st.Spec.Storage.CreatedBy == by:
		return nil // the same restore registering again (a retried activity)
	}
	return errInvalid("volume_id: volume %s was not reserved by operation %s", v.volumeID, by)
}
