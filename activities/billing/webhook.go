package billing

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"go.temporal.io/sdk/temporal"

	"github.com/holdfast/holdfast/activities/billing/contract"
)

// Webhook posts batches of line items to the panel.
//
// Contract: one POST per batch, JSON body {"hour": ..., "items": [...]} where every item carries its own
// idempotency_key ("vol1/backup/2026-11-23T14"): the panel must deduplicate per item on it, which is what
// makes a re-run hour (whose batches may be cut differently) safe. The Idempotency-Key header identifies the
// batch: a hash of its item keys, so it is the same on every retry of the batch. 2xx and 409 (already
// recorded) are success; 429, 5xx and connection errors are returned as retryable errors (the activity's
// retry policy backs off); any other 4xx is a non-retryable contract.ErrWebhookRejected.
type Webhook struct {
	url   string
	token string
	http  *http.Client
}

// NewWebhook returns a webhook sink; token may be empty.
func NewWebhook(url, token string) *Webhook {
	return &Webhook{url: url, token: token, http: &http.Client{Timeout: 30 * time.Second}}
}

// Body is what the webhook receives.
type Body struct {
	Hour  time.Time           `json:"hour"`
	Items []contract.LineItem `json:"items"`
}

// BatchKey is the Idempotency-Key header of a batch: stable for the same items.
func BatchKey(items []contract.LineItem) string {
	h := sha256.New()
	for _, it := range items {
		h.Write([]byte(it.IdempotencyKey))
		h.Write([]byte{'\n'})
	}
	return "holdfast-billing-" + hex.EncodeToString(h.Sum(nil))[:32]
}

// Post sends one batch.
func (w *Webhook) Post(ctx context.Context, in contract.EmitInput) error {
	body, err := json.Marshal(Body{Hour: in.Hour, Items: in.Items})
	if err != nil {
		return temporal.NewNonRetryableApplicationError("encode line items", contract.ErrWebhookRejected, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.url, bytes.NewReader(body))
	if err != nil {
		return temporal.NewNonRetryableApplicationError("build webhook request", contract.ErrWebhookRejected, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", BatchKey(in.Items))
	if w.token != "" {
		req.Header.Set("Authorization", "Bearer "+w.token)
	}
	resp, err := w.http.Do(req)
	if err != nil {
		return fmt.Errorf("billing webhook: %w", err) // connection error: retryable
	}
	defer resp.Body.Close()
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	switch code := resp.StatusCode; {
	case code >= 200 && code < 300, code == http.StatusConflict:
		return nil
	case code == http.StatusTooManyRequests, code >= 500:
		return fmt.Errorf("billing webhook: HTTP %d: %s", code, bytes.TrimSpace(snippet))
	default:
		return temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("billing webhook: HTTP %d: %s", code, bytes.TrimSpace(snippet)), contract.ErrWebhookRejected, nil)
	}
}
