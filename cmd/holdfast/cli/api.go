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

	"github.com/holdfast/holdfast/starter/api/apiv1"
)

// maxResponseBytes bounds what we read from the API: a volume with its snapshot and backup lists is a few
// KiB, so anything near this is a misbehaving server, not data to buffer.
const maxResponseBytes = 8 << 20

// requestTimeout bounds one HTTP exchange. Every endpoint answers at once (operations run in the background
// and are polled), so a request that takes longer than this is stuck.
const requestTimeout = 30 * time.Second

// apiClient speaks the HTTP API of docs/api.md and nothing else: the CLI must get exactly the
// answers a panel gets, so it never reaches Temporal or the workers itself. Bodies are the API's own types
// (package apiv1, which the server builds its answers from), so the two cannot disagree about a field.
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
	var doc apiv1.ErrorResponse
	if json.Unmarshal(data, &doc) == nil && doc.Error.Type != "" {
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

// terminal reports whether an operation has ended: a snapshot or backup ends "available", a restore or
// delete "completed".
func terminal(status string) bool {
	switch status {
	case "available", "completed", "failed", "aborted":
		return true
	}
	return false
}

// errorText renders an operation's error as "<Type>: <message>", or the message alone when untyped.
func errorText(op *apiv1.Operation) string {
	e := op.Error
	switch {
	case e == nil:
		return ""
	case e.Type == "":
		return e.Message
	}
	return e.Type + ": " + e.Message
}
