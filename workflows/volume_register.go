package workflows

import (
	"path"
	"strings"
	"time"

	"go.temporal.io/sdk/workflow"

	"github.com/holdfast/holdfast/activities"
)

func (v *volume) validateRegister(ctx workflow.Context, spec VolumeSpec) error {
	if spec.VolumeID != v.volumeID {
		return errInvalid("volume_id: %q does not match workflow volume %q", spec.VolumeID, v.volumeID)
	}
	if err := ValidateSpec(spec); err != nil {
		return err
	}
	if err := v.checkReservation(ctx, spec); err != nil {
		return err
	}
	if err := v.checkKept(spec); err != nil {
		return err
	}
	if v.st.Active != nil {
		return errVolumeBusy(v.st.Active.Kind)
	}
	if v.st.Registered && v.st.Spec.Hydrating != "" && spec.Hydrating != v.st.Spec.Hydrating {
		return errVolumeBusy(KindRestore) // only its instant restore registers it (again) while it hydrates
	}
	return nil
}

// ValidateSpec checks a volume spec's fields; the error names the field.
func ValidateSpec(spec VolumeSpec) error {
	switch {
	case !activities.ValidID(spec.VolumeID):
		return errInvalid("volume_id: must match %s", activities.IDPattern)
	case strings.TrimSpace(spec.Name) == "" || len(spec.Name) > maxNameLength:
		return errInvalid("name: must be 1 to %d characters", maxNameLength)
	case !activities.ValidID(spec.OwnerID):
		return errInvalid("owner_id: must match %s", activities.IDPattern)
	case !activities.ValidID(spec.HypervisorID):
		return errInvalid("hypervisor_id: must match %s", activities.IDPattern)
	case spec.Plan.PlanID == "":
		return errInvalid("plan: is required")
	case spec.Plan.MaxSnapshots < 0 || spec.Plan.MaxBackups < 0:
		return errInvalid("plan: caps must not be negative")
	case spec.OwnerLimit < 1:
		return errInvalid("owner_limit: must be at least 1")
	case spec.Cooldown < 0:
		return errInvalid("cooldown: must not be negative")
	case spec.Deadline < time.Minute:
		return errInvalid("deadline: must be at least 1m")
	}
	if spec.SizeBytes < 0 {
		return errInvalid("size_bytes: must not be negative")
	}
	if spec.Hydrating != "" && spec.Hydrating != spec.Storage.CreatedBy {
		return errInvalid("hydrating: only the restore that created the volume hydrates it")
	}
	if spec.Storage.CreatedBy != "" && !activities.ValidID(spec.Storage.CreatedBy) {
		return errInvalid("storage.created_by: must match %s", activities.IDPattern)
	}
	switch s := spec.Storage; s.Type {
	case activities.VolumeFile:
		// The placement rules (inside a volume root) are the client's, against the config; these hold for
		// any spec, wherever it came from.
		if !path.IsAbs(s.Path) || path.Clean(s.Path) != s.Path || strings.ContainsRune(s.Path, 0) {
			return errInvalid("storage.path: must be a clean absolute path")
		}
		if s.Format != "" && s.Format != "raw" && s.Format != "qcow2" {
			return errInvalid("storage.format: must be raw or qcow2")
		}
	case activities.VolumeRBD:
		if !activities.ValidID(s.Pool) || !activities.ValidID(s.Image) {
			return errInvalid("storage: rbd pool and image must match %s", activities.IDPattern)
		}
	default:
		return errInvalid("storage.type: must be file or rbd")
	}
	return nil
}

func (v *volume) register(ctx workflow.Context, spec VolumeSpec) (VolumeState, error) {
	if err := v.validateRegister(ctx, spec); err != nil {
		return VolumeState{}, err
	}
	if spec.SizeBytes == 0 {
		spec.SizeBytes = v.st.Spec.SizeBytes
	}
	v.st.Spec = spec
	v.st.Registered = true
	v.st.Reservation, v.st.ReservedUntil = "", nil
	v.st.BackupsKeptUntil = nil // registered again by its owner: its kept backups are its own again
	v.upsertIdentity(ctx)
	return v.st, nil
}

func (v *volume) upsertIdentity(ctx workflow.Context) {
	err := workflow.UpsertTypedSearchAttributes(ctx, saVolume.ValueSet(v.volumeID),
		saOwner.ValueSet(v.st.Spec.OwnerID), saHypervisor.ValueSet(v.st.Spec.HypervisorID))
	if err != nil {
		workflow.GetLogger(ctx).Warn("search attributes not updated", "volume_id", v.volumeID, "error", err)
	}
}
