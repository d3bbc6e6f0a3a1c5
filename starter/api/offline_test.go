package api_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/holdfast/holdfast/starter/api/apitest"
)

// answer is one response of the offline handler (fuzz_test.go): every check here is refused, or not, before
// the API talks to Temporal.
type answer struct {
	status  int
	header  http.Header
	errType string
	message string
	raw     string
}

func offline(t *testing.T, method, target, token, body string) answer {
	t.Helper()
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	apitest.Handler(t, newOfflineHandler(t)).ServeHTTP(rec, req)
	a := answer{status: rec.Code, header: rec.Header(), raw: rec.Body.String()}
	var e struct {
		Error struct{ Type, Message string } `json:"error"`
	}
	_ = json.Unmarshal(rec.Body.Bytes(), &e)
	a.errType, a.message = e.Error.Type, e.Error.Message
	return a
}

func requireRefused(t *testing.T, a answer, status int, errType, message string) {
	t.Helper()
	require.Equal(t, status, a.status, a.raw)
	assert.Equal(t, "application/json", a.header.Get("Content-Type"), a.raw)
	assert.Empty(t, a.header.Get("Location"), "no redirects")
	assert.Equal(t, errType, a.errType, a.raw)
	if message != "" {
		assert.Equal(t, message, a.message)
	}
}
