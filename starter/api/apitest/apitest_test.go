package apitest_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/holdfast/holdfast/starter/api/apitest"
)

func TestDocumentIsValidOpenAPI31(t *testing.T) {
	assert.Empty(t, apitest.Document())
}

func jsonHeader() http.Header { return http.Header{"Content-Type": {"application/json"}} }

// An unknown path or method is reported as such, and only the router's refusals may answer it.
func TestUnknownRouteIsReported(t *testing.T) {
	for _, tc := range []struct{ method, path string }{
		{"GET", "/v1/nothing"}, {"PATCH", "/v1/volumes/v1"}, {"POST", "/v1/operations/op-1"},
	} {
		r := httptest.NewRequest(tc.method, tc.path, nil)
		r.Header.Set("Authorization", "Bearer t")
		assert.NotEmpty(t, apitest.Request(r, nil), "%s %s", tc.method, tc.path)
		assert.NotEmpty(t, apitest.Check(r, nil, 200, jsonHeader(), []byte(`{}`)), "%s %s answered 200", tc.method, tc.path)
	}
	r := httptest.NewRequest("GET", "/v1/nothing", nil)
	assert.Empty(t, apitest.Check(r, nil, 404, jsonHeader(),
		[]byte(`{"error": {"type": "NotFound", "message": "No such endpoint: GET /v1/nothing"}}`)))
	r = httptest.NewRequest("PATCH", "/v1/volumes/v1", nil)
	assert.NotEmpty(t, apitest.Check(r, nil, 405, jsonHeader(),
		[]byte(`{"error": {"type": "MethodNotAllowed", "message": "use GET"}}`)), "a 405 names what is allowed")
	assert.NotEmpty(t, apitest.Check(r, nil, 404, jsonHeader(),
		[]byte(`{"error": {"type": "NotFound", "mesage": "typo"}}`)))
}

// A request the document refuses may be refused, never accepted.
func TestRefusedRequestMayNotBeAccepted(t *testing.T) {
	body := []byte(`{"nmae": "typo"}`)
	r := httptest.NewRequest("POST", "/v1/volumes/v1/snapshots", strings.NewReader(string(body)))
	r.Header.Set("Authorization", "Bearer t")
	r.Header.Set("Content-Type", "application/json")
	require.NotEmpty(t, apitest.Request(r, body))
	assert.Empty(t, apitest.Check(r, body, 400, jsonHeader(),
		[]byte(`{"error": {"type": "InvalidArgument", "message": "nmae: unknown field"}}`)))
	accepted := []byte(`{"operation_id": "op-1", "volume_id": "v1", "kind": "snapshot", "item_id": "sn-1", "status": "pending"}`)
	assert.NotEmpty(t, apitest.Check(r, body, 202, jsonHeader(), accepted))
	assert.NotEmpty(t, apitest.Check(r, body, 400, jsonHeader(),
		[]byte(`{"error": {"type": "VolumeBusy", "message": "a 409's type on a 400"}}`)))
}

// Handler fails the test that sent a request the document does not describe.
func TestHandlerFailsTheTest(t *testing.T) {
	undocumented := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"status": "ok", "uptime": 3})
	})
	var got reports
	rec := httptest.NewRecorder()
	apitest.Handler(&got, undocumented).ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
	require.Len(t, got, 1, "an unknown key in /healthz's answer")
	assert.Contains(t, got[0], "GET /healthz → 200")
	assert.Contains(t, got[0], "uptime")
	assert.Equal(t, `{"status":"ok","uptime":3}`+"\n", rec.Body.String(), "the answer passes through unchanged")
}

// reports collects what a Reporter is told.
type reports []string

func (r *reports) Errorf(format string, args ...any) { *r = append(*r, fmt.Sprintf(format, args...)) }

// Transport checks a client's exchanges with an API in another process, and hands the answer on whole.
func TestTransportChecksAndPassesOn(t *testing.T) {
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Path == "/healthz" {
			_, _ = w.Write([]byte(`{"status": "ok"}`))
			return
		}
		w.WriteHeader(http.StatusTeapot)
		_, _ = w.Write([]byte(`{"error": {"type": "Teapot", "message": "short and stout"}}`))
	}))
	t.Cleanup(ts.Close)
	var got reports
	client := &http.Client{Transport: apitest.Transport(&got, nil)}
	for _, path := range []string{"/healthz", "/v1/volumes/v1/snapshots"} {
		resp, err := client.Post(ts.URL+path, "application/json", strings.NewReader(`{"name": "n"}`))
		require.NoError(t, err)
		data, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		_ = resp.Body.Close()
		assert.Contains(t, string(data), "t", "the body is handed on")
	}
	require.Len(t, got, 2, "POST /healthz is not an operation; a 418 no operation answers")
	assert.Contains(t, got[0], "POST /healthz → 200")
	assert.Contains(t, got[1], "POST /v1/volumes/v1/snapshots → 418")

	got = nil
	resp, err := client.Get(ts.URL + "/healthz")
	require.NoError(t, err)
	_ = resp.Body.Close()
	assert.Empty(t, got, "GET /healthz answered as documented")
}
