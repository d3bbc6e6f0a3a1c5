package api

import (
	"fmt"
	"net/http"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/starter"
	"github.com/holdfast/holdfast/starter/api/apiv1"
	"github.com/holdfast/holdfast/workflows"
)

func (s *Server) postSnapshot(w http.ResponseWriter, r *http.Request, c caller) {
	s.create(w, r, c, workflows.KindSnapshot)
}

func (s *Server) postBackup(w http.ResponseWriter, r *http.Request, c caller) {
	s.create(w, r, c, workflows.KindBackup)
}

func (s *Server) create(w http.ResponseWriter, r *http.Request, c caller, kind workflows.Kind) {
	var b apiv1.CreateItemRequest
	if !decode(w, r, &b, true) {
		return
	}
	v, ok := s.volume(w, r, c)
	if !ok {
		return
	}
	s.request(w, r, v, workflows.OperationRequest{Kind: kind, Name: b.Name})
}

func (s *Server) postRestore(w http.ResponseWriter, r *http.Request, c caller) {
	var b apiv1.RestoreRequest
	if !decode(w, r, &b, false) {
		return
	}
	if msg := restoreRefusal(b, c); msg != "" {
		writeError(w, http.StatusBadRequest, workflows.ErrInvalidArgument, msg)
		return
	}
	v, ok := s.volume(w, r, c)
	if !ok {
		return
	}
	op, err := s.backend.Restore(r.Context(), v.Spec.VolumeID, restoreRequestOf(b))
	s.accepted(w, op, err)
}

// restoreRefusal checks what the caller may put in a restore, before anything is looked up. An owner token
// never places a volume: the new volume's ID, storage, hypervisor and plan are Holdfast's and the provider's
// (the new volume inherits the source's owner, plan and hypervisor; the starter client picks its ID), so
// each is refused by name instead of being honoured or silently dropped. A new_volume_id is checked here so
// that a bad one is reported as new_volume_id, not as the volume_id it would become.
func restoreRefusal(b apiv1.RestoreRequest, c caller) string {
	if c.ownerID != "" {
		switch {
		case b.NewVolumeID != "":
			return "new_volume_id: chosen by Holdfast for owner tokens; omit it"
		case b.Storage != nil:
			return "storage: chosen by Holdfast for owner tokens; omit it"
		case b.HypervisorID != "":
			return "hypervisor_id: the new volume stays on the source's hypervisor for owner tokens; omit it"
		case b.Plan != "":
			return "plan: the new volume keeps the source's plan for owner tokens; omit it"
		}
	}
	if b.NewVolumeID != "" && !activities.ValidID(b.NewVolumeID) {
		return "new_volume_id: must match " + activities.IDPattern
	}
	return ""
}

func (s *Server) deleteSnapshot(w http.ResponseWriter, r *http.Request, c caller) {
	s.deleteItem(w, r, c, "snapshot_id")
}

func (s *Server) deleteBackup(w http.ResponseWriter, r *http.Request, c caller) {
	s.deleteItem(w, r, c, "backup_id")
}

func (s *Server) deleteItem(w http.ResponseWriter, r *http.Request, c caller, field string) {
	itemID, ok := pathID(w, r, field)
	if !ok {
		return
	}
	v, ok := s.volume(w, r, c)
	if !ok {
		return
	}
	req := workflows.OperationRequest{Kind: workflows.KindDelete, Confirm: r.URL.Query().Get("confirm")}
	if field == "snapshot_id" {
		req.SnapshotID = itemID
	} else {
		req.BackupID = itemID
	}
	s.request(w, r, v, req)
}

// request sends req to the volume v, as just read to check its owner (the request's first checks use that
// read: no second one).
func (s *Server) request(w http.ResponseWriter, r *http.Request, v *starter.Volume, req workflows.OperationRequest) {
	op, err := s.backend.RequestRead(r.Context(), v, req)
	s.accepted(w, op, err)
}

func (s *Server) accepted(w http.ResponseWriter, op *workflows.Operation, err error) {
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, acceptedView(op))
}

func (s *Server) postAbort(w http.ResponseWriter, r *http.Request, c caller) {
	v, ok := s.volume(w, r, c)
	if !ok {
		return
	}
	reason := "aborted through the API"
	if c.ownerID != "" {
		reason += " by owner " + c.ownerID
	}
	op, err := s.backend.Abort(r.Context(), v.Spec.VolumeID, reason)
	s.accepted(w, op, err)
}

func (s *Server) getOperation(w http.ResponseWriter, r *http.Request, c caller) {
	operationID, ok := pathID(w, r, "operation_id")
	if !ok {
		return
	}
	op, err := s.backend.Operation(r.Context(), operationID)
	if err == nil && c.ownerID != "" {
		var v *starter.Volume
		if v, err = s.backend.Volume(r.Context(), op.VolumeID); err == nil && v.Spec.OwnerID != c.ownerID {
			err = &starter.Error{Type: workflows.ErrNotFound, Message: fmt.Sprintf("Operation %s not found.", operationID)}
		}
	}
	if err != nil {
		s.fail(w, err)
		return
	}
	if c.ownerID != "" {
		op = forOwner(op)
	}
	writeJSON(w, http.StatusOK, operationView(op))
}
