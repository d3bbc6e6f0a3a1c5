package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// maxResponseBytes bounds what we read from the API: a volume with its snapshot and backup lists is a few
// KiB, so anything near this is a misbehaving server, not data to buffer.
const maxResponseBytes = 8 << 20

// requestTimeout bounds one HTTP exchange. Every endpoint answers at once (operations run in the background
// and are polled), so a request that takes longer than this is stuck.
const requestTimeout = 30 * time.Second

// apiClient speaks the HTTP API of docs/api.md and nothing else: the CLI must get exactly the
// answers a panel gets, so it never reaches Temporal or the workers itself.
type apiClient struct {
	base  string // scheme://host[:port][/prefix], no trailing slash
	token string
	http  *http.Client
}

// apiError is an error answer from the API. Status tells a rejection (4xx, exit 3) from a server fault
// (5xx, exit 1); Body is kept so that --json can still print the API's own document.
type apiError struct {
	Status     int
	Type       string
	Message    string
	RetryAfter string // the Retry-After header, as sent
	Body       []byte
}

func (e *apiError) Error() string {
	s := e.Type + ": " + e.Message
	if e.RetryAfter != "" {
		s += " (retry after " + e.RetryAfter + " s)"
	}
	return s
}

// rejected reports whether the API refused the request itself (a guard rail, a bad argument, a missing
// volume) as opposed to failing to serve it.
func (e *apiError) rejected() bool { return e.Status >= 400 && e.Status < 500 }

// unreachableError wraps transport failures so the message says which API we could not reach: the usual
// cause is a wrong --api or HOLDFAST_API, or `holdfast dev` not running.
type unreachableError struct {
	base string
	err  error
}

func (e *unreachableError) Error() string {
	return fmt.Sprintf("cannot reach the Holdfast API at %s: %v", e.base, e.err)
}

func (e *unreachableError) Unwrap() error { return e.err }

// do sends one request and returns the raw body of a 2xx answer. body, when not nil, is sent as JSON.
func (c *apiClient) do(ctx context.Context, method, path string, query url.Values, body any) ([]byte, error) {
	var reqBody io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		reqBody = bytes.NewReader(b)
	}
	u := c.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, u, reqBody)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "holdfast-cli")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		// The caller's own cancellation (Ctrl-C) is not an unreachable API.
		if ctxErr := context.Cause(ctx); ctxErr != nil && errors.Is(err, ctxErr) && !errors.Is(err, context.DeadlineExceeded) {
			return nil, err
		}
		return nil, &unreachableError{base: c.base, err: err}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return nil, &unreachableError{base: c.base, err: err}
	}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return data, nil
	}
	return nil, parseAPIError(resp, data)
}

// parseAPIError reads the contract's {"error": {"type", "message"}} body. Proxies and crashed servers
// answer with something else, so a status-derived type keeps the "error: <Type>: <message>" shape.
func parseAPIError(resp *http.Response, data []byte) *apiError {
	e := &apiError{Status: resp.StatusCode, Body: data}
	if ra := strings.TrimSpace(resp.Header.Get("Retry-After")); ra != "" {
		if _, err := strconv.Atoi(ra); err == nil {
			e.RetryAfter = ra
		}
	}
	var doc struct {
		Error *struct {
			Type    string `json:"type"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal(data, &doc) == nil && doc.Error != nil && doc.Error.Type != "" {
		e.Type, e.Message = doc.Error.Type, doc.Error.Message
		return e
	}
	e.Body = nil // not the API's document: --json must not print it
	e.Type = strings.ReplaceAll(http.StatusText(resp.StatusCode), " ", "")
	if e.Type == "" {
		e.Type = "HTTP" + strconv.Itoa(resp.StatusCode)
	}
	e.Message = firstLine(string(data))
	if e.Message == "" {
		e.Message = fmt.Sprintf("HTTP %d from %s", resp.StatusCode, resp.Request.URL.Redacted())
	}
	return e
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = strings.TrimSpace(s[:i])
	}
	const limit = 200
	if len(s) > limit {
		s = s[:limit] + "…"
	}
	return s
}

// getJSON fetches path and decodes it into v, returning the raw body as well for --json.
func (c *apiClient) getJSON(ctx context.Context, path string, v any) ([]byte, error) {
	data, err := c.do(ctx, http.MethodGet, path, nil, nil)
	if err != nil {
		return nil, err
	}
	if err := decode(data, v); err != nil {
		return nil, err
	}
	return data, nil
}

// decode is lenient about unknown fields (the API may grow) but not about malformed documents.
func decode(data []byte, v any) error {
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("unexpected response from the API: %w", err)
	}
	return nil
}

func volumePath(volumeID string) string { return "/v1/volumes/" + url.PathEscape(volumeID) }

func operationPath(operationID string) string { return "/v1/operations/" + url.PathEscape(operationID) }

// operation is the API's operation document (the 202 answer and GET /v1/operations/{id}), declared here
// rather than taken from workflows so that the CLI depends on the HTTP contract, not on the server's types.
type operation struct {
	OperationID string          `json:"operation_id"`
	VolumeID    string          `json:"volume_id"`
	Kind        string          `json:"kind"`
	ItemID      string          `json:"item_id"`
	Status      string          `json:"status"`
	Progress    *progress       `json:"progress"`
	Error       json.RawMessage `json:"error"`
	StartedAt   string          `json:"started_at"`
	FinishedAt  string          `json:"finished_at"`
}

// progress is an operation's live progress. ETASeconds is a pointer because "0 seconds left" and "not
// known" must render differently.
type progress struct {
	Phase          string   `json:"phase"`
	BytesDone      int64    `json:"bytes_done"`
	BytesTotal     int64    `json:"bytes_total"`
	BytesPerSecond float64  `json:"bytes_per_second"`
	ETASeconds     *float64 `json:"eta_seconds"`
}

// terminal reports whether an operation has ended: a snapshot or backup ends "available", a restore or
// delete "completed".
func terminal(status string) bool {
	switch status {
	case "available", "completed", "failed", "aborted":
		return true
	}
	return false
}

// errorText renders an operation's error, which the API sends as {"type","message"}; a plain string is
// accepted too so that an older or newer server still produces a readable line.
func (op *operation) errorText() string {
	raw := bytes.TrimSpace(op.Error)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return ""
	}
	var typed struct {
		Type    string `json:"type"`
		Message string `json:"message"`
	}
	if json.Unmarshal(raw, &typed) == nil && (typed.Type != "" || typed.Message != "") {
		if typed.Type == "" {
			return typed.Message
		}
		return typed.Type + ": " + typed.Message
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	return string(raw)
}

// volume is GET /v1/volumes/{id}.
type volume struct {
	VolumeID     string `json:"volume_id"`
	Name         string `json:"name"`
	OwnerID      string `json:"owner_id"`
	HypervisorID string `json:"hypervisor_id"`
	Plan         string `json:"plan"`
	Storage      struct {
		Type  string `json:"type"`
		Path  string `json:"path"`
		Pool  string `json:"pool"`
		Image string `json:"image"`
	} `json:"storage"`
	SizeBytes                int64      `json:"size_bytes"`
	ActiveOperation          *operation `json:"active_operation"`
	CooldownRemainingSeconds float64    `json:"cooldown_remaining_seconds"`
	Snapshots                []item     `json:"snapshots"`
	Backups                  []item     `json:"backups"`
}

// item is one snapshot or backup of a volume.
type item struct {
	SnapshotID  string `json:"snapshot_id"`
	BackupID    string `json:"backup_id"`
	Name        string `json:"name"`
	Status      string `json:"status"`
	CreatedAt   string `json:"created_at"`
	SizeBytes   int64  `json:"size_bytes"`
	StoredBytes int64  `json:"stored_bytes"`
	Storage     string `json:"storage"`
}
