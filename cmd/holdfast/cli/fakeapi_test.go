package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/holdfast/holdfast/starter/api/apiv1"
)

// fakeAPI serves the parts of docs/api.md the CLI calls, with the contract's auth, strict JSON,
// status codes, error bodies and exact messages, and a little state (active operation, cooldown, items)
// so that guard rails come from the state rather than from a canned answer.
type fakeAPI struct {
	t     *testing.T
	token string

	mu         sync.Mutex
	volumes    map[string]*fakeVolume
	operations map[string]*fakeOperation
	requests   []recordedRequest
	nextOp     int
	// scripts, by kind, are the states an operation the fake starts will walk through (default: it is
	// done at the first poll).
	scripts map[string][]map[string]any
	// failPolls makes the next n operation polls answer 503, as an API restarting would.
	failPolls int
}

type fakeVolume struct {
	doc      map[string]any // everything but the live fields below
	name     string
	active   *fakeOperation
	cooldown int
	items    map[string]string // snapshot or backup ID → name
}

// fakeOperation answers polls with its states in order, repeating the last one.
type fakeOperation struct {
	id, volumeID, kind, itemID string
	states                     []map[string]any
	polls                      int
}

type recordedRequest struct {
	Method, Path, RawQuery, Auth, ContentType string
	Body                                      string
}

func newFakeAPI(t *testing.T) (*fakeAPI, *httptest.Server) {
	f := &fakeAPI{t: t, token: "tok-panel", volumes: map[string]*fakeVolume{}, operations: map[string]*fakeOperation{},
		scripts: map[string][]map[string]any{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/volumes/{volume_id}", f.getVolume)
	mux.HandleFunc("POST /v1/volumes/{volume_id}/snapshots", f.create("snapshot"))
	mux.HandleFunc("POST /v1/volumes/{volume_id}/backups", f.create("backup"))
	mux.HandleFunc("POST /v1/volumes/{volume_id}/restore", f.restore)
	mux.HandleFunc("DELETE /v1/volumes/{volume_id}/snapshots/{item_id}", f.delete)
	mux.HandleFunc("DELETE /v1/volumes/{volume_id}/backups/{item_id}", f.delete)
	mux.HandleFunc("POST /v1/volumes/{volume_id}/abort", f.abort)
	mux.HandleFunc("GET /v1/operations/{operation_id}", f.getOperation)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20+1))
		f.mu.Lock()
		f.requests = append(f.requests, recordedRequest{Method: r.Method, Path: r.URL.EscapedPath(), RawQuery: r.URL.RawQuery,
			Auth: r.Header.Get("Authorization"), ContentType: r.Header.Get("Content-Type"), Body: string(body)})
		f.mu.Unlock()
		if r.Header.Get("Authorization") != "Bearer "+f.token {
			writeError(w, http.StatusUnauthorized, "Unauthorized", "Missing or unknown token.")
			return
		}
		if len(body) > 1<<20 {
			writeError(w, http.StatusBadRequest, "InvalidArgument", "body: larger than 1 MiB")
			return
		}
		r.Body = io.NopCloser(strings.NewReader(string(body)))
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return f, srv
}

// addVolume registers a volume like the dev mode's sample.
func (f *fakeAPI) addVolume(volumeID, name string) *fakeVolume {
	v := &fakeVolume{name: name, items: map[string]string{}, doc: map[string]any{
		"volume_id": volumeID, "name": name, "owner_id": "demo", "hypervisor_id": "local", "plan": "standard",
		"storage":    map[string]any{"type": "file", "path": "/var/lib/holdfast/volumes/" + volumeID + ".qcow2"},
		"size_bytes": 268435456, "snapshots": []any{}, "backups": []any{},
	}}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.volumes[volumeID] = v
	return v
}

// addOperation scripts the states GET /v1/operations/{id} walks through.
func (f *fakeAPI) addOperation(id, volumeID, kind, itemID string, states ...map[string]any) *fakeOperation {
	op := &fakeOperation{id: id, volumeID: volumeID, kind: kind, itemID: itemID, states: states}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.operations[id] = op
	return op
}

func (f *fakeAPI) recorded() []recordedRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]recordedRequest(nil), f.requests...)
}

func writeJSONResponse(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, typ, msg string) {
	writeJSONResponse(w, status, map[string]any{"error": map[string]any{"type": typ, "message": msg}})
}

// strictDecode is the API's body rule: unknown fields and malformed JSON are 400.
func strictDecode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, "InvalidArgument", "body: "+err.Error())
		return false
	}
	return true
}

// volume returns the volume or answers 404; the caller holds f.mu.
func (f *fakeAPI) volume(w http.ResponseWriter, r *http.Request) *fakeVolume {
	v := f.volumes[r.PathValue("volume_id")]
	if v == nil {
		writeError(w, http.StatusNotFound, "NotFound", fmt.Sprintf("Volume %s not found.", r.PathValue("volume_id")))
	}
	return v
}

// guard applies the guard rails every operation shares; the caller holds f.mu.
func guard(w http.ResponseWriter, v *fakeVolume) bool {
	if v.active != nil {
		writeError(w, http.StatusConflict, "VolumeBusy", "Volume is busy with operation: "+v.active.kind)
		return false
	}
	if v.cooldown > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(v.cooldown))
		writeError(w, http.StatusTooManyRequests, "Cooldown",
			fmt.Sprintf("Volume is in cooldown. Try again in %d seconds.", v.cooldown))
		return false
	}
	return true
}

// accept starts an operation and answers 202; the caller holds f.mu.
func (f *fakeAPI) accept(w http.ResponseWriter, volumeID string, v *fakeVolume, kind, itemID string) {
	f.nextOp++
	id := fmt.Sprintf("op-%d", f.nextOp)
	op := &fakeOperation{id: id, volumeID: volumeID, kind: kind, itemID: itemID}
	op.states = []map[string]any{{"status": "available"}}
	if kind == "restore" || kind == "delete" {
		op.states = []map[string]any{{"status": "completed"}}
	}
	if script, ok := f.scripts[kind]; ok {
		op.states = script
	}
	f.operations[id] = op
	v.active = op
	writeJSONResponse(w, http.StatusAccepted, map[string]any{"operation_id": id, "volume_id": volumeID, "kind": kind,
		"item_id": itemID, "status": "pending"})
}

func (f *fakeAPI) getVolume(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v := f.volume(w, r)
	if v == nil {
		return
	}
	doc := map[string]any{}
	for k, val := range v.doc {
		doc[k] = val
	}
	doc["cooldown_remaining_seconds"] = v.cooldown
	doc["active_operation"] = nil
	if op := v.active; op != nil {
		doc["active_operation"] = op.state(0)
	}
	writeJSONResponse(w, http.StatusOK, doc)
}

func (f *fakeAPI) create(kind string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req apiv1.CreateItemRequest
		if !strictDecode(w, r, &req) {
			return
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		v := f.volume(w, r)
		if v == nil || !guard(w, v) {
			return
		}
		itemID := fmt.Sprintf("%s-%d", kind[:4], f.nextOp+1)
		v.items[itemID] = req.Name
		f.accept(w, r.PathValue("volume_id"), v, kind, itemID)
	}
}

func (f *fakeAPI) restore(w http.ResponseWriter, r *http.Request) {
	var req apiv1.RestoreRequest
	if !strictDecode(w, r, &req) {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	v := f.volume(w, r)
	if v == nil {
		return
	}
	itemID := req.SnapshotID + req.BackupID
	if _, ok := v.items[itemID]; !ok || (req.SnapshotID != "") == (req.BackupID != "") {
		writeError(w, http.StatusNotFound, "NotFound", fmt.Sprintf("Item %s not found.", itemID))
		return
	}
	switch req.Mode {
	case "in_place":
		if req.Confirm != v.name {
			writeError(w, http.StatusBadRequest, "ConfirmationMismatch",
				fmt.Sprintf("confirm: type the volume's name %q to restore in place", v.name))
			return
		}
	case "new_volume":
		if req.NewVolumeID == "" {
			writeError(w, http.StatusBadRequest, "InvalidArgument", "new_volume_id: is required for mode new_volume")
			return
		}
	default:
		writeError(w, http.StatusBadRequest, "InvalidArgument", "mode: must be in_place or new_volume")
		return
	}
	if !guard(w, v) {
		return
	}
	f.accept(w, r.PathValue("volume_id"), v, "restore", itemID)
}

func (f *fakeAPI) delete(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v := f.volume(w, r)
	if v == nil {
		return
	}
	itemID := r.PathValue("item_id")
	name, ok := v.items[itemID]
	if !ok {
		writeError(w, http.StatusNotFound, "NotFound", fmt.Sprintf("Item %s not found.", itemID))
		return
	}
	if r.URL.Query().Get("confirm") != name {
		writeError(w, http.StatusBadRequest, "ConfirmationMismatch", fmt.Sprintf("confirm: type the name %q to delete", name))
		return
	}
	if !guard(w, v) {
		return
	}
	f.accept(w, r.PathValue("volume_id"), v, "delete", itemID)
}

func (f *fakeAPI) abort(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v := f.volume(w, r)
	if v == nil {
		return
	}
	op := v.active
	if op == nil {
		writeError(w, http.StatusConflict, "NoActiveOperation", "Volume has no active operation.")
		return
	}
	op.states = []map[string]any{{"status": "aborted", "error": map[string]any{"type": "Aborted", "message": "aborted by request"}}}
	writeJSONResponse(w, http.StatusAccepted, map[string]any{"operation_id": op.id, "volume_id": op.volumeID,
		"kind": op.kind, "item_id": op.itemID, "status": "pending"})
}

func (f *fakeAPI) getOperation(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failPolls > 0 {
		f.failPolls--
		writeError(w, http.StatusServiceUnavailable, "Unavailable", "Temporal is unreachable.")
		return
	}
	op := f.operations[r.PathValue("operation_id")]
	if op == nil {
		writeError(w, http.StatusNotFound, "NotFound", fmt.Sprintf("Operation %s not found.", r.PathValue("operation_id")))
		return
	}
	doc := op.state(op.polls)
	op.polls++
	writeJSONResponse(w, http.StatusOK, doc)
}

// state is the operation document at poll n.
func (op *fakeOperation) state(n int) map[string]any {
	doc := map[string]any{"operation_id": op.id, "volume_id": op.volumeID, "kind": op.kind, "item_id": op.itemID,
		"status": "pending", "progress": nil, "error": nil, "started_at": "2026-01-02T03:04:05Z", "finished_at": nil}
	if len(op.states) > 0 {
		for k, v := range op.states[min(n, len(op.states)-1)] {
			doc[k] = v
		}
	}
	return doc
}
