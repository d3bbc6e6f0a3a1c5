// Package api serves Holdfast's panel-facing HTTP JSON API (docs/api.md is its contract): bearer
// tokens, owner scoping (another owner's volume is a 404 exactly like a missing one), strict JSON bodies of
// at most 1 MiB read within a deadline (strict.go), canonical paths with 404/405 answered as JSON
// (routing.go), and typed errors mapped to status codes, naming the field and nothing internal. It delegates
// every decision to the starter client, through the few methods of it that Backend names (backend.go), so
// HTTP and Go callers get the same answers; it never talks to hypervisors or storage itself. What it reads
// and writes are the types of package apiv1, the contract it shares with its clients (views.go converts).
package api

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/starter"
	"github.com/holdfast/holdfast/starter/api/apiv1"
	"github.com/holdfast/holdfast/workflows"
)

const maxBody = 1 << 20

// ErrRequestTimeout is the error type of a request whose body did not arrive within the body timeout (408).
const ErrRequestTimeout = "RequestTimeout"

// Tokens says who may call: panel tokens act for any owner; an owner token only for its owner.
type Tokens struct {
	Panel  []string
	Owners map[string]string // token → owner_id
}

// ParseOwnerTokens reads owner tokens written as "owner=token,owner=token" (HOLDFAST_OWNER_TOKENS) into
// token → owner_id. Blank input gives an empty map.
func ParseOwnerTokens(pairs string) (map[string]string, error) {
	out := map[string]string{}
	if strings.TrimSpace(pairs) == "" {
		return out, nil
	}
	for _, pair := range strings.Split(pairs, ",") {
		owner, token, ok := strings.Cut(strings.TrimSpace(pair), "=")
		if !ok || !activities.ValidID(owner) || token == "" {
			return nil, fmt.Errorf("owner tokens: want owner=token,..., got %q", pair)
		}
		out[token] = owner
	}
	return out, nil
}

// Server is the HTTP API.
type Server struct {
	backend Backend
	tokens  Tokens
	health  func(context.Context) error
	log     *slog.Logger
	mux     *http.ServeMux
	// OnRejection, when set, is told of each guard-rail rejection (metrics).
	OnRejection func(errType string)
	// BodyTimeout bounds how long a request's body may take to arrive (default BodyReadTimeout).
	BodyTimeout time.Duration
}

// New returns the API handler over backend (in production the *starter.Client). health reports whether
// Temporal is reachable (GET /healthz).
func New(backend Backend, tokens Tokens, health func(context.Context) error, log *slog.Logger) *Server {
	if log == nil {
		log = slog.Default()
	}
	s := &Server{backend: backend, tokens: tokens, health: health, log: log, mux: http.NewServeMux()}
	s.mux.HandleFunc("GET /healthz", s.healthz)
	s.mux.HandleFunc("PUT /v1/volumes/{volume_id}", s.auth(s.putVolume))
	s.mux.HandleFunc("GET /v1/volumes/{volume_id}", s.auth(s.getVolume))
	s.mux.HandleFunc("DELETE /v1/volumes/{volume_id}", s.auth(s.deleteVolume))
	s.mux.HandleFunc("POST /v1/volumes/{volume_id}/snapshots", s.auth(s.postSnapshot))
	s.mux.HandleFunc("POST /v1/volumes/{volume_id}/backups", s.auth(s.postBackup))
	s.mux.HandleFunc("POST /v1/volumes/{volume_id}/restore", s.auth(s.postRestore))
	s.mux.HandleFunc("POST /v1/volumes/{volume_id}/abort", s.auth(s.postAbort))
	s.mux.HandleFunc("DELETE /v1/volumes/{volume_id}/snapshots/{snapshot_id}", s.auth(s.deleteSnapshot))
	s.mux.HandleFunc("DELETE /v1/volumes/{volume_id}/backups/{backup_id}", s.auth(s.deleteBackup))
	s.mux.HandleFunc("GET /v1/operations/{operation_id}", s.auth(s.getOperation))
	s.mux.HandleFunc("PUT /v1/policies/{policy_id}", s.auth(s.putPolicy))
	s.mux.HandleFunc("PUT /v1/volumes/{volume_id}/policy", s.auth(s.putVolumePolicy))
	return s
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.limitBodyTime(w, r)
	s.route(w, r)
}

// caller is who a request acts for: ownerID "" means a panel token (any owner).
type caller struct{ ownerID string }

type handler func(w http.ResponseWriter, r *http.Request, c caller)

func (s *Server) auth(h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		token = strings.TrimSpace(token)
		if !ok || token == "" {
			writeError(w, http.StatusUnauthorized, "Unauthorized", "Missing bearer token.")
			return
		}
		c, ok := s.lookup(token)
		if !ok {
			writeError(w, http.StatusUnauthorized, "Unauthorized", "Unknown token.")
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		h(w, r, c)
	}
}

// lookup compares in constant time so token bytes do not leak through timing.
func (s *Server) lookup(token string) (caller, bool) {
	found, c := false, caller{}
	for _, p := range s.tokens.Panel {
		if subtle.ConstantTimeCompare([]byte(p), []byte(token)) == 1 {
			found = true
		}
	}
	for t, owner := range s.tokens.Owners {
		if subtle.ConstantTimeCompare([]byte(t), []byte(token)) == 1 && !found {
			found, c = true, caller{ownerID: owner}
		}
	}
	return c, found
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	if s.health != nil {
		if err := s.health(ctx); err != nil {
			// Anyone may ask: the error (addresses, ports) goes to the log only.
			s.log.Warn("health check: Temporal unreachable", "error", err)
			writeJSON(w, http.StatusServiceUnavailable, apiv1.Health{Status: "unavailable",
				Error: "Temporal is not reachable from the API."})
			return
		}
	}
	writeJSON(w, http.StatusOK, apiv1.Health{Status: "ok"})
}

// ---- volumes ----

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

// ---- operations ----

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
	s.request(w, r, v.Spec.VolumeID, workflows.OperationRequest{Kind: kind, Name: b.Name})
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
	s.request(w, r, v.Spec.VolumeID, req)
}

func (s *Server) request(w http.ResponseWriter, r *http.Request, volumeID string, req workflows.OperationRequest) {
	op, err := s.backend.Request(r.Context(), volumeID, req)
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

// ---- policies ----

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

// ---- plumbing ----

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
	if (e.Type == workflows.ErrCooldown || e.Type == starter.ErrUnavailable) && e.RetryAfter > 0 {
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
