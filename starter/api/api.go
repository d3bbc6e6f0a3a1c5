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
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/docs"
	"github.com/holdfast/holdfast/starter/api/apiv1"
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
	s.mux.HandleFunc("GET /v1/openapi.json", s.openAPI)
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

// openAPI serves docs/openapi.yaml as JSON, to anyone: the API's description is public (docs/api.md says what
// it holds, and it names no secret, host or owner), so a panel's tooling can read it before it has a token.
func (s *Server) openAPI(w http.ResponseWriter, _ *http.Request) {
	spec, err := docs.OpenAPIJSON()
	if err != nil { // the embedded document is checked by the tests; this is a build that skipped them
		s.log.Error("OpenAPI document does not convert to JSON", "error", err)
		writeError(w, http.StatusInternalServerError, "Internal", "Internal error; see the API's logs.")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(spec)
}
