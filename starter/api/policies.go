package api

import (
	"encoding/json"
	"net/http"
	"strings"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/starter/api/apiv1"
	"github.com/holdfast/holdfast/workflows"
)

// putPolicy creates or replaces an API-managed policy (panel token only: policies are the provider's).
func (s *Server) putPolicy(w http.ResponseWriter, r *http.Request, c caller) {
	policyID, ok := pathID(w, r, "policy_id")
	if !ok {
		return
	}
	if !panelOnly(w, c, "define policies") {
		return
	}
	var b apiv1.Policy
	if !decode(w, r, &b, false) {
		return
	}
	if b.PolicyID != "" && b.PolicyID != policyID {
		writeError(w, http.StatusBadRequest, workflows.ErrInvalidArgument, "policy_id: body and path disagree")
		return
	}
	b.PolicyID = policyID
	stored, err := s.backend.PutPolicy(r.Context(), policyOf(b))
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, policyView(stored))
}

// putVolumePolicy attaches a volume to a policy ({"policy_id": "..."}) or detaches it ({"policy_id": null}).
// An owner may do it for its own volumes, like any other volume request.
func (s *Server) putVolumePolicy(w http.ResponseWriter, r *http.Request, c caller) {
	var b apiv1.AttachPolicyRequest
	if !decode(w, r, &b, false) {
		return
	}
	var policyID string
	switch raw := strings.TrimSpace(string(b.PolicyID)); {
	case raw == "":
		writeError(w, http.StatusBadRequest, workflows.ErrInvalidArgument,
			"policy_id: is required (null detaches the volume from its policy)")
		return
	case raw == "null":
	default:
		if err := json.Unmarshal(b.PolicyID, &policyID); err != nil || !activities.ValidID(policyID) {
			writeError(w, http.StatusBadRequest, workflows.ErrInvalidArgument, "policy_id: must match "+activities.IDPattern)
			return
		}
	}
	v, ok := s.volume(w, r, c)
	if !ok {
		return
	}
	a, err := s.backend.AttachPolicy(r.Context(), v.Spec.VolumeID, policyID)
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, attachmentView(a))
}
