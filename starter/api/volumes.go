package api

import (
	"fmt"
	"net/http"
	"time"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/starter"
	"github.com/holdfast/holdfast/starter/api/apiv1"
	"github.com/holdfast/holdfast/workflows"
)

// panelOnly answers 403 to an owner token for what only the provider may do, and says whether to go on.
func panelOnly(w http.ResponseWriter, c caller, what string) bool {
	if c.ownerID != "" {
		writeError(w, http.StatusForbidden, "Forbidden", "Only a panel token may "+what+".")
		return false
	}
	return true
}

func (s *Server) putVolume(w http.ResponseWriter, r *http.Request, c caller) {
	volumeID, ok := pathID(w, r, "volume_id")
	if !ok {
		return
	}
	if !panelOnly(w, c, "register volumes") {
		return
	}
	var b apiv1.RegisterVolumeRequest
	if !decode(w, r, &b, false) {
		return
	}
	if b.VolumeID != "" && b.VolumeID != volumeID {
		writeError(w, http.StatusBadRequest, workflows.ErrInvalidArgument, "volume_id: body and path disagree")
		return
	}
	for field, v := range map[string]string{"owner_id": b.OwnerID, "hypervisor_id": b.HypervisorID} {
		if !activities.ValidID(v) {
			writeError(w, http.StatusBadRequest, workflows.ErrInvalidArgument, field+": must match "+activities.IDPattern)
			return
		}
	}
	if b.Storage.Type == activities.VolumeFile && b.Storage.Path == "" {
		writeError(w, http.StatusBadRequest, workflows.ErrInvalidArgument, "storage.path: is required for type file")
		return
	}
	b.VolumeID = volumeID
	v, err := s.backend.RegisterVolume(r.Context(), registerRequestOf(b))
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, volumeView(v))
}

// volume loads a volume the caller may see; others' volumes are NotFound, exactly like missing ones.
func (s *Server) volume(w http.ResponseWriter, r *http.Request, c caller) (*starter.Volume, bool) {
	volumeID, ok := pathID(w, r, "volume_id")
	if !ok {
		return nil, false
	}
	v, err := s.backend.Volume(r.Context(), volumeID)
	if err == nil && c.ownerID != "" && v.Spec.OwnerID != c.ownerID {
		err = &starter.Error{Type: workflows.ErrNotFound, Message: fmt.Sprintf("Volume %s not found.", volumeID)}
	}
	if err != nil {
		s.fail(w, err)
		return nil, false
	}
	return v, true
}

func (s *Server) getVolume(w http.ResponseWriter, r *http.Request, c caller) {
	if v, ok := s.volume(w, r, c); ok {
		if c.ownerID != "" {
			v = volumeForOwner(v)
		}
		writeJSON(w, http.StatusOK, volumeView(v))
	}
}

// deleteVolume deregisters a volume (panel token only; ?confirm=<volume name>, optional
// ?keep_backups_for=<duration> such as 720h): its snapshots are deleted, its backups too unless kept for
// that long, its disk is left as it is. Refused while an operation runs.
func (s *Server) deleteVolume(w http.ResponseWriter, r *http.Request, c caller) {
	volumeID, ok := pathID(w, r, "volume_id")
	if !ok {
		return
	}
	if !panelOnly(w, c, "deregister volumes") {
		return
	}
	var keep time.Duration
	if raw := r.URL.Query().Get("keep_backups_for"); raw != "" {
		d, err := time.ParseDuration(raw)
		if err != nil || d < 0 {
			writeError(w, http.StatusBadRequest, workflows.ErrInvalidArgument,
				"keep_backups_for: must be a duration such as 720h")
			return
		}
		keep = d
	}
	op, err := s.backend.Deregister(r.Context(), volumeID, r.URL.Query().Get("confirm"), keep)
	s.accepted(w, op, err)
}
