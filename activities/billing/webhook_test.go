package billing_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"

	"github.com/holdfast/holdfast/activities/billing"
	"github.com/holdfast/holdfast/activities/billing/contract"
)

func TestWebhookClassifiesAnswers(t *testing.T) {
	for _, tc := range []struct {
		code             int
		ok, nonRetryable bool
	}{
		{200, true, false}, {201, true, false}, {204, true, false}, {409, true, false},
		{429, false, false}, {500, false, false}, {503, false, false},
		{400, false, true}, {401, false, true}, {404, false, true}, {422, false, true},
	} {
		var key string
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			key = r.Header.Get("Idempotency-Key")
			w.WriteHeader(tc.code)
		}))
		err := billing.NewWebhook(srv.URL, "").Post(context.Background(), contract.EmitInput{Hour: hour, Items: items("vol1")})
		srv.Close()
		assert.Equal(t, billing.BatchKey(items("vol1")), key)
		if tc.ok {
			assert.NoError(t, err, "HTTP %d", tc.code)
			continue
		}
		require.Error(t, err, "HTTP %d", tc.code)
		var app *temporal.ApplicationError
		isRejected := errors.As(err, &app) && app.Type() == contract.ErrWebhookRejected && app.NonRetryable()
		assert.Equal(t, tc.nonRetryable, isRejected, "HTTP %d: %v", tc.code, err)
	}
}

func TestWebhookConnectionErrorIsRetryable(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	err := billing.NewWebhook(url, "").Post(context.Background(), contract.EmitInput{Hour: hour, Items: items("vol1")})
	require.Error(t, err)
	var app *temporal.ApplicationError
	assert.False(t, errors.As(err, &app) && app.NonRetryable())
}

func TestBatchKeyIsStableAndDistinct(t *testing.T) {
	assert.Equal(t, billing.BatchKey(items("vol1", "vol2")), billing.BatchKey(items("vol1", "vol2")))
	assert.NotEqual(t, billing.BatchKey(items("vol1", "vol2")), billing.BatchKey(items("vol1")))
}

func TestNewValidatesSinks(t *testing.T) {
	_, err := billing.New(nil, nil, billing.SinkConfig{WebhookURL: "ftp://panel"})
	assert.ErrorContains(t, err, "webhook_url")
	_, err = billing.New(nil, nil, billing.SinkConfig{LedgerPath: "/proc/holdfast-nope/ledger.jsonl"})
	assert.ErrorContains(t, err, "ledger_path")
}
