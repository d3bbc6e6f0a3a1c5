package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"go.temporal.io/api/serviceerror"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/starter"
	"github.com/holdfast/holdfast/starter/api"
	"github.com/holdfast/holdfast/starter/api/apitest"
	"github.com/holdfast/holdfast/starter/api/apiv1"
	workerconfig "github.com/holdfast/holdfast/workers/config"
	"github.com/holdfast/holdfast/workflows"
)

// The fuzz targets drive the real api.New handler in process, over a Temporal client that never reaches a
// server: the API must refuse malformed input before it talks to Temporal, so no fuzz input needs one.
//
// offlineTemporal is a lazy client to a closed port with the calls the handler makes answered at once:
// volume "v1" (owner alice, hypervisor hv1) exists, every other volume is NotFound, and every Update (and
// Describe) fails as if the server were down: the API answers 500 Internal, acceptable only for well-formed
// input.
type offlineTemporal struct {
	client.Client
}

const fuzzMaxBody = 1 << 20

var (
	fuzzIDRE        = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	errNoServer     = serviceerror.NewUnavailable("fuzz: no Temporal server")
	fuzzHandlerOnce sync.Once
	fuzzHandler     http.Handler
)

type encodedJSON []byte

func (e encodedJSON) HasValue() bool         { return len(e) > 0 }
func (e encodedJSON) Get(valuePtr any) error { return json.Unmarshal(e, valuePtr) }

func (offlineTemporal) QueryWorkflow(_ context.Context, workflowID, _, queryType string, _ ...any) (converter.EncodedValue, error) {
	if workflowID != workflows.VolumeWorkflowID("v1") || queryType != workflows.QueryState {
		return nil, serviceerror.NewNotFound("workflow not found for ID: " + workflowID)
	}
	st := workflows.VolumeState{Registered: true, Spec: workflows.VolumeSpec{VolumeID: "v1", Name: "web-data",
		OwnerID: "alice", HypervisorID: "hv1", Plan: workflows.Plan{PlanID: "standard", MaxSnapshots: 5, MaxBackups: 10},
		Storage:       activities.VolumeRef{Type: "file", Path: "/var/lib/holdfast/volumes/web-data.qcow2"},
		BackupStorage: "local", OwnerLimit: 3, Deadline: 2 * time.Hour}}
	data, err := json.Marshal(st)
	return encodedJSON(data), err
}

// DescribeWorkflowExecution fails as if the server were down (a NotFound would make the API retry for 2 s:
// an operation accepted a moment ago may not have started its workflow yet).
func (offlineTemporal) DescribeWorkflowExecution(context.Context, string, string) (*workflowservice.DescribeWorkflowExecutionResponse, error) {
	return nil, errNoServer
}

func (offlineTemporal) UpdateWorkflow(context.Context, client.UpdateWorkflowOptions) (client.WorkflowUpdateHandle, error) {
	return nil, errNoServer
}

func (offlineTemporal) UpdateWithStartWorkflow(context.Context, client.UpdateWithStartWorkflowOptions) (client.WorkflowUpdateHandle, error) {
	return nil, errNoServer
}

func (offlineTemporal) SignalWorkflow(context.Context, string, string, string, any) error {
	return errNoServer
}

func newOfflineHandler(t testing.TB) http.Handler {
	fuzzHandlerOnce.Do(func() {
		lazy, err := client.NewLazyClient(client.Options{HostPort: "127.0.0.1:1", Logger: discardLogger{}})
		if err != nil {
			panic(err)
		}
		cfg, err := workerconfig.Parse(strings.NewReader(`
limits: {cooldown: 0s}
backup_storages: {local: {type: fs, path: /tmp/holdfast-fuzz-unused}}
hypervisor_groups: {g1: {backup_storage: local}}
hypervisors: {hv1: {group: g1, volume_roots: [/var/lib/holdfast/volumes]}}
`))
		if err != nil {
			panic(err)
		}
		fuzzHandler = api.New(starter.New(offlineTemporal{lazy}, cfg),
			api.Tokens{Panel: []string{"panel-secret"}, Owners: map[string]string{"alice-token": "alice"}},
			nil, slog.New(slog.DiscardHandler))
	})
	return fuzzHandler
}

type discardLogger struct{}

func (discardLogger) Debug(string, ...any) {}
func (discardLogger) Info(string, ...any)  {}
func (discardLogger) Warn(string, ...any)  {}
func (discardLogger) Error(string, ...any) {}

// serve runs one request through the handler and checks what every answer must be: JSON with the right
// Content-Type, the error shape when not 2xx, a documented status for each typed error. It returns the
// status and the error type ("" on success).
func serve(t *testing.T, method, target, token string, body []byte) (int, string, string) {
	t.Helper()
	req := httptest.NewRequest(method, target, bytes.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	apitest.Handler(t, newOfflineHandler(t)).ServeHTTP(rec, req)
	res := rec.Result()
	raw, _ := io.ReadAll(res.Body)
	what := method + " " + target + " → " + res.Status + " " + string(raw)
	if ct := res.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q: %s", ct, what)
	}
	if !json.Valid(raw) {
		t.Fatalf("answer is not JSON: %s", what)
	}
	if res.StatusCode >= 200 && res.StatusCode < 300 {
		return res.StatusCode, "", what
	}
	var e struct {
		Error *struct {
			Type    *string `json:"type"`
			Message *string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal(raw, &e); err != nil || e.Error == nil || e.Error.Type == nil || e.Error.Message == nil ||
		*e.Error.Type == "" || *e.Error.Message == "" {
		t.Fatalf("not the error shape {\"error\": {\"type\", \"message\"}}: %s", what)
	}
	errType := *e.Error.Type
	want := api.StatusOf(errType)
	switch errType {
	case "Unauthorized":
		want = http.StatusUnauthorized
	case "Forbidden":
		want = http.StatusForbidden
	}
	if res.StatusCode != want {
		t.Fatalf("type %s must answer %d: %s", errType, want, what)
	}
	return res.StatusCode, errType, what
}

// wellFormed says whether body is what api.md accepts as a JSON body: at most 1 MiB, exactly one JSON
// object (whitespace around it only) in valid UTF-8, every field of its type, and keys exactly as keys lists
// them (keys[""] at the top, keys[k] inside the object at k), each at most once; names without control or
// invisible formatting characters. emptyOK: a body of JSON whitespace only is allowed too.
func wellFormed(body []byte, into any, emptyOK bool, keys map[string][]string) bool {
	if len(body) > fuzzMaxBody {
		return false
	}
	if emptyOK && len(bytes.Trim(body, " \t\r\n")) == 0 {
		return true
	}
	if !json.Valid(body) || !utf8.Valid(body) || !exactKeys(body, keys) {
		return false
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	return dec.Decode(into) == nil
}

// exactKeys walks body's tokens: the top is an object, no object repeats a key, the keys of the top object and
// of its objects named in keys are exactly api.md's (case included), and the names are clean.
func exactKeys(body []byte, keys map[string][]string) bool {
	dec := json.NewDecoder(bytes.NewReader(body))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return false
	}
	var walk func(allowed []string, checked bool, top bool) bool
	walk = func(allowed []string, checked bool, top bool) bool { // after '{', up to and including '}'
		seen := map[string]bool{}
		for dec.More() {
			tok, _ := dec.Token()
			key := tok.(string)
			if seen[key] || checked && !slices.Contains(allowed, key) {
				return false
			}
			seen[key] = true
			tok, _ = dec.Token()
			nested, known := keys[key]
			switch tok {
			case json.Delim('{'):
				if !walk(nested, top && known, false) {
					return false
				}
			case json.Delim('['):
				if !skipArray(dec, walk) {
					return false
				}
			default:
				if name, ok := tok.(string); ok && top && (key == "name" || key == "new_volume_name") && !cleanName(name) {
					return false
				}
			}
		}
		_, _ = dec.Token()
		return true
	}
	return walk(keys[""], true, true)
}

func skipArray(dec *json.Decoder, walk func([]string, bool, bool) bool) bool {
	for dec.More() {
		tok, _ := dec.Token()
		switch tok {
		case json.Delim('{'):
			if !walk(nil, false, false) {
				return false
			}
		case json.Delim('['):
			if !skipArray(dec, walk) {
				return false
			}
		}
	}
	_, _ = dec.Token()
	return true
}

// cleanName: no C0/C1 controls or DEL, no format characters (bidi overrides and isolates, zero-width, BOM), no
// line/paragraph separators, no U+FFFD.
func cleanName(name string) bool {
	for _, r := range name {
		if r < 0x20 || r >= 0x7f && r < 0xa0 || unicode.Is(unicode.Cf, r) || r == 0x2028 || r == 0x2029 || r == 0xfffd {
			return false
		}
	}
	return true
}

// api.md's body keys.
var (
	storageKeys  = []string{"type", "path", "format", "pool", "image", "created_by"}
	registerKeys = map[string][]string{"": {"volume_id", "name", "owner_id", "hypervisor_id", "plan", "storage",
		"size_bytes"}, "storage": storageKeys}
	restoreKeys = map[string][]string{"": {"snapshot_id", "backup_id", "mode", "confirm", "new_volume_id",
		"new_volume_name", "plan", "hypervisor_id", "storage"}, "storage": storageKeys}
	nameKeys = map[string][]string{"": {"name"}}
)

// checkBody is the property of every body-taking endpoint: a malformed body (not well-formed as above) is a
// 400 InvalidArgument naming the body, never anything else; a well-formed one may go on to Temporal (here:
// any typed answer, or 500 Internal from the unreachable server), but never panics and always answers JSON.
func checkBody(t *testing.T, method, target, token string, body []byte, newInto func() any, emptyOK bool,
	keys map[string][]string) {
	status, errType, what := serve(t, method, target, token, body)
	if wellFormed(body, newInto(), emptyOK, keys) {
		if status >= 500 && errType != "Internal" {
			t.Fatalf("a well-formed body got a 5xx other than the unreachable server's: %s", what)
		}
		return
	}
	if status == http.StatusBadRequest && errType == workflows.ErrInvalidArgument {
		return
	}
	t.Fatalf("a malformed body must be 400 InvalidArgument: %s", what)
}

func FuzzRegisterBody(f *testing.F) {
	f.Add([]byte(`{"name": "web-data", "owner_id": "acct-42", "hypervisor_id": "hv1", "plan": "standard",
		"storage": {"type": "file", "path": "/var/lib/holdfast/volumes/web-data.qcow2"}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		checkBody(t, "PUT", "/v1/volumes/v1", "panel-secret", body, func() any { return &apiv1.RegisterVolumeRequest{} }, false,
			registerKeys)
	})
}

func FuzzRestoreBody(f *testing.F) {
	f.Add([]byte(`{"snapshot_id": "s1", "mode": "in_place", "confirm": "web-data"}`))
	f.Add([]byte(`{"backup_id": "b1", "mode": "new_volume", "new_volume_id": "v2", "new_volume_name": "copy"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		// The panel may name a storage for the new volume; an owner token may not (a 400).
		for _, token := range []string{"panel-secret", "alice-token"} {
			checkBody(t, "POST", "/v1/volumes/v1/restore", token, body, func() any { return &apiv1.RestoreRequest{} }, false,
				restoreKeys)
		}
	})
}

func FuzzSnapshotBody(f *testing.F) {
	f.Add([]byte(`{"name": "nightly"}`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, kind := range []string{"snapshots", "backups"} {
			checkBody(t, "POST", "/v1/volumes/v1/"+kind, "alice-token", body, func() any { return &apiv1.CreateItemRequest{} }, true,
				nameKeys)
		}
	})
}

// FuzzPathIDs puts a fuzzed string in each ID path segment (escaped so the URL parses): an ID that does not
// match api.md's pattern is a 400 InvalidArgument (the ID's, or the path's for "", ".", ".." and encoded
// slashes), or a 404 when it changes which route matches; a matching one may go on to Temporal. Any answer
// is JSON, never a redirect.
func FuzzPathIDs(f *testing.F) {
	f.Add("v1", uint8(0))
	f.Add("-bad", uint8(1))
	f.Fuzz(func(t *testing.T, id string, route uint8) {
		esc := url.PathEscape(id)
		type call struct{ method, target string }
		var calls []call
		switch route % 4 {
		case 0:
			calls = []call{{"GET", "/v1/volumes/" + esc}, {"POST", "/v1/volumes/" + esc + "/abort"}}
		case 1:
			calls = []call{{"POST", "/v1/volumes/" + esc + "/snapshots"}, {"GET", "/v1/operations/" + esc}}
		case 2:
			calls = []call{{"DELETE", "/v1/volumes/v1/snapshots/" + esc + "?confirm=" + url.QueryEscape(id)},
				{"DELETE", "/v1/volumes/v1/backups/" + esc}}
		case 3:
			calls = []call{{"DELETE", "/v1/volumes/" + esc + "/backups/b1"}, {"PUT", "/v1/volumes/" + esc + "/policy"}}
		}
		for _, c := range calls {
			status, errType, what := serve(t, c.method, c.target, "alice-token", nil)
			if fuzzIDRE.MatchString(id) {
				if status >= 500 && errType != "Internal" {
					t.Fatalf("a valid ID got a 5xx other than the unreachable server's: %s", what)
				}
				continue
			}
			if !(status == http.StatusBadRequest && errType == workflows.ErrInvalidArgument) &&
				!(status == http.StatusNotFound && errType == workflows.ErrNotFound) {
				t.Fatalf("an ID not matching the pattern must be 400 InvalidArgument (or a 404 route miss): %s", what)
			}
		}
	})
}

// TestAPIBodySizeBoundary pins api.md's 1 MiB body limit on every body-taking endpoint: exactly 1 MiB is
// read and decoded, one byte more is 400 "body: larger than 1 MiB". (Kept out of the fuzz corpora: a 1 MiB
// corpus entry makes the fuzzer spend its time minimizing it.)
func TestAPIBodySizeBoundary(t *testing.T) {
	for _, c := range []struct {
		method, target, token string
		into                  func() any
		keys                  map[string][]string
	}{
		{"PUT", "/v1/volumes/v1", "panel-secret", func() any { return &apiv1.RegisterVolumeRequest{} }, registerKeys},
		{"POST", "/v1/volumes/v1/restore", "alice-token", func() any { return &apiv1.RestoreRequest{} }, restoreKeys},
		{"POST", "/v1/volumes/v1/snapshots", "alice-token", func() any { return &apiv1.CreateItemRequest{} }, nameKeys},
		{"POST", "/v1/volumes/v1/backups", "alice-token", func() any { return &apiv1.CreateItemRequest{} }, nameKeys},
	} {
		field := `{"name": "`
		if c.target == "/v1/volumes/v1/restore" {
			field = `{"confirm": "`
		}
		exact := []byte(field + strings.Repeat("x", fuzzMaxBody-len(field)-2) + `"}`)
		if len(exact) != fuzzMaxBody {
			t.Fatalf("exact body is %d bytes", len(exact))
		}
		status, errType, what := serve(t, c.method, c.target, c.token, exact)
		if status == http.StatusBadRequest && strings.Contains(what, "larger than 1 MiB") {
			t.Errorf("a body of exactly 1 MiB is allowed: %s", what)
		}
		if status >= 500 && errType != "Internal" {
			t.Errorf("unexpected answer: %s", what)
		}
		over := append([]byte(field+"x"), exact[len(field):]...)
		checkBody(t, c.method, c.target, c.token, over, c.into, true, c.keys)
		_, _, what = serve(t, c.method, c.target, c.token, over)
		if !strings.Contains(what, `"body: larger than 1 MiB"`) {
			t.Errorf("one byte over 1 MiB: %s", what)
		}
	}
}
