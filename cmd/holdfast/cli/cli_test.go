package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"
)

func TestMain(m *testing.M) {
	// Watch polls every 500ms in real use; tests only need the order of polls, not their pace.
	pollInterval = 2 * time.Millisecond
	os.Exit(m.Run())
}

type result struct {
	code           int
	stdout, stderr string
}

// run runs the CLI against srv with the panel token in the environment, as a script would.
func run(t *testing.T, srv *httptest.Server, args ...string) result {
	t.Helper()
	env := map[string]string{"HOLDFAST_TOKEN": "tok-panel"}
	if srv != nil {
		env["HOLDFAST_API"] = srv.URL
	}
	return runEnv(t, env, args...)
}

func runEnv(t *testing.T, env map[string]string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := Run(ctx, args, &stdout, &stderr, func(k string) string { return env[k] })
	return result{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// expectStderr checks stderr to the byte: scripts and people read these exact messages.
func (r result) expectStderr(t *testing.T, want string) {
	t.Helper()
	if r.stderr != want {
		t.Errorf("stderr %q, want %q", r.stderr, want)
	}
}

// jsonDoc parses stdout as exactly one JSON object, as --json promises.
func (r result) jsonDoc(t *testing.T) map[string]any {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	var doc map[string]any
	if err := dec.Decode(&doc); err != nil {
		t.Fatalf("stdout %q is not a JSON object: %v", r.stdout, err)
	}
	if dec.More() {
		t.Fatalf("stdout %q: more than one JSON document", r.stdout)
	}
	return doc
}

func (r result) expect(t *testing.T, code int) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, code, r.stdout, r.stderr)
	}
}

// onlyRequest asserts the CLI sent exactly one request and returns it.
func onlyRequest(t *testing.T, f *fakeAPI) recordedRequest {
	t.Helper()
	reqs := f.recorded()
	if len(reqs) != 1 {
		t.Fatalf("%d requests, want 1: %+v", len(reqs), reqs)
	}
	return reqs[0]
}

func expectRequest(t *testing.T, got recordedRequest, method, path, rawQuery, body string) {
	t.Helper()
	if got.Method != method || got.Path != path || got.RawQuery != rawQuery {
		t.Errorf("request %s %s?%s, want %s %s?%s", got.Method, got.Path, got.RawQuery, method, path, rawQuery)
	}
	if got.Body != body {
		t.Errorf("body %q, want %q", got.Body, body)
	}
	if body != "" && got.ContentType != "application/json" {
		t.Errorf("Content-Type %q, want application/json", got.ContentType)
	}
	if got.Auth != "Bearer tok-panel" {
		t.Errorf("Authorization %q, want Bearer tok-panel", got.Auth)
	}
}

func TestSnapshotAccepted(t *testing.T) {
	f, srv := newFakeAPI(t)
	f.addVolume("vol1", "web-data")
	// Flags after the argument, API and token as flags rather than env.
	r := runEnv(t, nil, "snapshot", "vol1", "--name", "nightly", "--api", srv.URL+"/", "--token", "tok-panel")
	r.expect(t, ExitOK)
	expectRequest(t, onlyRequest(t, f), "POST", "/v1/volumes/vol1/snapshots", "", `{"name":"nightly"}`)
	want := "snapshot of vol1 accepted: operation op-1 (snapshot snap-1)\nfollow it with: holdfast watch op-1\n"
	if r.stdout != want || r.stderr != "" {
		t.Errorf("stdout %q stderr %q, want stdout %q", r.stdout, r.stderr, want)
	}
}

func TestBackupWithoutNameLetsTheAPIChoose(t *testing.T) {
	f, srv := newFakeAPI(t)
	f.addVolume("vol1", "web-data")
	r := run(t, srv, "backup", "--json", "vol1")
	r.expect(t, ExitOK)
	expectRequest(t, onlyRequest(t, f), "POST", "/v1/volumes/vol1/backups", "", `{}`)
	if op := r.jsonDoc(t); op["operation_id"] != "op-1" || op["kind"] != "backup" || op["status"] != "pending" {
		t.Errorf("--json printed %v, want the 202 document", op)
	}
}

func TestVolumeBusyIsRejected(t *testing.T) {
	f, srv := newFakeAPI(t)
	v := f.addVolume("vol1", "web-data")
	v.active = &fakeOperation{id: "op-9", volumeID: "vol1", kind: "backup"}
	r := run(t, srv, "snapshot", "vol1")
	r.expect(t, ExitRejected)
	r.expectStderr(t, "error: VolumeBusy: Volume is busy with operation: backup\n")
	if r.stdout != "" {
		t.Errorf("stdout %q, want nothing", r.stdout)
	}
}

func TestCooldownShowsRetryAfter(t *testing.T) {
	f, srv := newFakeAPI(t)
	f.addVolume("vol1", "web-data").cooldown = 42
	r := run(t, srv, "backup", "vol1")
	r.expect(t, ExitRejected)
	want := "error: Cooldown: Volume is in cooldown. Try again in 42 seconds. (retry after 42 s)\n"
	if r.stderr != want {
		t.Errorf("stderr %q, want %q", r.stderr, want)
	}
}

func TestJSONErrorPrintsTheAPIDocument(t *testing.T) {
	f, srv := newFakeAPI(t)
	f.addVolume("vol1", "web-data").cooldown = 7
	r := run(t, srv, "snapshot", "vol1", "--json")
	r.expect(t, ExitRejected)
	if doc, _ := r.jsonDoc(t)["error"].(map[string]any); doc["type"] != "Cooldown" {
		t.Errorf("stdout %q: want the API's error document", r.stdout)
	}
	if !strings.HasPrefix(r.stderr, "error: Cooldown: ") {
		t.Errorf("stderr %q", r.stderr)
	}
}

func TestRestore(t *testing.T) {
	for _, tc := range []struct {
		name     string
		args     []string
		body     string
		code     int
		stderr   string
		requests int
	}{
		{
			name: "in place", args: []string{"restore", "vol1", "--snapshot", "snap-1", "--in-place", "--confirm", "web-data"},
			body: `{"snapshot_id":"snap-1","mode":"in_place","confirm":"web-data"}`, code: ExitOK, requests: 1,
		},
		{
			name: "in place, wrong name", args: []string{"restore", "--in-place", "--confirm", "web", "vol1", "--snapshot", "snap-1"},
			body: `{"snapshot_id":"snap-1","mode":"in_place","confirm":"web"}`, code: ExitRejected, requests: 1,
			stderr: "error: ConfirmationMismatch: confirm: type the volume's name \"web-data\" to restore in place\n",
		},
		{
			name: "new volume, defaults", args: []string{"restore", "vol1", "--backup", "back-1", "--new-volume", "vol2"},
			body: `{"backup_id":"back-1","mode":"new_volume","new_volume_id":"vol2","new_volume_name":"vol2"}`, code: ExitOK, requests: 1,
		},
		{
			name: "new volume, everything",
			args: []string{"restore", "vol1", "--backup", "back-1", "--new-volume", "vol2", "--new-name", "copy", "--plan", "big", "--hypervisor", "hv2"},
			body: `{"backup_id":"back-1","mode":"new_volume","new_volume_id":"vol2","new_volume_name":"copy","plan":"big","hypervisor_id":"hv2"}`,
			code: ExitOK, requests: 1,
		},
		{
			name: "new volume elsewhere, at a path", args: []string{"restore", "vol1", "--backup", "back-1", "--new-volume", "vol2",
				"--hypervisor", "hv2", "--path", "/srv/volumes/vol2.qcow2"},
			body: `{"backup_id":"back-1","mode":"new_volume","new_volume_id":"vol2","new_volume_name":"vol2","hypervisor_id":"hv2",` +
				`"storage":{"type":"file","path":"/srv/volumes/vol2.qcow2"}}`, code: ExitOK, requests: 1,
		},
		{
			name: "new volume in a Ceph pool", args: []string{"restore", "vol1", "--backup", "back-1", "--new-volume", "vol2", "--pool", "rbd-b"},
			body: `{"backup_id":"back-1","mode":"new_volume","new_volume_id":"vol2","new_volume_name":"vol2",` +
				`"storage":{"type":"rbd","pool":"rbd-b","image":"vol2"}}`, code: ExitOK, requests: 1,
		},
		{
			name: "instant", args: []string{"restore", "vol1", "--backup", "back-1", "--new-volume", "vol2", "--instant"},
			body: `{"backup_id":"back-1","mode":"new_volume","new_volume_id":"vol2","new_volume_name":"vol2","instant":true}`,
			code: ExitOK, requests: 1,
		},
		{name: "instant in place", args: []string{"restore", "vol1", "--backup", "b", "--in-place", "--confirm", "x", "--instant"}, code: ExitUsage},
		{name: "path and pool", args: []string{"restore", "vol1", "--backup", "b", "--new-volume", "v2", "--path", "/x", "--pool", "p"}, code: ExitUsage},
		{name: "path in place", args: []string{"restore", "vol1", "--backup", "b", "--in-place", "--confirm", "x", "--path", "/x"}, code: ExitUsage},
		{
			name: "unknown backup", args: []string{"restore", "vol1", "--backup", "nope", "--new-volume", "vol2"},
			body: `{"backup_id":"nope","mode":"new_volume","new_volume_id":"vol2","new_volume_name":"vol2"}`, code: ExitRejected, requests: 1,
			stderr: "error: NotFound: Item nope not found.\n",
		},
		{name: "no mode", args: []string{"restore", "vol1", "--snapshot", "snap-1"}, code: ExitUsage},
		{name: "both modes", args: []string{"restore", "vol1", "--snapshot", "snap-1", "--in-place", "--confirm", "x", "--new-volume", "v2"}, code: ExitUsage},
		{name: "in place unconfirmed", args: []string{"restore", "vol1", "--snapshot", "snap-1", "--in-place"}, code: ExitUsage},
		{name: "no source", args: []string{"restore", "vol1", "--new-volume", "v2"}, code: ExitUsage},
		{name: "two sources", args: []string{"restore", "vol1", "--snapshot", "s", "--backup", "b", "--new-volume", "v2"}, code: ExitUsage},
		{name: "bad new ID", args: []string{"restore", "vol1", "--snapshot", "snap-1", "--new-volume", "../x"}, code: ExitUsage},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, srv := newFakeAPI(t)
			v := f.addVolume("vol1", "web-data")
			v.items["snap-1"], v.items["back-1"] = "daily", "weekly"
			r := run(t, srv, tc.args...)
			r.expect(t, tc.code)
			if reqs := f.recorded(); len(reqs) != tc.requests {
				t.Fatalf("%d requests, want %d", len(reqs), tc.requests)
			}
			if tc.requests == 1 {
				expectRequest(t, f.recorded()[0], "POST", "/v1/volumes/vol1/restore", "", tc.body)
			}
			if tc.stderr != "" && r.stderr != tc.stderr {
				t.Errorf("stderr %q, want %q", r.stderr, tc.stderr)
			}
			if tc.code == ExitOK && !strings.Contains(r.stdout, "operation op-1") {
				t.Errorf("stdout %q: want the operation ID", r.stdout)
			}
			if tc.code == ExitUsage && !strings.Contains(r.stderr, "holdfast restore VOLUME") {
				t.Errorf("stderr %q: want the command's synopsis", r.stderr)
			}
		})
	}
}

func TestDeleteSendsConfirmationInQuery(t *testing.T) {
	f, srv := newFakeAPI(t)
	v := f.addVolume("vol1", "web-data")
	v.items["snap-1"], v.items["back-1"] = "before upgrade", "weekly&more"

	r := run(t, srv, "delete", "vol1", "--snapshot", "snap-1", "--confirm", "before upgrade")
	r.expect(t, ExitOK)
	expectRequest(t, onlyRequest(t, f), "DELETE", "/v1/volumes/vol1/snapshots/snap-1", "confirm=before+upgrade", "")

	v.active = nil
	f.requests = nil
	r = run(t, srv, "delete", "vol1", "--backup", "back-1", "--confirm", "weekly&more")
	r.expect(t, ExitOK)
	expectRequest(t, onlyRequest(t, f), "DELETE", "/v1/volumes/vol1/backups/back-1", "confirm=weekly%26more", "")

	v.active = nil
	f.requests = nil
	r = run(t, srv, "delete", "vol1", "--backup", "back-1", "--confirm", "weekly")
	r.expect(t, ExitRejected)
	r.expectStderr(t, "error: ConfirmationMismatch: confirm: type the name \"weekly&more\" to delete\n")

	f.requests = nil
	r = run(t, srv, "delete", "vol1", "--backup", "back-1")
	r.expect(t, ExitUsage)
	if len(f.recorded()) != 0 {
		t.Error("an unconfirmed delete reached the API")
	}
}

func TestAbort(t *testing.T) {
	f, srv := newFakeAPI(t)
	v := f.addVolume("vol1", "web-data")

	r := run(t, srv, "abort", "vol1")
	r.expect(t, ExitRejected)
	r.expectStderr(t, "error: NoActiveOperation: Volume has no active operation.\n")
	expectRequest(t, onlyRequest(t, f), "POST", "/v1/volumes/vol1/abort", "", "")

	v.active = f.addOperation("op-7", "vol1", "backup", "back-7", map[string]any{"status": "creating"})
	r = run(t, srv, "abort", "vol1", "--wait")
	// The operation ends "aborted", which is what abort asked for.
	r.expect(t, ExitOK)
	if want := "abort requested for backup operation op-7 on vol1\nbackup operation op-7 on vol1 aborted\n"; r.stdout != want {
		t.Errorf("stdout %q, want %q", r.stdout, want)
	}
}

func TestWatchToCompletion(t *testing.T) {
	f, srv := newFakeAPI(t)
	f.addOperation("op-5", "vol1", "backup", "back-5",
		map[string]any{"status": "pending"},
		map[string]any{"status": "creating", "progress": map[string]any{"phase": "uploading", "bytes_done": 1 << 30,
			"bytes_total": 4 << 30, "bytes_per_second": 312000000, "eta_seconds": 10}},
		map[string]any{"status": "available", "finished_at": "2026-01-02T03:05:10Z"},
	)
	r := run(t, srv, "watch", "op-5")
	r.expect(t, ExitOK)
	// Plain output (the buffer is no terminal): the first state at once, then nothing for a second (the
	// polls here are 2ms apart), then the outcome.
	want := "backup op-5: pending\nbackup op-5 of vol1 available (backup back-5, took 1m05s)\n"
	if r.stdout != want {
		t.Errorf("stdout %q, want %q", r.stdout, want)
	}
	for _, req := range f.recorded() {
		expectRequest(t, req, "GET", "/v1/operations/op-5", "", "")
	}
}

func TestWatchFailedAndAborted(t *testing.T) {
	f, srv := newFakeAPI(t)
	f.addOperation("op-6", "vol1", "backup", "back-6",
		map[string]any{"status": "creating"},
		map[string]any{"status": "failed", "error": map[string]any{"type": "StorageUnavailable", "message": "bucket unreachable"}},
	)
	f.addOperation("op-8", "vol1", "restore", "snap-1", map[string]any{"status": "aborted"})

	r := run(t, srv, "watch", "op-6")
	r.expect(t, ExitFailed)
	r.expectStderr(t, "error: operation op-6 (backup of vol1) failed: StorageUnavailable: bucket unreachable\n")

	r = run(t, srv, "watch", "op-8", "--json")
	r.expect(t, ExitFailed)
	if op := r.jsonDoc(t); op["status"] != "aborted" {
		t.Errorf("--json stdout %q: want the final operation document", r.stdout)
	}
	r.expectStderr(t, "error: operation op-8 (restore of vol1) aborted\n")

	r = run(t, srv, "watch", "op-404")
	r.expect(t, ExitRejected)
	r.expectStderr(t, "error: NotFound: Operation op-404 not found.\n")
}

func TestWatchRidesOutAnAPIRestart(t *testing.T) {
	f, srv := newFakeAPI(t)
	f.addOperation("op-5", "vol1", "snapshot", "snap-5", map[string]any{"status": "available"})
	f.failPolls = 3
	r := run(t, srv, "watch", "op-5")
	r.expect(t, ExitOK)
	if len(f.recorded()) != 4 {
		t.Errorf("%d polls, want 4", len(f.recorded()))
	}

	f.failPolls = maxTransientFailures + 1
	r = run(t, srv, "watch", "op-5")
	r.expect(t, ExitError)
	r.expectStderr(t, "error: Unavailable: Temporal is unreachable.\n")
}

func TestWaitWatchesTheStartedOperation(t *testing.T) {
	f, srv := newFakeAPI(t)
	f.addVolume("vol1", "web-data")
	r := run(t, srv, "snapshot", "vol1", "--wait", "--json")
	r.expect(t, ExitOK)
	// One JSON document: the final state, not the 202 answer followed by it.
	if op := r.jsonDoc(t); op["status"] != "available" || op["operation_id"] != "op-1" {
		t.Errorf("final document %v", op)
	}
	reqs := f.recorded()
	if len(reqs) != 2 || reqs[1].Method != "GET" || reqs[1].Path != "/v1/operations/op-1" {
		t.Errorf("requests %+v: want the POST, then polls of op-1", reqs)
	}

}

func TestWaitFailed(t *testing.T) {
	f, srv := newFakeAPI(t)
	f.addVolume("vol1", "web-data")
	f.scripts["backup"] = []map[string]any{{"status": "creating"}, {"status": "failed",
		"error": map[string]any{"type": "Deadline", "message": "backup exceeded its deadline"}}}
	r := run(t, srv, "backup", "vol1", "--wait")
	r.expect(t, ExitFailed)
	if want := "backup of vol1 accepted: operation op-1 (backup back-1)\nbackup op-1: creating\n"; r.stdout != want {
		t.Errorf("stdout %q, want %q", r.stdout, want)
	}
	r.expectStderr(t, "error: operation op-1 (backup of vol1) failed: Deadline: backup exceeded its deadline\n")
}

func TestStatus(t *testing.T) {
	f, srv := newFakeAPI(t)
	v := f.addVolume("vol1", "web-data")
	v.cooldown = 90
	v.doc["snapshots"] = []any{map[string]any{"snapshot_id": "snap-1", "name": "daily", "status": "available",
		"created_at": "2026-01-02T03:04:05Z", "size_bytes": 1 << 20}}
	v.doc["backups"] = []any{map[string]any{"backup_id": "back-1", "name": "weekly", "status": "available",
		"created_at": "2026-01-03T05:04:05.123456789+01:00", "size_bytes": 256 << 20, "stored_bytes": 10 << 20, "storage": "local"}}
	v.active = f.addOperation("op-3", "vol1", "backup", "back-2", map[string]any{"status": "creating",
		"progress": map[string]any{"phase": "uploading", "bytes_done": 64 << 20, "bytes_total": 256 << 20,
			"bytes_per_second": 2e7, "eta_seconds": 10}})

	r := run(t, srv, "status", "vol1")
	r.expect(t, ExitOK)
	expectRequest(t, onlyRequest(t, f), "GET", "/v1/volumes/vol1", "", "")
	want := `Volume      vol1
Name        web-data
Owner       demo
Hypervisor  local
Plan        standard
Storage     file /var/lib/holdfast/volumes/vol1.qcow2
Size        256.0 MiB
Active      backup op-3: uploading 25.0% (64.0 MiB of 256.0 MiB) 20.0 MB/s ETA 10s
Cooldown    1m30s remaining before the next operation

Snapshots (1):
  ID      NAME   STATUS     CREATED               SIZE
  snap-1  daily  available  2026-01-02 03:04:05Z  1.0 MiB
Backups (1):
  ID      NAME    STATUS     CREATED               SIZE       STORED    STORAGE
  back-1  weekly  available  2026-01-03 04:04:05Z  256.0 MiB  10.0 MiB  local
`
	if r.stdout != want {
		t.Errorf("stdout:\n%s\nwant:\n%s", r.stdout, want)
	}

	r = run(t, srv, "status", "vol1", "--json")
	r.expect(t, ExitOK)
	if doc := r.jsonDoc(t); doc["volume_id"] != "vol1" {
		t.Errorf("--json stdout %q", r.stdout)
	}

	r = run(t, srv, "status", "other")
	r.expect(t, ExitRejected)
	r.expectStderr(t, "error: NotFound: Volume other not found.\n")
}

func TestList(t *testing.T) {
	f, srv := newFakeAPI(t)
	a := f.addVolume("vol1", "web-data")
	a.doc["snapshots"] = []any{map[string]any{"snapshot_id": "snap-1", "name": "daily", "status": "available",
		"created_at": "2026-01-02T03:04:05Z", "size_bytes": 1 << 20}}
	b := f.addVolume("vol2", "db")
	b.doc["backups"] = []any{map[string]any{"backup_id": "back-1", "name": "", "status": "creating",
		"created_at": "2026-01-04T00:00:00Z", "size_bytes": 0, "stored_bytes": 0, "storage": "s3-eu"}}

	r := run(t, srv, "list", "vol1", "vol2")
	r.expect(t, ExitOK)
	want := `VOLUME  KIND      ID      NAME   STATUS     CREATED               SIZE     STORED  STORAGE
vol1    snapshot  snap-1  daily  available  2026-01-02 03:04:05Z  1.0 MiB  -       -
vol2    backup    back-1  -      creating   2026-01-04 00:00:00Z  0 B      0 B     s3-eu
`
	if r.stdout != want {
		t.Errorf("stdout:\n%s\nwant:\n%s", r.stdout, want)
	}

	r = run(t, srv, "list", "--json", "vol1", "vol2")
	r.expect(t, ExitOK)
	var docs []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &docs); err != nil || len(docs) != 2 || docs[1]["volume_id"] != "vol2" {
		t.Errorf("--json stdout %q (%v)", r.stdout, err)
	}

	// A missing volume fails the whole listing before anything is printed.
	r = run(t, srv, "list", "vol1", "gone")
	r.expect(t, ExitRejected)
	if r.stdout != "" {
		t.Errorf("stdout %q, want nothing", r.stdout)
	}
}

func TestUsageErrors(t *testing.T) {
	f, srv := newFakeAPI(t)
	f.addVolume("vol1", "web-data")
	for _, args := range [][]string{
		{},
		{"frobnicate"},
		{"snapshot"},
		{"snapshot", "vol1", "vol2"},
		{"snapshot", "vol1", "--bogus"},
		{"snapshot", "vol1", "--name"},
		{"snapshot", "vol/../x"},
		{"status", "vol1", "--wait"}, // --wait is only for commands that start an operation
		{"watch"},
		{"list"},
		{"snapshot", "vol1", "--api", "localhost:8080"},
		{"help", "frobnicate"},
	} {
		r := run(t, srv, args...)
		if r.code != ExitUsage {
			t.Errorf("%q: exit %d, want %d (stderr %q)", args, r.code, ExitUsage, r.stderr)
		}
		if r.stderr == "" {
			t.Errorf("%q: nothing on stderr", args)
		}
	}
	if reqs := f.recorded(); len(reqs) != 0 {
		t.Errorf("usage errors sent %d requests", len(reqs))
	}
}

func TestDoubleDashEndsFlags(t *testing.T) {
	c := lookup("list")
	var o options
	args, err := c.parse([]string{"--json", "a", "--", "-b", "--api"}, &o)
	if err != nil || !o.json || strings.Join(args, " ") != "a -b --api" {
		t.Errorf("parse = %q, %v (json %v)", args, err, o.json)
	}
}

func TestConnectionRefused(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	srv.Close() // nothing listens there any more
	r := run(t, srv, "snapshot", "vol1")
	r.expect(t, ExitError)
	if !strings.HasPrefix(r.stderr, "error: cannot reach the Holdfast API at "+srv.URL+": ") {
		t.Errorf("stderr %q", r.stderr)
	}
}

func TestServerErrorIsNotARejection(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "upstream connect error", http.StatusBadGateway)
	}))
	defer srv.Close()
	r := run(t, srv, "status", "vol1", "--json")
	r.expect(t, ExitError)
	r.expectStderr(t, "error: BadGateway: upstream connect error\n")
	if r.stdout != "" {
		t.Errorf("stdout %q: a proxy's page is not the API's JSON", r.stdout)
	}
}

func TestMissingTokenIsRejected(t *testing.T) {
	f, srv := newFakeAPI(t)
	f.addVolume("vol1", "web-data")
	r := runEnv(t, map[string]string{"HOLDFAST_API": srv.URL}, "status", "vol1")
	r.expect(t, ExitRejected)
	r.expectStderr(t, "error: Unauthorized: Missing or unknown token.\nhint: pass --token or set HOLDFAST_TOKEN\n")
	if got := onlyRequest(t, f).Auth; got != "" {
		t.Errorf("Authorization %q sent without a token", got)
	}
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"help"}, {"-h"}, {"--help"}} {
		r := runEnv(t, nil, args...)
		r.expect(t, ExitOK)
		for _, want := range []string{"holdfast snapshot VOLUME", "holdfast restore VOLUME", "holdfast list VOLUME...",
			"holdfast watch OPERATION_ID", "--api URL", "--token TOKEN", "--json", "--wait", "HOLDFAST_API",
			"HOLDFAST_TOKEN", "Exit codes:", "3  rejected", "4  the operation failed"} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("%q: help lacks %q", args, want)
			}
		}
	}
	r := runEnv(t, nil, "restore", "-h")
	r.expect(t, ExitOK)
	for _, want := range []string{"--in-place", "--new-volume ID", "--confirm NAME", "--wait", "--api URL"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("restore -h lacks %q:\n%s", want, r.stdout)
		}
	}
	if r := runEnv(t, nil, "help", "watch"); r.code != ExitOK || strings.Contains(r.stdout, "--wait") {
		t.Errorf("help watch: exit %d, stdout %q (watch takes no --wait)", r.code, r.stdout)
	}
}

func TestIsCommand(t *testing.T) {
	for _, name := range []string{"snapshot", "backup", "restore", "delete", "abort", "status", "list", "watch"} {
		if !IsCommand(name) {
			t.Errorf("IsCommand(%q) = false", name)
		}
	}
	for _, name := range []string{"worker", "agent", "api", "dev", "help", ""} {
		if IsCommand(name) {
			t.Errorf("IsCommand(%q) = true: cmd/holdfast runs it", name)
		}
	}
}

// TestRestoreLatestBackup: --latest-backup restores the newest backup whose status is available (not a
// newer one still being created, nor an older one), and refuses a volume that has none.
func TestRestoreLatestBackup(t *testing.T) {
	f, srv := newFakeAPI(t)
	v := f.addVolume("vol1", "web-data")
	v.items["back-1"], v.items["back-2"], v.items["back-3"] = "old", "new", "running"
	v.doc["backups"] = []any{
		map[string]any{"backup_id": "back-2", "name": "new", "status": "available", "created_at": "2026-01-03T00:00:00Z"},
		map[string]any{"backup_id": "back-3", "name": "running", "status": "creating", "created_at": "2026-01-04T00:00:00Z"},
		map[string]any{"backup_id": "back-1", "name": "old", "status": "available", "created_at": "2026-01-02T00:00:00Z"},
	}
	r := run(t, srv, "restore", "vol1", "--latest-backup", "--new-volume", "vol2")
	r.expect(t, ExitOK)
	reqs := f.recorded()
	if len(reqs) != 2 {
		t.Fatalf("%d requests, want the volume's GET and the restore", len(reqs))
	}
	expectRequest(t, reqs[1], "POST", "/v1/volumes/vol1/restore", "",
		`{"backup_id":"back-2","mode":"new_volume","new_volume_id":"vol2","new_volume_name":"vol2"}`)

	r = run(t, srv, "restore", "vol1", "--latest-backup", "--backup", "back-1", "--new-volume", "vol2")
	r.expect(t, ExitUsage)

	f.addVolume("vol9", "empty")
	r = run(t, srv, "restore", "vol9", "--latest-backup", "--new-volume", "vol2")
	if r.code == ExitOK || !strings.Contains(r.stderr, "no available backup") {
		t.Fatalf("a volume without backups: exit %d, %q", r.code, r.stderr)
	}
}
