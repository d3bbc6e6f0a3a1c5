package api_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/starter"
	"github.com/holdfast/holdfast/starter/api"
	"github.com/holdfast/holdfast/starter/api/apitest"
	"github.com/holdfast/holdfast/workflows"
)

// These tests run the handlers over fakeBackend, a few maps in memory, instead of a Temporal server: they
// pin what the API sends, to the field, and that owner scoping is the server's own doing.

var fakeNow = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// fakeBackend holds volumes and operations, answers every operation request with the next operation
// (or with refusal, when set) and records what reached it.
type fakeBackend struct {
	volumes    map[string]*starter.Volume
	operations map[string]*workflows.Operation
	refusal    error
	requests   []string // "<volume_id> <kind>" of each request that reached the backend
	nextOp     int
}

func (f *fakeBackend) Volume(_ context.Context, volumeID string) (*starter.Volume, error) {
	if v, ok := f.volumes[volumeID]; ok {
		return v, nil
	}
	return nil, &starter.Error{Type: workflows.ErrNotFound, Message: fmt.Sprintf("Volume %s not found.", volumeID)}
}

func (f *fakeBackend) Operation(_ context.Context, operationID string) (*workflows.Operation, error) {
	if op, ok := f.operations[operationID]; ok {
		return op, nil
	}
	return nil, &starter.Error{Type: workflows.ErrNotFound, Message: fmt.Sprintf("Operation %s not found.", operationID)}
}

// start records a request and answers the operation it started, or the refusal.
func (f *fakeBackend) start(volumeID string, kind workflows.Kind, itemID string) (*workflows.Operation, error) {
	f.requests = append(f.requests, volumeID+" "+string(kind))
	if f.refusal != nil {
		return nil, f.refusal
	}
	f.nextOp++
	return &workflows.Operation{OperationID: fmt.Sprintf("op-%d", 100+f.nextOp), VolumeID: volumeID, Kind: kind,
		ItemID: itemID, Status: workflows.StatusPending, StartedAt: fakeNow}, nil
}

func (f *fakeBackend) RequestRead(_ context.Context, v *starter.Volume, req workflows.OperationRequest) (
	*workflows.Operation, error) {
	return f.start(v.Spec.VolumeID, req.Kind, req.ItemID())
}

func (f *fakeBackend) Restore(_ context.Context, volumeID string, req starter.RestoreRequest) (
	*workflows.Operation, error) {
	op, err := f.start(volumeID, workflows.KindRestore, req.SnapshotID+req.BackupID)
	if err == nil && req.Mode == workflows.ModeNewVolume {
		op.NewVolumeID = req.NewVolumeID
	}
	return op, err
}

func (f *fakeBackend) Abort(_ context.Context, volumeID, _ string) (*workflows.Operation, error) {
	if v := f.volumes[volumeID]; v != nil && v.Active != nil {
		return v.Active, nil
	}
	return nil, &starter.Error{Type: workflows.ErrNoActiveOperation, Message: "Volume has no active operation."}
}

func (f *fakeBackend) Deregister(_ context.Context, volumeID, _ string, _ time.Duration) (*workflows.Operation, error) {
	return f.start(volumeID, workflows.KindDeregister, "")
}

func (f *fakeBackend) RegisterVolume(context.Context, starter.RegisterRequest) (*starter.Volume, error) {
	return nil, errors.New("fakeBackend: registration is not faked")
}

func (f *fakeBackend) PutPolicy(_ context.Context, p workflows.Policy) (*workflows.Policy, error) {
	return &p, nil
}

func (f *fakeBackend) AttachPolicy(_ context.Context, volumeID, policyID string) (*starter.PolicyAttachment, error) {
	a := &starter.PolicyAttachment{VolumeID: volumeID, PolicyID: policyID}
	if policyID != "" {
		a.ScheduleID = "policy/" + policyID + "/volume/" + volumeID
	}
	return a, nil
}

// newFakeBackend holds alice's volume v1, busy with a backup (op-2) after one that failed (op-1).
func newFakeBackend() *fakeBackend {
	failed := &workflows.Operation{OperationID: "op-1", VolumeID: "v1", Kind: workflows.KindBackup, ItemID: "bk-1",
		Status: workflows.StatusFailed, StartedAt: fakeNow, FinishedAt: ptr(fakeNow.Add(time.Minute)),
		Error: &workflows.ErrorInfo{Type: "StorageUnavailable", Message: "put /srv/store/chunks/ab/cd: disk full"}}
	running := &workflows.Operation{OperationID: "op-2", VolumeID: "v1", Kind: workflows.KindBackup, ItemID: "bk-2",
		Status: workflows.StatusCreating, StartedAt: fakeNow.Add(time.Hour),
		Progress: &activities.Progress{Phase: "uploading", BytesDone: 1 << 30, BytesTotal: 4 << 30, NextOffset: 1 << 30,
			BytesPerSecond: 312e6}}
	v1 := &starter.Volume{VolumeState: workflows.VolumeState{Registered: true,
		Spec: workflows.VolumeSpec{VolumeID: "v1", Name: "web-data", OwnerID: "alice", HypervisorID: "hv1",
			Plan:      workflows.Plan{PlanID: "standard", MaxSnapshots: 5, MaxBackups: 10},
			Storage:   activities.VolumeRef{Type: "file", Path: "/var/lib/holdfast/volumes/web-data.qcow2", Format: "qcow2"},
			SizeBytes: 10 << 30, BackupStorage: "local", OwnerLimit: 3},
		Active: running,
		Snapshots: []workflows.Item{{ItemID: "sn-1", Name: "daily", Status: workflows.StatusAvailable, CreatedAt: fakeNow,
			SizeBytes: 0, Consistency: activities.ConsistencyCrash, OperationID: "op-0"}},
		Backups: []workflows.Item{
			{ItemID: "bk-1", Name: "weekly", Status: workflows.StatusFailed, CreatedAt: fakeNow, Storage: "local",
				Scheduled: true, OperationID: "op-1", Error: "put /srv/store/chunks/ab/cd: disk full"},
			{ItemID: "bk-0", Name: "first", Status: workflows.StatusAvailable, CreatedAt: fakeNow, SizeBytes: 4096,
				StoredBytes: 1024, Storage: "local", Replica: &workflows.Replica{Storage: "offsite",
					Status: workflows.ReplicaReplicated, ReplicatedAt: &fakeNow, BytesCopied: 1024}},
		},
		PolicyID: "nightly"},
		CooldownRemainingSeconds: 0}
	return &fakeBackend{volumes: map[string]*starter.Volume{"v1": v1},
		operations: map[string]*workflows.Operation{"op-1": failed, "op-2": running}}
}

func ptr[T any](v T) *T { return &v }

// fakeAnswer is one response of a Server over a fakeBackend.
type fakeAnswer struct {
	status int
	header http.Header
	body   string
}

// callFake sends one request through a Server over f, as the token's caller.
func callFake(t *testing.T, f *fakeBackend, method, target, token, body string) fakeAnswer {
	t.Helper()
	h := api.New(f, api.Tokens{Panel: []string{"panel-secret"},
		Owners: map[string]string{"alice-token": "alice", "bob-token": "bob"}}, nil, slog.New(slog.DiscardHandler))
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	rec := httptest.NewRecorder()
	apitest.Handler(t, h).ServeHTTP(rec, req)
	assert.Equal(t, "application/json", rec.Header().Get("Content-Type"), "%s %s", method, target)
	return fakeAnswer{status: rec.Code, header: rec.Header(), body: rec.Body.String()}
}

// expect checks an answer's status and its JSON document, field for field.
func (a fakeAnswer) expect(t *testing.T, status int, doc string) {
	t.Helper()
	require.Equal(t, status, a.status, a.body)
	assert.JSONEq(t, doc, a.body)
}

// Another owner's volume answers exactly what a volume that does not exist answers, on every volume
// endpoint, and its requests never reach the control plane.
func TestAnotherOwnersVolumeIsNotFound(t *testing.T) {
	f := newFakeBackend()
	notFound := func(id string) string {
		return `{"error": {"type": "NotFound", "message": "Volume ` + id + ` not found."}}`
	}
	callFake(t, f, "GET", "/v1/volumes/v1", "bob-token", "").expect(t, 404, notFound("v1"))
	callFake(t, f, "GET", "/v1/volumes/v9", "bob-token", "").expect(t, 404, notFound("v9"))
	callFake(t, f, "POST", "/v1/volumes/v1/snapshots", "bob-token", `{"name": "mine"}`).expect(t, 404, notFound("v1"))
	callFake(t, f, "POST", "/v1/volumes/v1/restore", "bob-token", `{"snapshot_id": "sn-1", "mode": "in_place",
		"confirm": "web-data"}`).expect(t, 404, notFound("v1"))
	callFake(t, f, "DELETE", "/v1/volumes/v1/snapshots/sn-1?confirm=daily", "bob-token", "").expect(t, 404, notFound("v1"))
	callFake(t, f, "POST", "/v1/volumes/v1/abort", "bob-token", "").expect(t, 404, notFound("v1"))
	callFake(t, f, "PUT", "/v1/volumes/v1/policy", "bob-token", `{"policy_id": null}`).expect(t, 404, notFound("v1"))
	callFake(t, f, "GET", "/v1/operations/op-1", "bob-token", "").expect(t, 404,
		`{"error": {"type": "NotFound", "message": "Operation op-1 not found."}}`)
	assert.Empty(t, f.requests)

	callFake(t, f, "GET", "/v1/volumes/v1", "alice-token", "").expect(t, 200, volumeJSON(ownerReadsError))
}

// The failed backup's error as the panel reads it, and as its owner does.
const (
	panelReadsError = "put /srv/store/chunks/ab/cd: disk full"
	ownerReadsError = "The operation failed. Your provider can look up why (operation op-1)."
)

// volumeJSON is v1 as GET /v1/volumes/{volume_id} shows it (api.md), its failed backup's error as given.
func volumeJSON(backupError string) string {
	return `{"volume_id": "v1", "name": "web-data", "owner_id": "alice", "hypervisor_id": "hv1", "plan": "standard",
		"storage": {"type": "file", "path": "/var/lib/holdfast/volumes/web-data.qcow2", "format": "qcow2"},
		"size_bytes": 10737418240,
		"active_operation": {"operation_id": "op-2", "kind": "backup", "item_id": "bk-2", "status": "creating",
			"progress": {"phase": "uploading", "bytes_done": 1073741824, "bytes_total": 4294967296,
				"bytes_per_second": 312000000, "eta_seconds": 11}},
		"cooldown_remaining_seconds": 0,
		"policy_id": "nightly",
		"snapshots": [{"snapshot_id": "sn-1", "name": "daily", "status": "available",
			"created_at": "2026-01-02T03:04:05Z", "size_bytes": 0, "consistency": "crash"}],
		"backups": [
			{"backup_id": "bk-1", "name": "weekly", "status": "failed", "created_at": "2026-01-02T03:04:05Z",
				"size_bytes": 0, "stored_bytes": 0, "storage": "local", "scheduled": true, "error": "` + backupError + `"},
			{"backup_id": "bk-0", "name": "first", "status": "available", "created_at": "2026-01-02T03:04:05Z",
				"size_bytes": 4096, "stored_bytes": 1024, "storage": "local",
				"replica": {"storage": "offsite", "status": "replicated", "replicated_at": "2026-01-02T03:04:05Z",
					"bytes_copied": 1024}}]}`
}

// A volume's document, to the field: v1's fields, the beyond-v1 ones only where set, numbers as integers.
func TestVolumeJSON(t *testing.T) {
	f := newFakeBackend()
	a := callFake(t, f, "GET", "/v1/volumes/v1", "panel-secret", "")
	a.expect(t, 200, volumeJSON(panelReadsError))
	assert.Contains(t, a.body, `"eta_seconds":11}`, "an ETA is whole seconds")

	idle := newFakeBackend()
	v := idle.volumes["v1"]
	v.Active, v.Snapshots, v.Backups, v.PolicyID, v.CooldownRemainingSeconds = nil, nil, nil, "", 42
	v.Spec.Storage = activities.VolumeRef{Type: "rbd", Pool: "vms", Image: "web-data"}
	callFake(t, idle, "GET", "/v1/volumes/v1", "alice-token", "").expect(t, 200, `{"volume_id": "v1", "name": "web-data",
		"owner_id": "alice", "hypervisor_id": "hv1", "plan": "standard",
		"storage": {"type": "rbd", "pool": "vms", "image": "web-data"}, "size_bytes": 10737418240,
		"active_operation": null, "cooldown_remaining_seconds": 42, "snapshots": [], "backups": []}`)
}

// The 202 answer and the operation document, to the field; an owner reads a failure as a plain sentence.
func TestOperationJSON(t *testing.T) {
	f := newFakeBackend()
	f.volumes["v1"].Active = nil
	callFake(t, f, "POST", "/v1/volumes/v1/snapshots", "alice-token", "").expect(t, 202,
		`{"operation_id": "op-101", "volume_id": "v1", "kind": "snapshot", "item_id": "", "status": "pending"}`)
	callFake(t, f, "POST", "/v1/volumes/v1/restore", "panel-secret", `{"backup_id": "bk-0", "mode": "new_volume",
		"new_volume_id": "v2", "new_volume_name": "copy"}`).expect(t, 202,
		`{"operation_id": "op-102", "volume_id": "v1", "kind": "restore", "item_id": "bk-0", "status": "pending",
			"new_volume_id": "v2"}`)
	callFake(t, f, "DELETE", "/v1/volumes/v1/backups/bk-0?confirm=first", "alice-token", "").expect(t, 202,
		`{"operation_id": "op-103", "volume_id": "v1", "kind": "delete", "item_id": "bk-0", "status": "pending"}`)
	assert.Equal(t, []string{"v1 snapshot", "v1 restore", "v1 delete"}, f.requests)

	failed := func(message string) string {
		return `{"operation_id": "op-1", "volume_id": "v1", "kind": "backup", "item_id": "bk-1", "status": "failed",
			"progress": null, "error": {"type": "StorageUnavailable", "message": "` + message + `"},
			"started_at": "2026-01-02T03:04:05Z", "finished_at": "2026-01-02T03:05:05Z"}`
	}
	callFake(t, f, "GET", "/v1/operations/op-1", "panel-secret", "").expect(t, 200, failed(panelReadsError))
	callFake(t, f, "GET", "/v1/operations/op-1", "alice-token", "").expect(t, 200, failed(ownerReadsError))

	// Without a rate there is no ETA: null, not 0.
	f.operations["op-2"].Progress.BytesPerSecond = 0
	callFake(t, f, "GET", "/v1/operations/op-2", "alice-token", "").expect(t, 200,
		`{"operation_id": "op-2", "volume_id": "v1", "kind": "backup", "item_id": "bk-2", "status": "creating",
			"progress": {"phase": "uploading", "bytes_done": 1073741824, "bytes_total": 4294967296,
				"bytes_per_second": 0, "eta_seconds": null},
			"error": null, "started_at": "2026-01-02T04:04:05Z", "finished_at": null}`)
}

// A guard rail's refusal: its status, the error document and, for a cooldown, Retry-After.
func TestRefusalJSON(t *testing.T) {
	f := newFakeBackend()
	f.volumes["v1"].Active = nil
	f.refusal = &starter.Error{Type: workflows.ErrCooldown, Message: "Volume is in cooldown. Try again in 42 seconds.",
		RetryAfter: 42}
	a := callFake(t, f, "POST", "/v1/volumes/v1/backups", "alice-token", `{"name": "nightly"}`)
	a.expect(t, 429, `{"error": {"type": "Cooldown", "message": "Volume is in cooldown. Try again in 42 seconds."}}`)
	assert.Equal(t, "42", a.header.Get("Retry-After"))

	f.refusal = errors.New("dial tcp 10.0.0.7:7233: connection refused")
	callFake(t, f, "POST", "/v1/volumes/v1/backups", "alice-token", "").expect(t, 500,
		`{"error": {"type": "Internal", "message": "Internal error; see the API's logs."}}`)
	callFake(t, f, "PUT", "/v1/volumes/v1", "alice-token", "{}").expect(t, 403,
		`{"error": {"type": "Forbidden", "message": "Only a panel token may register volumes."}}`)
	callFake(t, f, "POST", "/v1/volumes/v1/snapshots", "alice-token", `{"Name": "x"}`).expect(t, 400,
		`{"error": {"type": "InvalidArgument", "message": "Name: unknown field"}}`)
}

// Policies: the stored policy as given back, and an attachment with null for "none".
func TestPolicyJSON(t *testing.T) {
	f := newFakeBackend()
	callFake(t, f, "PUT", "/v1/policies/nightly", "panel-secret", `{"kind": "backup", "time_zone": "Europe/Berlin",
		"window": {"start": "01:00", "end": "05:00"}, "keep_last": 7}`).expect(t, 200,
		`{"policy_id": "nightly", "kind": "backup", "time_zone": "Europe/Berlin",
			"window": {"start": "01:00", "end": "05:00"}, "keep_last": 7}`)
	callFake(t, f, "PUT", "/v1/volumes/v1/policy", "alice-token", `{"policy_id": "nightly"}`).expect(t, 200,
		`{"volume_id": "v1", "policy_id": "nightly", "schedule_id": "policy/nightly/volume/v1"}`)
	callFake(t, f, "PUT", "/v1/volumes/v1/policy", "alice-token", `{"policy_id": null}`).expect(t, 200,
		`{"volume_id": "v1", "policy_id": null, "schedule_id": null}`)
}
