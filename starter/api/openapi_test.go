package api_test

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	"github.com/holdfast/holdfast/docs"
	"github.com/holdfast/holdfast/starter/api"
	"github.com/holdfast/holdfast/starter/api/apitest"
)

// GET /v1/openapi.json is docs/openapi.yaml as JSON, for anyone (no token, like /healthz).
func TestAPIServesItsOpenAPIDocument(t *testing.T) {
	want, err := docs.OpenAPIJSON()
	require.NoError(t, err)
	for _, token := range []string{"", "alice-token", "wrong"} {
		a := callFake(t, newFakeBackend(), "GET", "/v1/openapi.json", token, "")
		require.Equal(t, http.StatusOK, a.status, a.body)
		assert.Equal(t, "application/json", a.header.Get("Content-Type"))
		assert.JSONEq(t, string(want), a.body)
	}

	var fromYAML, fromJSON any
	require.NoError(t, yaml.Unmarshal(docs.OpenAPIYAML(), &fromYAML))
	require.NoError(t, json.Unmarshal(want, &fromJSON))
	yamlAsJSON, err := json.Marshal(stringKeys(fromYAML))
	require.NoError(t, err)
	assert.JSONEq(t, string(yamlAsJSON), string(want), "the JSON says what the YAML says")
	assert.Equal(t, "3.1.0", fromJSON.(map[string]any)["openapi"])
}

// stringKeys turns the map[any]any yaml.v3 makes of a mapping with non-string keys (response codes) into
// map[string]any, as JSON has them.
func stringKeys(v any) any {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			v[k] = stringKeys(e)
		}
		return v
	case map[any]any:
		out := map[string]any{}
		for k, e := range v {
			b, _ := json.Marshal(k)
			out[strings.Trim(string(b), `"`)] = stringKeys(e)
		}
		return out
	case []any:
		for i, e := range v {
			v[i] = stringKeys(e)
		}
	}
	return v
}

// Every operation the document describes is one the server routes: asked without a token, each is refused
// by the operation (401), or answered (the public ones), never by the router as an unknown path or method.
// The other direction is the validation every test's requests go through: a route the document does not
// have may only be the router's 404 or 405.
func TestAPIRoutesEveryDocumentedOperation(t *testing.T) {
	var doc struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	data, err := docs.OpenAPIJSON()
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(data, &doc))
	h := api.New(newFakeBackend(), api.Tokens{Panel: []string{"panel-secret"}}, nil, slog.New(slog.DiscardHandler))
	ids := strings.NewReplacer("{volume_id}", "v1", "{snapshot_id}", "sn-1", "{backup_id}", "bk-1",
		"{operation_id}", "op-1", "{policy_id}", "nightly")
	operations := 0
	for path, item := range doc.Paths {
		for method, raw := range item {
			if method == "parameters" {
				continue
			}
			var op struct {
				Security *[]map[string][]string `json:"security"`
			}
			require.NoError(t, json.Unmarshal(raw, &op), "%s %s", method, path)
			operations++
			rec := httptest.NewRecorder()
			apitest.Handler(t, h).ServeHTTP(rec, httptest.NewRequest(strings.ToUpper(method), ids.Replace(path), nil))
			public := op.Security != nil && len(*op.Security) == 0
			if public {
				assert.Less(t, rec.Code, 300, "%s %s: %s", method, path, rec.Body)
			} else {
				assert.Equal(t, http.StatusUnauthorized, rec.Code, "%s %s: %s", method, path, rec.Body)
			}
		}
	}
	assert.Equal(t, 14, operations, "the document's operations; the server routes as many (api.New)")
}

// The validation the tests' traffic goes through catches drift: a real answer with one field renamed, an
// answer with a status the operation does not have, and a route the document does not know are reported.
func TestOpenAPIValidationCatchesDrift(t *testing.T) {
	f := newFakeBackend()
	get := func(path, token string) (*http.Request, fakeAnswer) {
		r := httptest.NewRequest("GET", path, nil)
		r.Header.Set("Authorization", "Bearer "+token)
		return r, callFake(t, f, "GET", path, token, "")
	}
	for _, c := range []struct{ path, token, field, renamed string }{
		{"/v1/volumes/v1", "panel-secret", `"volume_id"`, `"volumeId"`},
		{"/v1/volumes/v1", "alice-token", `"stored_bytes"`, `"storedBytes"`},
		{"/v1/operations/op-1", "panel-secret", `"finished_at"`, `"finishedAt"`},
	} {
		r, a := get(c.path, c.token)
		require.Equal(t, http.StatusOK, a.status, a.body)
		require.Empty(t, apitest.Check(r, nil, a.status, a.header, []byte(a.body)), "the real answer")
		require.Contains(t, a.body, c.field)
		drifted := strings.Replace(a.body, c.field, c.renamed, 1)
		assert.NotEmpty(t, apitest.Check(r, nil, a.status, a.header, []byte(drifted)), "%s renamed %s", c.path, c.field)
	}

	r, a := get("/v1/volumes/v1", "panel-secret")
	assert.NotEmpty(t, apitest.Check(r, nil, http.StatusCreated, a.header, []byte(a.body)), "a status not documented")

	for _, unknown := range []struct{ method, path string }{{"GET", "/v1/volumes"}, {"PATCH", "/v1/volumes/v1"}} {
		r := httptest.NewRequest(unknown.method, unknown.path, nil)
		r.Header.Set("Authorization", "Bearer panel-secret")
		assert.NotEmpty(t, apitest.Request(r, nil), "%s %s", unknown.method, unknown.path)
		assert.NotEmpty(t, apitest.Check(r, nil, http.StatusOK, a.header, []byte(a.body)),
			"%s %s answered 200", unknown.method, unknown.path)
	}
}
