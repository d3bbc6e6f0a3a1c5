package api_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/activity"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/starter"
	"github.com/holdfast/holdfast/starter/api"
	"github.com/holdfast/holdfast/starter/api/apitest"
	"github.com/holdfast/holdfast/starter/startertest"
	"github.com/holdfast/holdfast/workflows"
)

// documentedErrors is api.md's error table (plus the statuses its prose names): type → exact status.
var documentedErrors = map[string]int{
	workflows.ErrVolumeBusy:           http.StatusConflict,
	workflows.ErrCooldown:             http.StatusTooManyRequests,
	workflows.ErrSnapshotLimit:        http.StatusConflict,
	workflows.ErrBackupLimit:          http.StatusConflict,
	workflows.ErrOwnerLimit:           http.StatusTooManyRequests,
	workflows.ErrAttachedRunning:      http.StatusConflict,
	workflows.ErrNoBackupStorage:      http.StatusConflict,
	workflows.ErrConfirmationMismatch: http.StatusBadRequest,
	workflows.ErrNotFound:             http.StatusNotFound,
	workflows.ErrInvalidArgument:      http.StatusBadRequest,
	workflows.ErrNoActiveOperation:    http.StatusConflict,
	"Unauthorized":                    http.StatusUnauthorized,
	"Forbidden":                       http.StatusForbidden,
	// Beyond api.md: the control plane stayed too busy to answer within the client's retry budget.
	starter.ErrUnavailable: http.StatusServiceUnavailable,
}

// activitySpan is one activity execution on the recording hypervisor, attributed to an operation.
type activitySpan struct {
	op, volume, owner, activity string
	start, end                  time.Time
	err                         error
}

// recordingHypervisor is an in-process agent that holds every CreateSnapshot and UploadBackup for a random
// 50–300 ms and records each activity's interval per operation, volume and owner. Live counters (under mu)
// track how many distinct operations have an activity running per volume and per owner; after the run,
// operationMax sweeps each operation's whole span (first activity start to last activity end, compensations
// included) for the exact maximum overlap.
type recordingHypervisor struct {
	owners map[string]string // volume → owner

	mu           sync.Mutex
	spans        []activitySpan
	liveByVolume map[string]map[string]int // volume → operation → running activities
	liveByOwner  map[string]map[string]int // owner → operation → running activities
	maxVolume    int
	maxOwner     int
	unexpected   []string
}

var _ activities.Hypervisor = (*recordingHypervisor)(nil)

func newRecordingHypervisor(owners map[string]string) *recordingHypervisor {
	return &recordingHypervisor{owners: owners, liveByVolume: map[string]map[string]int{}, liveByOwner: map[string]map[string]int{}}
}

// opKey maps an activity's snapshot/backup id to its operation's item id (a backup's temporary snapshot
// is "holdfast-backup-<backup id>").
func opKey(id string) string { return strings.TrimPrefix(id, "holdfast-backup-") }

func (h *recordingHypervisor) begin(op, volume, name string) func(error) {
	owner := h.owners[volume]
	start := time.Now()
	h.mu.Lock()
	if h.liveByVolume[volume] == nil {
		h.liveByVolume[volume] = map[string]int{}
	}
	if h.liveByOwner[owner] == nil {
		h.liveByOwner[owner] = map[string]int{}
	}
	h.liveByVolume[volume][op]++
	h.liveByOwner[owner][op]++
	h.maxVolume = max(h.maxVolume, len(h.liveByVolume[volume]))
	h.maxOwner = max(h.maxOwner, len(h.liveByOwner[owner]))
	h.mu.Unlock()
	return func(err error) {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.spans = append(h.spans, activitySpan{op: op, volume: volume, owner: owner, activity: name,
			start: start, end: time.Now(), err: err})
		for _, m := range []map[string]int{h.liveByVolume[volume], h.liveByOwner[owner]} {
			if m[op]--; m[op] == 0 {
				delete(m, op)
			}
		}
	}
}

// hold keeps an operation running for 50–300 ms, heartbeating when asked (UploadBackup).
func hold(ctx context.Context, heartbeat bool) error {
	done := time.After(time.Duration(50+rand.IntN(251)) * time.Millisecond)
	for {
		if heartbeat {
			activity.RecordHeartbeat(ctx, activities.Progress{Phase: "uploading", BytesDone: 1, BytesTotal: 2,
				NextOffset: 1, BytesPerSecond: 1})
		}
		select {
		case <-done:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (h *recordingHypervisor) note(what string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.unexpected = append(h.unexpected, what)
}

// Attachment implements activities.Hypervisor (never attached).
func (h *recordingHypervisor) Attachment(context.Context, activities.AttachmentInput) (activities.AttachmentResult, error) {
	return activities.AttachmentResult{}, nil
}

// CreateSnapshot holds for 50–300 ms.
func (h *recordingHypervisor) CreateSnapshot(ctx context.Context, in activities.SnapshotInput) (activities.SnapshotResult, error) {
	end := h.begin(opKey(in.SnapshotID), in.VolumeID, "CreateSnapshot")
	err := hold(ctx, false)
	end(err)
	if err != nil {
		return activities.SnapshotResult{}, err
	}
	return activities.SnapshotResult{SnapshotID: in.SnapshotID, SizeBytes: 1 << 20, Consistency: activities.ConsistencyCrash}, nil
}

// DeleteSnapshot records the compensation or the backup's temporary-snapshot cleanup.
func (h *recordingHypervisor) DeleteSnapshot(_ context.Context, in activities.SnapshotRef) error {
	h.begin(opKey(in.SnapshotID), in.VolumeID, "DeleteSnapshot")(nil)
	return nil
}

// RollbackSnapshot is not expected (every restore in the test is rejected).
func (h *recordingHypervisor) RollbackSnapshot(_ context.Context, in activities.SnapshotRef) error {
	h.note("RollbackSnapshot " + in.VolumeID)
	return nil
}

// UploadBackup holds for 50–300 ms, heartbeating.
func (h *recordingHypervisor) UploadBackup(ctx context.Context, in activities.UploadBackupInput) (activities.UploadBackupResult, error) {
	end := h.begin(opKey(in.BackupID), in.VolumeID, "UploadBackup")
	err := hold(ctx, true)
	end(err)
	if err != nil {
		return activities.UploadBackupResult{}, err
	}
	return activities.UploadBackupResult{SizeBytes: 2 << 20, StoredBytes: 1 << 20}, nil
}

// DeleteBackup records the compensation of an aborted backup.
func (h *recordingHypervisor) DeleteBackup(_ context.Context, in activities.BackupRef) error {
	h.begin(opKey(in.BackupID), in.VolumeID, "DeleteBackup")(nil)
	return nil
}

// RestoreBackup is not expected.
func (h *recordingHypervisor) RestoreBackup(_ context.Context, in activities.RestoreBackupInput) (activities.RestoreResult, error) {
	h.note(fmt.Sprintf("RestoreBackup %+v", in))
	return activities.RestoreResult{}, nil
}

// PrepareInstantRestore is not expected.
func (h *recordingHypervisor) PrepareInstantRestore(_ context.Context, in activities.RestoreBackupInput) (activities.InstantRestoreResult, error) {
	h.note(fmt.Sprintf("PrepareInstantRestore %+v", in))
	return activities.InstantRestoreResult{}, nil
}

// HydrateVolume is not expected.
func (h *recordingHypervisor) HydrateVolume(_ context.Context, in activities.RestoreBackupInput) (activities.RestoreResult, error) {
	h.note(fmt.Sprintf("HydrateVolume %+v", in))
	return activities.RestoreResult{}, nil
}

// AbandonInstantRestore is not expected.
func (h *recordingHypervisor) AbandonInstantRestore(_ context.Context, in activities.RestoreBackupInput) error {
	h.note(fmt.Sprintf("AbandonInstantRestore %+v", in))
	return nil
}

// CloneSnapshot is not expected.
func (h *recordingHypervisor) CloneSnapshot(_ context.Context, in activities.CloneSnapshotInput) (activities.RestoreResult, error) {
	h.note(fmt.Sprintf("CloneSnapshot %+v", in))
	return activities.RestoreResult{}, nil
}

// DeleteVolume is not expected.
func (h *recordingHypervisor) InspectVolume(context.Context, activities.AttachmentInput) (activities.InspectResult, error) {
	return activities.InspectResult{SizeBytes: 1 << 30}, nil
}

func (h *recordingHypervisor) DeleteVolume(_ context.Context, in activities.DeleteVolumeInput) error {
	h.note(fmt.Sprintf("DeleteVolume %+v", in))
	return nil
}

// operationMax returns, from the recorded spans, the maximum number of operations whose spans (first
// activity start to last activity end) overlap, per volume and per owner, with a witness of each maximum.
func (h *recordingHypervisor) operationMax() (perVolume, perOwner int, volumeWitness, ownerWitness string, ops int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	type opSpan struct {
		volume, owner string
		start, end    time.Time
	}
	spans := map[string]*opSpan{}
	for _, s := range h.spans {
		o := spans[s.op]
		if o == nil {
			spans[s.op] = &opSpan{volume: s.volume, owner: s.owner, start: s.start, end: s.end}
			continue
		}
		if s.start.Before(o.start) {
			o.start = s.start
		}
		if s.end.After(o.end) {
			o.end = s.end
		}
	}
	sweep := func(group func(*opSpan) string) (int, string) {
		type event struct {
			at    time.Time
			delta int
			group string
			op    string
		}
		var events []event
		for id, o := range spans {
			events = append(events, event{o.start, +1, group(o), id}, event{o.end, -1, group(o), id})
		}
		sort.Slice(events, func(i, j int) bool {
			if !events[i].at.Equal(events[j].at) {
				return events[i].at.Before(events[j].at)
			}
			return events[i].delta < events[j].delta // an end before a start at the same instant
		})
		best, witness := 0, ""
		live := map[string]map[string]bool{}
		for _, e := range events {
			if live[e.group] == nil {
				live[e.group] = map[string]bool{}
			}
			if e.delta > 0 {
				live[e.group][e.op] = true
			} else {
				delete(live[e.group], e.op)
			}
			if n := len(live[e.group]); n > best {
				ids := make([]string, 0, n)
				for id := range live[e.group] {
					ids = append(ids, id)
				}
				slices.Sort(ids)
				best, witness = n, e.group+": "+strings.Join(ids, ", ")
			}
		}
		return best, witness
	}
	perVolume, volumeWitness = sweep(func(o *opSpan) string { return o.volume })
	perOwner, ownerWitness = sweep(func(o *opSpan) string { return o.owner })
	return perVolume, perOwner, volumeWitness, ownerWitness, len(spans)
}

// apiCall is one request of the storm and what it got.
type apiCall struct {
	kind, method, path, token, body string
	crossOwner                      bool
	status                          int
	contentType                     string
	raw                             []byte
	err                             error
	elapsed                         time.Duration
}

func TestAPIConcurrentRequestsKeepGuardRails(t *testing.T) {
	const (
		owners          = 5
		volumesPerOwner = 4
		requests        = 200
		spread          = 4 * time.Second // requests start at random offsets within it
	)
	config := fmt.Sprintf(`
limits: {cooldown: 0s}
plans: {standard: {max_snapshots: 100, max_backups: 100}}
backup_storages: {local: {type: fs, path: %s}}
hypervisor_groups: {g1: {backup_storage: local}}
hypervisors: {hv1: {group: g1, volume_roots: [/vols]}}
`, t.TempDir())
	volumeOwner := map[string]string{}
	ownerVolumes := map[string][]string{}
	tokens := api.Tokens{Panel: []string{"panel-secret"}, Owners: map[string]string{}}
	ownerToken := map[string]string{}
	var ownerIDs []string
	for o := range owners {
		owner := fmt.Sprintf("owner%d", o)
		ownerIDs = append(ownerIDs, owner)
		ownerToken[owner] = owner + "-token"
		tokens.Owners[owner+"-token"] = owner
		for v := range volumesPerOwner {
			volumeID := fmt.Sprintf("o%d-v%d", o, v)
			volumeOwner[volumeID] = owner
			ownerVolumes[owner] = append(ownerVolumes[owner], volumeID)
		}
	}
	hv := newRecordingHypervisor(volumeOwner)
	c := startertest.NewCluster(t, config, map[string]activities.Hypervisor{"hv1": hv})
	ts := apitest.NewServer(t, api.New(c.Client, tokens, nil, nil))
	transport := ts.Client().Transport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = requests
	httpc := &http.Client{Transport: transport, Timeout: 30 * time.Second}
	t.Cleanup(transport.CloseIdleConnections)

	do := func(method, path, token, body string) (int, string, []byte, error) {
		var rd io.Reader
		if body != "" {
			rd = strings.NewReader(body)
		}
		req, err := http.NewRequest(method, ts.URL+path, rd)
		if err != nil {
			return 0, "", nil, err
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := httpc.Do(req)
		if err != nil {
			return 0, "", nil, err
		}
		defer resp.Body.Close()
		data, err := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("Content-Type"), data, err
	}

	for _, volumeID := range slices.Sorted(func(yield func(string) bool) {
		for v := range volumeOwner {
			if !yield(v) {
				return
			}
		}
	}) {
		body := fmt.Sprintf(`{"name": %q, "owner_id": %q, "hypervisor_id": "hv1", "plan": "standard",
			"storage": {"type": "file", "path": "/vols/%s.qcow2"}}`, volumeID, volumeOwner[volumeID], volumeID)
		status, _, raw, err := do("PUT", "/v1/volumes/"+volumeID, "panel-secret", body)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, status, string(raw))
	}

	seed := uint64(time.Now().UnixNano())
	t.Logf("request mix seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 7))
	calls := make([]*apiCall, requests)
	offsets := make([]time.Duration, requests)
	for i := range calls {
		owner := ownerIDs[i%owners]
		volumeID := ownerVolumes[owner][rng.IntN(volumesPerOwner)]
		call := &apiCall{token: ownerToken[owner]}
		switch p := rng.IntN(100); {
		case p < 35:
			call.kind, call.method, call.path = "snapshot", "POST", "/v1/volumes/"+volumeID+"/snapshots"
			if rng.IntN(2) == 0 {
				call.body = fmt.Sprintf(`{"name": "snap-%d"}`, i)
			}
		case p < 65:
			call.kind, call.method, call.path = "backup", "POST", "/v1/volumes/"+volumeID+"/backups"
			call.body = fmt.Sprintf(`{"name": "backup-%d"}`, i)
		case p < 75:
			call.kind, call.method, call.path = "get", "GET", "/v1/volumes/"+volumeID
		case p < 80:
			other := ownerIDs[(i+1+rng.IntN(owners-1))%owners]
			call.kind, call.method, call.path = "get-other", "GET", "/v1/volumes/"+ownerVolumes[other][0]
			call.crossOwner = true
		case p < 87:
			call.kind, call.method, call.path = "restore", "POST", "/v1/volumes/"+volumeID+"/restore"
			item := `"snapshot_id": "snap-missing"`
			if rng.IntN(2) == 0 {
				item = `"backup_id": "backup-missing"`
			}
			call.body = `{` + item + `, "mode": "in_place", "confirm": "not-the-name"}`
		case p < 92:
			call.kind, call.method = "delete", "DELETE"
			call.path = "/v1/volumes/" + volumeID + "/snapshots/snap-missing?confirm=wrong"
			if rng.IntN(2) == 0 {
				call.path = "/v1/volumes/" + volumeID + "/backups/backup-missing?confirm=wrong"
			}
		default:
			call.kind, call.method, call.path = "abort", "POST", "/v1/volumes/"+volumeID+"/abort"
		}
		calls[i] = call
		offsets[i] = time.Duration(rng.Int64N(int64(spread)))
	}

	stormStart := time.Now()
	var wg sync.WaitGroup
	for i, call := range calls {
		wg.Go(func() {
			time.Sleep(offsets[i])
			sent := time.Now()
			call.status, call.contentType, call.raw, call.err = do(call.method, call.path, call.token, call.body)
			call.elapsed = time.Since(sent)
		})
	}
	wg.Wait()
	latencies := make([]time.Duration, 0, requests)
	for _, call := range calls {
		latencies = append(latencies, call.elapsed)
	}
	slices.Sort(latencies)
	t.Logf("%d requests answered in %s; latency p50 %s, p95 %s, max %s", requests,
		time.Since(stormStart).Round(time.Millisecond), latencies[requests/2].Round(time.Millisecond),
		latencies[requests*95/100].Round(time.Millisecond), latencies[requests-1].Round(time.Millisecond))

	// Every request answered: 2xx, or a documented typed rejection with its exact status; never a 500 (a 503
	// Unavailable only if the control plane stayed too busy for the client's retries).
	type opRef struct{ id, token string }
	var accepted []opRef
	tally := map[string]int{}
	for i, call := range calls {
		if !assert.NoError(t, call.err, "request %d %s %s got no answer", i, call.method, call.path) {
			continue
		}
		what := fmt.Sprintf("request %d %s %s → %d %s", i, call.method, call.path, call.status, call.raw)
		assert.NotEqual(t, http.StatusInternalServerError, call.status, what)
		assert.Equal(t, "application/json", call.contentType, what)
		var body struct {
			OperationID string `json:"operation_id"`
			Error       *struct {
				Type    *string `json:"type"`
				Message *string `json:"message"`
			} `json:"error"`
		}
		if !assert.NoError(t, json.Unmarshal(call.raw, &body), what) {
			continue
		}
		if call.status >= 200 && call.status < 300 {
			tally[call.kind+" "+fmt.Sprint(call.status)]++
			assert.False(t, call.crossOwner, "another owner's volume must be a 404: %s", what)
			switch call.kind {
			case "get":
				assert.Equal(t, http.StatusOK, call.status, what)
			case "snapshot", "backup", "abort":
				assert.Equal(t, http.StatusAccepted, call.status, what)
				if assert.NotEmpty(t, body.OperationID, what) {
					accepted = append(accepted, opRef{body.OperationID, call.token})
				}
			default:
				t.Errorf("a %s request with a wrong confirmation was accepted: %s", call.kind, what)
			}
			continue
		}
		if !assert.NotNil(t, body.Error, what) || !assert.NotNil(t, body.Error.Type, what) ||
			!assert.NotNil(t, body.Error.Message, what) {
			continue
		}
		errType := *body.Error.Type
		tally[call.kind+" "+errType]++
		want, documented := documentedErrors[errType]
		assert.True(t, documented, "undocumented error type: %s", what)
		assert.Equal(t, want, call.status, "status of %s: %s", errType, what)
		assert.NotEmpty(t, *body.Error.Message, what)
		if call.crossOwner && errType != starter.ErrUnavailable {
			assert.Equal(t, workflows.ErrNotFound, errType, what)
		}
		if errType == workflows.ErrOwnerLimit {
			assert.Equal(t, "Too many operations in flight for this account (limit 3). Try again when one finishes.",
				*body.Error.Message, what)
		}
	}
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range tally {
			if !yield(k) {
				return
			}
		}
	}) {
		t.Logf("  %-40s %3d", k, tally[k])
	}
	require.NotEmpty(t, accepted, "no request was accepted: the storm proved nothing")

	// Every accepted operation (and every aborted one) reaches a terminal status.
	terminal := map[string]bool{"available": true, "completed": true, "failed": true, "aborted": true}
	final := map[string]int{}
	var finalMu sync.Mutex
	deadline := time.Now().Add(45 * time.Second)
	for _, op := range accepted {
		wg.Go(func() {
			for {
				status, _, raw, err := do("GET", "/v1/operations/"+op.id, op.token, "")
				var body struct {
					Status string `json:"status"`
				}
				if err == nil && status == http.StatusOK && json.Unmarshal(raw, &body) == nil && terminal[body.Status] {
					finalMu.Lock()
					final[body.Status]++
					finalMu.Unlock()
					return
				}
				if time.Now().After(deadline) {
					t.Errorf("operation %s never reached a terminal status: %d %s %v", op.id, status, raw, err)
					return
				}
				time.Sleep(200 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	t.Logf("%d accepted operations (abort answers included) ended: %v", len(accepted), final)

	// No volume is left with an active operation.
	for volumeID, owner := range volumeOwner {
		status, _, raw, err := do("GET", "/v1/volumes/"+volumeID, ownerToken[owner], "")
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, status, string(raw))
		var v struct {
			Active json.RawMessage `json:"active_operation"`
		}
		require.NoError(t, json.Unmarshal(raw, &v))
		assert.Equal(t, "null", string(v.Active), "volume %s still busy", volumeID)
	}

	// Every owner's permits come back (a rejection releases at once; an unclaimed lease expires in a minute).
	ctx := context.Background()
	leaseDeadline := time.Now().Add(70 * time.Second)
	for _, owner := range ownerIDs {
		for {
			var leases []workflows.Lease
			res, err := c.Temporal.QueryWorkflow(ctx, workflows.OwnerWorkflowID(owner), "", workflows.QueryPermits)
			var nf *serviceerror.NotFound
			if errors.As(err, &nf) {
				break // the owner never asked for a permit
			}
			require.NoError(t, err)
			require.NoError(t, res.Get(&leases))
			if len(leases) == 0 {
				break
			}
			require.True(t, time.Now().Before(leaseDeadline), "owner %s permits never came back: %+v", owner, leases)
			time.Sleep(250 * time.Millisecond)
		}
	}

	// The invariant, as the hypervisor saw it.
	perVolume, perOwner, vw, ow, ops := hv.operationMax()
	hv.mu.Lock()
	liveVolume, liveOwner, unexpected, activityCalls := hv.maxVolume, hv.maxOwner, hv.unexpected, len(hv.spans)
	hv.mu.Unlock()
	t.Logf("hypervisor saw %d operations (%d activity calls): max overlapping per volume %d (%s), per owner %d (%s); "+
		"live activity counters: per volume %d, per owner %d", ops, activityCalls, perVolume, vw, perOwner, ow,
		liveVolume, liveOwner)
	assert.Empty(t, unexpected, "activities no request should have caused")
	assert.LessOrEqual(t, perVolume, 1, "two operations overlapped on one volume: %s", vw)
	assert.LessOrEqual(t, perOwner, 3, "more than 3 operations in flight for one owner: %s", ow)
	assert.LessOrEqual(t, liveVolume, 1)
	assert.LessOrEqual(t, liveOwner, 3)
	assert.Positive(t, ops)
}
