package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/starter"
	"github.com/holdfast/holdfast/starter/api"
	"github.com/holdfast/holdfast/starter/api/apitest"
	"github.com/holdfast/holdfast/starter/startertest"
)

const config = `
limits: {cooldown: 5m}
plans: {standard: {max_snapshots: 1}}
backup_storages: {local: {type: fs, path: /tmp/holdfast-api-test}}
hypervisor_groups: {g1: {backup_storage: local}, bare: {}}
hypervisors: {hv1: {group: g1, volume_roots: [/var/lib/holdfast/volumes]}, hv2: {group: bare, volume_roots: [/var/lib/holdfast/volumes]}}
policies: {from-config: {kind: snapshot, every: 24h, keep_last: 3}}
`

type env struct {
	t       *testing.T
	cluster *startertest.Cluster
	url     string
	hv1     *startertest.GatedHypervisor
	hv2     *startertest.GatedHypervisor
	client  *http.Client
}

func newEnv(t *testing.T) *env {
	hv1, hv2 := startertest.NewGatedHypervisor(), startertest.NewGatedHypervisor()
	c := startertest.NewCluster(t, config, map[string]activities.Hypervisor{"hv1": hv1, "hv2": hv2})
	srv := api.New(c.Client, api.Tokens{Panel: []string{"panel-secret"},
		Owners: map[string]string{"alice-token": "alice", "bob-token": "bob"}},
		func(ctx context.Context) error { _, err := c.Temporal.CheckHealth(ctx, nil); return err }, nil)
	ts := apitest.NewServer(t, srv)
	return &env{t: t, cluster: c, url: ts.URL, hv1: hv1, hv2: hv2, client: ts.Client()}
}

type response struct {
	status int
	header http.Header
	body   map[string]any
	raw    string
}

func (e *env) do(method, path, token string, body any) response {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		data, err := json.Marshal(b)
		require.NoError(e.t, err)
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, e.url+path, rd)
	require.NoError(e.t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := e.client.Do(req)
	require.NoError(e.t, err)
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	require.NoError(e.t, err)
	r := response{status: resp.StatusCode, header: resp.Header, raw: string(data)}
	_ = json.Unmarshal(data, &r.body)
	return r
}

func (r response) errType() string {
	e, _ := r.body["error"].(map[string]any)
	s, _ := e["type"].(string)
	return s
}

func (r response) errMessage() string {
	e, _ := r.body["error"].(map[string]any)
	s, _ := e["message"].(string)
	return s
}

func requireError(t *testing.T, r response, status int, errType, message string) {
	t.Helper()
	require.Equal(t, status, r.status, r.raw)
	require.Equal(t, errType, r.errType(), r.raw)
	if message != "" {
		require.Equal(t, message, r.errMessage())
	}
}

// availableSnapshot waits for the volume's only snapshot to be available and returns its id.
func (e *env) availableSnapshot(volumeID, token string) string {
	var snapID string
	startertest.WaitFor(e.t, "snapshot", func() bool {
		snaps, _ := e.do("GET", "/v1/volumes/"+volumeID, token, nil).body["snapshots"].([]any)
		if len(snaps) == 1 && snaps[0].(map[string]any)["status"] == "available" {
			snapID = snaps[0].(map[string]any)["snapshot_id"].(string)
			return true
		}
		return false
	})
	return snapID
}

func volumeBody(owner, hypervisor string) map[string]any {
	return map[string]any{"name": "web-data", "owner_id": owner, "hypervisor_id": hypervisor, "plan": "standard",
		"storage": map[string]any{"type": "file", "path": "/var/lib/holdfast/volumes/web-data.qcow2"}}
}

func TestAPIAuthAndValidation(t *testing.T) {
	e := newEnv(t)
	assert.Equal(t, http.StatusOK, e.do("GET", "/healthz", "", nil).status)
	requireError(t, e.do("GET", "/v1/volumes/v1", "", nil), 401, "Unauthorized", "")
	requireError(t, e.do("GET", "/v1/volumes/v1", "wrong", nil), 401, "Unauthorized", "")

	r := e.do("PUT", "/v1/volumes/v1", "panel-secret", volumeBody("alice", "hv1"))
	require.Equal(t, 200, r.status, r.raw)
	assert.Equal(t, "v1", r.body["volume_id"])
	assert.Equal(t, "standard", r.body["plan"])
	assert.Nil(t, r.body["active_operation"])
	assert.Equal(t, []any{}, r.body["snapshots"])

	requireError(t, e.do("PUT", "/v1/volumes/v2", "alice-token", volumeBody("alice", "hv1")), 403, "Forbidden", "")
	bad := volumeBody("alice", "hv1")
	bad["plan"] = "gold"
	requireError(t, e.do("PUT", "/v1/volumes/v2", "panel-secret", bad), 400, "InvalidArgument", `plan: unknown plan "gold"`)
	bad = volumeBody("alice", "hv9")
	requireError(t, e.do("PUT", "/v1/volumes/v2", "panel-secret", bad), 400, "InvalidArgument",
		`hypervisor_id: unknown hypervisor "hv9"`)
	bad = volumeBody("alice", "hv1")
	bad["colour"] = "blue"
	requireError(t, e.do("PUT", "/v1/volumes/v2", "panel-secret", bad), 400, "InvalidArgument", "")
	requireError(t, e.do("PUT", "/v1/volumes/v2", "panel-secret", `{"name": `), 400, "InvalidArgument", "")
	big := `{"name": "` + strings.Repeat("x", 1<<20) + `"}`
	requireError(t, e.do("POST", "/v1/volumes/v1/snapshots", "panel-secret", big), 400, "InvalidArgument",
		"body: larger than 1 MiB")
	requireError(t, e.do("GET", "/v1/volumes/-bad", "panel-secret", nil), 400, "InvalidArgument", "")

	// Owner scoping: another owner's volume answers exactly like a missing one.
	assert.Equal(t, 200, e.do("GET", "/v1/volumes/v1", "alice-token", nil).status)
	other := e.do("GET", "/v1/volumes/v1", "bob-token", nil)
	missing := e.do("GET", "/v1/volumes/v404", "bob-token", nil)
	requireError(t, other, 404, "NotFound", "Volume v1 not found.")
	requireError(t, missing, 404, "NotFound", "Volume v404 not found.")
	requireError(t, e.do("POST", "/v1/volumes/v1/snapshots", "bob-token", nil), 404, "NotFound", "")
}

func TestAPIGuardRailsThroughHTTP(t *testing.T) {
	e := newEnv(t)
	for _, v := range []string{"v1", "v2", "v3", "v4"} {
		body := volumeBody("alice", "hv1") // each on its own file: one file is one volume
		body["storage"] = map[string]any{"type": "file", "path": "/var/lib/holdfast/volumes/" + v + ".qcow2"}
		r := e.do("PUT", "/v1/volumes/"+v, "panel-secret", body)
		require.Equal(t, 200, r.status, r.raw)
	}
	require.Equal(t, 200, e.do("PUT", "/v1/volumes/bare", "panel-secret", volumeBody("alice", "hv2")).status)
	requireError(t, e.do("POST", "/v1/volumes/bare/backups", "alice-token", nil), 409, "NoBackupStorage",
		"Hypervisor has no backup storage configured.")

	acc := e.do("POST", "/v1/volumes/v1/backups", "alice-token", map[string]any{"name": "nightly"})
	require.Equal(t, 202, acc.status, acc.raw)
	assert.Equal(t, "pending", acc.body["status"])
	assert.Equal(t, "backup", acc.body["kind"])
	opID := acc.body["operation_id"].(string)
	requireError(t, e.do("POST", "/v1/volumes/v1/snapshots", "alice-token", nil), 409, "VolumeBusy",
		"Volume is busy with operation: backup")

	// Live progress of the running backup.
	startertest.WaitFor(t, "progress", func() bool {
		r := e.do("GET", "/v1/operations/"+opID, "alice-token", nil)
		p, _ := r.body["progress"].(map[string]any)
		return r.status == 200 && p != nil && p["bytes_done"].(float64) > 0 && p["eta_seconds"] != nil
	})
	requireError(t, e.do("GET", "/v1/operations/"+opID, "bob-token", nil), 404, "NotFound", "")
	v := e.do("GET", "/v1/volumes/v1", "alice-token", nil)
	active := v.body["active_operation"].(map[string]any)
	assert.Equal(t, opID, active["operation_id"])
	assert.Equal(t, "creating", active["status"])

	// Two more in flight (snapshots gated open), then the owner limit.
	require.Equal(t, 202, e.do("POST", "/v1/volumes/v2/snapshots", "alice-token", nil).status)
	require.Equal(t, 202, e.do("POST", "/v1/volumes/v3/snapshots", "alice-token", nil).status)
	limited := e.do("POST", "/v1/volumes/v4/snapshots", "alice-token", nil)
	requireError(t, limited, 429, "OwnerLimit",
		"Too many operations in flight for this account (limit 3). Try again when one finishes.")
	assert.Equal(t, "5", limited.header.Get("Retry-After"), "OwnerLimit says when to try again too")

	// Abort the backup: it ends aborted and the volume goes into cooldown.
	ab := e.do("POST", "/v1/volumes/v1/abort", "alice-token", nil)
	require.Equal(t, 202, ab.status, ab.raw)
	startertest.WaitFor(t, "abort", func() bool {
		return e.do("GET", "/v1/operations/"+opID, "alice-token", nil).body["status"] == "aborted"
	})
	requireError(t, e.do("POST", "/v1/volumes/v1/abort", "alice-token", nil), 409, "NoActiveOperation", "")
	cool := e.do("POST", "/v1/volumes/v1/snapshots", "alice-token", nil)
	requireError(t, cool, 429, "Cooldown", "")
	assert.Regexp(t, `^Volume is in cooldown\. Try again in \d+ seconds\.$`, cool.errMessage())
	assert.NotEmpty(t, cool.header.Get("Retry-After"))
	assert.Contains(t, cool.errMessage(), " "+cool.header.Get("Retry-After")+" seconds")

	// Let the snapshots finish: v2 holds one snapshot, at the plan cap of 1.
	e.hv1.Gate.Open()
	snapID := e.availableSnapshot("v2", "alice-token")
	requireError(t, e.do("DELETE", "/v1/volumes/v2/snapshots/"+snapID+"?confirm=nope", "alice-token", nil), 400,
		"ConfirmationMismatch", "")
	requireError(t, e.do("POST", "/v1/volumes/v2/restore", "alice-token", map[string]any{"snapshot_id": snapID,
		"mode": "in_place", "confirm": "wrong"}), 400, "ConfirmationMismatch",
		`Confirmation does not match: type the volume name "web-data" to confirm.`)
}

func TestAPIAttachedRunningAndSnapshotLimit(t *testing.T) {
	hv := startertest.NewGatedHypervisor()
	hv.Gate.Open()
	hv.Attached = true
	c := startertest.NewCluster(t, strings.Replace(config, "cooldown: 5m", "cooldown: 0s", 1),
		map[string]activities.Hypervisor{"hv1": hv})
	ts := apitest.NewServer(t, api.New(c.Client, api.Tokens{Panel: []string{"p"}}, nil, nil))
	e := &env{t: t, url: ts.URL, client: ts.Client()}
	require.Equal(t, 200, e.do("PUT", "/v1/volumes/v1", "p", volumeBody("alice", "hv1")).status)
	require.Equal(t, 202, e.do("POST", "/v1/volumes/v1/snapshots", "p", map[string]any{"name": "s1"}).status)
	snapID := e.availableSnapshot("v1", "p")
	requireError(t, e.do("POST", "/v1/volumes/v1/snapshots", "p", nil), 409, "SnapshotLimit",
		"Snapshot limit reached. Delete an existing snapshot first.")
	requireError(t, e.do("POST", "/v1/volumes/v1/restore", "p", map[string]any{"snapshot_id": snapID,
		"mode": "in_place", "confirm": "web-data"}), 409, "AttachedRunning",
		"Cannot restore in-place while attached to a running instance")
	// A new volume has no running-instance restriction; it is placed by Holdfast in the hypervisor's first
	// volume root, under a name of its own, in the source's format.
	r := e.do("POST", "/v1/volumes/v1/restore", "p", map[string]any{"snapshot_id": snapID, "mode": "new_volume",
		"new_volume_id": "v1-copy", "new_volume_name": "copy"})
	require.Equal(t, 202, r.status, r.raw)
	startertest.WaitFor(t, "new volume", func() bool { return e.do("GET", "/v1/volumes/v1-copy", "p", nil).status == 200 })
	// The new volume is registered before the restore ends: v1 stays busy until then.
	restoreID, _ := r.body["operation_id"].(string)
	startertest.WaitFor(t, "restore to end", func() bool {
		return e.do("GET", "/v1/operations/"+restoreID, "p", nil).body["status"] == "completed"
	})
	nv := e.do("GET", "/v1/volumes/v1-copy", "p", nil)
	assert.Equal(t, "copy", nv.body["name"])
	assert.Equal(t, "alice", nv.body["owner_id"])
	assert.Regexp(t, `^/var/lib/holdfast/volumes/holdfast-op-[0-9a-f]+\.qcow2$`, nv.body["storage"].(map[string]any)["path"])
	del := e.do("DELETE", "/v1/volumes/v1/snapshots/"+snapID+"?confirm=s1", "p", nil)
	require.Equal(t, 202, del.status, del.raw)
	assert.Equal(t, "delete", del.body["kind"])
}

func TestAPIPolicies(t *testing.T) {
	e := newEnv(t)
	nightly := map[string]any{"kind": "backup", "time_zone": "Europe/Berlin",
		"window": map[string]any{"start": "01:00", "end": "05:00"}, "keep_last": 7, "keep_weekly": 4}

	// PUT /v1/policies/{policy_id}: panel only, strict body, errors name the field.
	requireError(t, e.do("PUT", "/v1/policies/nightly", "", nightly), 401, "Unauthorized", "")
	requireError(t, e.do("PUT", "/v1/policies/nightly", "alice-token", nightly), 403, "Forbidden", "")
	requireError(t, e.do("PUT", "/v1/policies/nightly", "panel-secret", map[string]any{"kind": "backup"}), 400,
		"InvalidArgument", "every: give every, cron or window")
	requireError(t, e.do("PUT", "/v1/policies/nightly", "panel-secret", map[string]any{"kind": "backup",
		"window": map[string]any{"start": "01:00", "end": "05:00"}, "jitter": "6h"}), 400, "InvalidArgument",
		"jitter: must not exceed the window's length 4h0m0s, got 6h0m0s")
	requireError(t, e.do("PUT", "/v1/policies/nightly", "panel-secret", map[string]any{"kind": "backup",
		"every": "1h", "retention": 3}), 400, "InvalidArgument", "")
	requireError(t, e.do("PUT", "/v1/policies/nightly", "panel-secret", map[string]any{"policy_id": "other",
		"kind": "backup", "every": "1h"}), 400, "InvalidArgument", "policy_id: body and path disagree")
	requireError(t, e.do("PUT", "/v1/policies/-bad", "panel-secret", nightly), 400, "InvalidArgument", "")
	requireError(t, e.do("PUT", "/v1/policies/from-config", "panel-secret", nightly), 400, "InvalidArgument",
		`policy_id: policy "from-config" is defined in the config file; change it there`)
	r := e.do("PUT", "/v1/policies/nightly", "panel-secret", nightly)
	require.Equal(t, 200, r.status, r.raw)
	assert.Equal(t, "nightly", r.body["policy_id"])
	assert.Equal(t, "backup", r.body["kind"])
	assert.Equal(t, float64(7), r.body["keep_last"])
	assert.Equal(t, "01:00", r.body["window"].(map[string]any)["start"])

	// PUT /v1/volumes/{volume_id}/policy: owner-scoped like every volume endpoint.
	require.Equal(t, 200, e.do("PUT", "/v1/volumes/v1", "panel-secret", volumeBody("alice", "hv1")).status)
	require.Equal(t, 200, e.do("PUT", "/v1/volumes/bare", "panel-secret", volumeBody("alice", "hv2")).status)
	attach := map[string]any{"policy_id": "nightly"}
	requireError(t, e.do("PUT", "/v1/volumes/v1/policy", "bob-token", attach), 404, "NotFound", "Volume v1 not found.")
	requireError(t, e.do("PUT", "/v1/volumes/v404/policy", "alice-token", attach), 404, "NotFound", "Volume v404 not found.")
	requireError(t, e.do("PUT", "/v1/volumes/v1/policy", "alice-token", map[string]any{}), 400, "InvalidArgument",
		"policy_id: is required (null detaches the volume from its policy)")
	requireError(t, e.do("PUT", "/v1/volumes/v1/policy", "alice-token", map[string]any{"policy_id": "bad id"}), 400,
		"InvalidArgument", "")
	requireError(t, e.do("PUT", "/v1/volumes/v1/policy", "alice-token", map[string]any{"policy_id": "nope"}), 400,
		"InvalidArgument", `policy_id: unknown policy "nope"`)
	requireError(t, e.do("PUT", "/v1/volumes/bare/policy", "alice-token", attach), 409, "NoBackupStorage",
		"Hypervisor has no backup storage configured.")

	r = e.do("PUT", "/v1/volumes/v1/policy", "alice-token", attach)
	require.Equal(t, 200, r.status, r.raw)
	assert.Equal(t, map[string]any{"volume_id": "v1", "policy_id": "nightly", "schedule_id": "policy/nightly/volume/v1"}, r.body)
	t.Cleanup(func() { _ = e.cluster.Client.DeleteSchedule(context.Background(), "nightly", "v1") })
	assert.Equal(t, "nightly", e.do("GET", "/v1/volumes/v1", "alice-token", nil).body["policy_id"])
	ctx := context.Background()
	desc, err := e.cluster.Temporal.ScheduleClient().GetHandle(ctx, "policy/nightly/volume/v1").Describe(ctx)
	require.NoError(t, err)
	require.Len(t, desc.Schedule.Spec.Calendars, 1, "the window opens daily at 01:00 (Berlin) ...")
	assert.Equal(t, 1, desc.Schedule.Spec.Calendars[0].Hour[0].Start)
	assert.Equal(t, 4*time.Hour, desc.Schedule.Spec.Jitter, "... and runs spread over its four hours")
	assert.Equal(t, "Europe/Berlin", desc.Schedule.Spec.TimeZoneName)

	// Re-timing the policy re-times its schedules.
	nightly["window"] = map[string]any{"start": "02:30", "end": "04:00"}
	require.Equal(t, 200, e.do("PUT", "/v1/policies/nightly", "panel-secret", nightly).status)
	desc, err = e.cluster.Temporal.ScheduleClient().GetHandle(ctx, "policy/nightly/volume/v1").Describe(ctx)
	require.NoError(t, err)
	assert.Equal(t, 2, desc.Schedule.Spec.Calendars[0].Hour[0].Start)
	assert.Equal(t, 30, desc.Schedule.Spec.Calendars[0].Minute[0].Start)
	assert.Equal(t, 90*time.Minute, desc.Schedule.Spec.Jitter)

	// Moving to a config policy replaces the schedule; null detaches.
	r = e.do("PUT", "/v1/volumes/v1/policy", "panel-secret", map[string]any{"policy_id": "from-config"})
	require.Equal(t, 200, r.status, r.raw)
	t.Cleanup(func() { _ = e.cluster.Client.DeleteSchedule(context.Background(), "from-config", "v1") })
	_, err = e.cluster.Temporal.ScheduleClient().GetHandle(ctx, "policy/nightly/volume/v1").Describe(ctx)
	require.Error(t, err, "the old schedule is gone")
	r = e.do("PUT", "/v1/volumes/v1/policy", "alice-token", `{"policy_id": null}`)
	require.Equal(t, 200, r.status, r.raw)
	assert.Equal(t, map[string]any{"volume_id": "v1", "policy_id": nil, "schedule_id": nil}, r.body)
	_, err = e.cluster.Temporal.ScheduleClient().GetHandle(ctx, "policy/from-config/volume/v1").Describe(ctx)
	require.Error(t, err)
	_, attached := e.do("GET", "/v1/volumes/v1", "alice-token", nil).body["policy_id"]
	assert.False(t, attached)
}

// With no control worker to answer, a request is retried for a while and then answered 503 Unavailable
// with Retry-After, never a bare 500; once a worker is back the same request succeeds.
func TestAPIControlPlaneTooBusyIsUnavailableNotInternal(t *testing.T) {
	e := newEnv(t)
	r := e.do("PUT", "/v1/volumes/v1", "panel-secret", volumeBody("alice", "hv1"))
	require.Equal(t, 200, r.status, r.raw)
	startControl := e.cluster.StopControl(t)

	start := time.Now()
	r = e.do("GET", "/v1/volumes/v1", "alice-token", nil)
	t.Logf("answered after %s", time.Since(start).Round(time.Millisecond))
	requireError(t, r, 503, starter.ErrUnavailable, "Holdfast is too busy to answer now. Try again in 5 seconds.")
	assert.Equal(t, "5", r.header.Get("Retry-After"))

	startControl()
	r = e.do("GET", "/v1/volumes/v1", "alice-token", nil)
	require.Equal(t, 200, r.status, r.raw)
}

// An owner's instant restore (beyond v1, backward compatible: an optional key): refused for a snapshot,
// naming the field; for a backup, the new volume shows "hydrating": true while the operation's progress
// phase is "hydrating", and neither once it completed. Every answer passes the OpenAPI document.
func TestAPIInstantRestore(t *testing.T) {
	hv := startertest.NewGatedHypervisor()
	hv.Gate.Open()
	hv.Hydrate = startertest.NewGate()
	c := startertest.NewCluster(t, strings.Replace(config, "cooldown: 5m", "cooldown: 0s", 1),
		map[string]activities.Hypervisor{"hv1": hv})
	ts := apitest.NewServer(t, api.New(c.Client, api.Tokens{Panel: []string{"p"},
		Owners: map[string]string{"alice-token": "alice"}}, nil, nil))
	e := &env{t: t, url: ts.URL, client: ts.Client()}
	require.Equal(t, 200, e.do("PUT", "/v1/volumes/v1", "p", volumeBody("alice", "hv1")).status)
	require.Equal(t, 202, e.do("POST", "/v1/volumes/v1/snapshots", "alice-token", nil).status)
	snapID := e.availableSnapshot("v1", "alice-token")
	requireError(t, e.do("POST", "/v1/volumes/v1/restore", "alice-token", map[string]any{"snapshot_id": snapID,
		"mode": "new_volume", "instant": true}), 400, "InvalidArgument",
		"instant: only a restore of a backup to a new volume is instant")
	bk := e.do("POST", "/v1/volumes/v1/backups", "alice-token", nil)
	require.Equal(t, 202, bk.status, bk.raw)
	backupID, _ := bk.body["item_id"].(string)
	startertest.WaitFor(t, "backup", func() bool {
		return e.do("GET", "/v1/operations/"+bk.body["operation_id"].(string), "alice-token", nil).body["status"] == "available"
	})

	r := e.do("POST", "/v1/volumes/v1/restore", "alice-token", map[string]any{"backup_id": backupID,
		"mode": "new_volume", "instant": true})
	require.Equal(t, 202, r.status, r.raw)
	newID, _ := r.body["new_volume_id"].(string)
	opID, _ := r.body["operation_id"].(string)
	startertest.WaitFor(t, "hydrating", func() bool {
		op := e.do("GET", "/v1/operations/"+opID, "alice-token", nil).body
		p, _ := op["progress"].(map[string]any)
		return p != nil && p["phase"] == "hydrating"
	})
	nv := e.do("GET", "/v1/volumes/"+newID, "alice-token", nil)
	require.Equal(t, 200, nv.status, nv.raw)
	assert.Equal(t, true, nv.body["hydrating"])
	requireError(t, e.do("POST", "/v1/volumes/"+newID+"/snapshots", "alice-token", nil), 409, "VolumeBusy",
		"Volume is busy with operation: restore")

	hv.Hydrate.Open()
	startertest.WaitFor(t, "restore to end", func() bool {
		return e.do("GET", "/v1/operations/"+opID, "alice-token", nil).body["status"] == "completed"
	})
	nv = e.do("GET", "/v1/volumes/"+newID, "alice-token", nil)
	_, shown := nv.body["hydrating"]
	assert.False(t, shown, "hydrated: the key is gone")
	_, shown = e.do("GET", "/v1/operations/"+opID, "alice-token", nil).body["instant_fallback"]
	assert.False(t, shown, "it was instant")
}
