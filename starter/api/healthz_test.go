package api_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/holdfast/holdfast/starter/api"
	"github.com/holdfast/holdfast/starter/api/apitest"
)

// /healthz answers anyone: when Temporal is unreachable it says so, without the dial error's addresses.
func TestAPIHealthzNamesNothingInternal(t *testing.T) {
	h := api.New(nil, api.Tokens{}, func(context.Context) error {
		return errors.New("dial tcp 10.20.30.40:7233: connect: connection refused")
	}, slog.New(slog.DiscardHandler))
	rec := httptest.NewRecorder()
	apitest.Handler(t, h).ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
	require.Equal(t, http.StatusServiceUnavailable, rec.Code)
	assert.NotContains(t, rec.Body.String(), "10.20.30.40")
	assert.NotContains(t, rec.Body.String(), "dial tcp")
	assert.Contains(t, rec.Body.String(), `"status":"unavailable"`)
}
