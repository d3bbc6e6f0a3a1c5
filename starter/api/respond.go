package api

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/starter"
	"github.com/holdfast/holdfast/starter/api/apiv1"
	"github.com/holdfast/holdfast/workflows"
)

func pathID(w http.ResponseWriter, r *http.Request, field string) (string, bool) {
	id := r.PathValue(field)
	if !activities.ValidID(id) {
		writeError(w, http.StatusBadRequest, workflows.ErrInvalidArgument, field+": must match "+activities.IDPattern)
		return "", false
	}
	return id, true
}

// StatusOf maps an error type to its HTTP status (api.md's table).
func StatusOf(errType string) int {
	switch errType {
	case workflows.ErrVolumeBusy, workflows.ErrSnapshotLimit, workflows.ErrBackupLimit, workflows.ErrAttachedRunning,
		workflows.ErrNoBackupStorage, workflows.ErrNoActiveOperation, workflows.ErrAborted, workflows.ErrNotAttached:
		return http.StatusConflict
	case workflows.ErrCooldown, workflows.ErrOwnerLimit:
		return http.StatusTooManyRequests
	case workflows.ErrConfirmationMismatch, workflows.ErrInvalidArgument:
		return http.StatusBadRequest
	case workflows.ErrNotFound:
		return http.StatusNotFound
	case ErrRequestTimeout:
		return http.StatusRequestTimeout
	case ErrMethodNotAllowed:
		return http.StatusMethodNotAllowed
	case workflows.ErrHypervisorDown, starter.ErrUnavailable:
		return http.StatusServiceUnavailable
	default:
		return http.StatusInternalServerError
	}
}

func (s *Server) fail(w http.ResponseWriter, err error) {
	var e *starter.Error
	if !errors.As(err, &e) {
		s.log.Error("request failed", "error", err)
		writeError(w, http.StatusInternalServerError, "Internal", "Internal error; see the API's logs.")
		return
	}
	status := StatusOf(e.Type)
	switch {
	case status == http.StatusInternalServerError:
		s.log.Error("request failed", "type", e.Type, "error", e.Message)
	case e.Type == starter.ErrUnavailable: // not a guard rail: Temporal or the workers are overloaded
		s.log.Warn("control plane too busy to answer in time; answered 503")
	case s.OnRejection != nil:
		s.OnRejection(e.Type)
	}
	if e.RetryAfter > 0 { // Cooldown, OwnerLimit, Unavailable
		w.Header().Set("Retry-After", strconv.FormatInt(e.RetryAfter, 10))
	}
	writeError(w, status, e.Type, e.Message)
}

func writeError(w http.ResponseWriter, status int, errType, message string) {
	writeJSON(w, status, apiv1.ErrorResponse{Error: apiv1.Error{Type: errType, Message: message}})
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}
