// Package apitest checks HTTP traffic of Holdfast's API against its OpenAPI document (docs/openapi.yaml), so
// that the document cannot drift from the server: the API's test suites send every request through Handler,
// NewServer or Transport, and a request or answer the document does not describe fails the test that sent
// it. It is for tests only; the server never imports it.
//
// The rule for one exchange (Check):
//   - a request the document describes (its route, parameters, token and body) must get an answer the
//     document describes for that operation and status, body and headers;
//   - a request the document refuses (a wrong body, a bad ID, no token) may only be refused: any 4xx or 5xx
//     the operation describes, never a 2xx, which would mean the server takes more than the document says;
//   - a request for a route the document does not have (an unknown path or method, a non-canonical path)
//     may only be the router's refusal: 400 InvalidArgument, 404 NotFound or 405 MethodNotAllowed with Allow.
//
// The validator is github.com/pb33f/libopenapi-validator (OpenAPI 3.1), pinned in go.mod.
package apitest

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path"
	"strings"
	"sync"
	"testing"

	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"
	liberrors "github.com/pb33f/libopenapi-validator/errors"
	"github.com/pb33f/libopenapi-validator/helpers"
	"github.com/pb33f/libopenapi-validator/schema_validation"
	"github.com/pb33f/libopenapi/datamodel/high/base"

	"github.com/holdfast/holdfast/docs"
)

// spec is docs/openapi.yaml, parsed once for every test in the process.
type spec struct {
	mu        sync.Mutex // the validator's caches are not documented as safe for concurrent use
	validator validator.Validator
	schemas   schema_validation.SchemaValidator
	// routerErrors are the bodies of the router's own refusals, by status.
	routerErrors map[int]*base.Schema
}

var loadSpec = sync.OnceValues(func() (*spec, error) {
	doc, err := libopenapi.NewDocument(docs.OpenAPIYAML())
	if err != nil {
		return nil, fmt.Errorf("docs/openapi.yaml: %w", err)
	}
	model, err := doc.BuildV3Model()
	if err != nil {
		return nil, fmt.Errorf("docs/openapi.yaml: %w", err)
	}
	v, errs := validator.NewValidator(doc)
	if len(errs) > 0 {
		return nil, fmt.Errorf("docs/openapi.yaml: %v", errs)
	}
	s := &spec{validator: v, schemas: schema_validation.NewSchemaValidator(), routerErrors: map[int]*base.Schema{}}
	for status, name := range map[int]string{http.StatusBadRequest: "BadRequestError",
		http.StatusNotFound: "NotFoundError", http.StatusMethodNotAllowed: "MethodNotAllowedError"} {
		proxy := model.Model.Components.Schemas.GetOrZero(name)
		if proxy == nil {
			return nil, fmt.Errorf("docs/openapi.yaml: no schema %s", name)
		}
		s.routerErrors[status] = proxy.Schema()
	}
	return s, nil
})

// Document checks docs/openapi.yaml against the OpenAPI 3.1 schema and returns what is wrong with it.
func Document() []string {
	s, err := loadSpec()
	if err != nil {
		return []string{err.Error()}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, errs := s.validator.ValidateDocument()
	return messages(errs)
}

// Request returns what the document says is wrong with a request (body is its body, nil for none): an
// unknown path or method, a parameter, the token, the body. Nothing means the document describes it.
func Request(r *http.Request, body []byte) []string {
	s, err := loadSpec()
	if err != nil {
		return []string{err.Error()}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, errs := s.validator.ValidateHttpRequestSync(withBody(r, body))
	return messages(errs)
}

// Check applies the package's rule to one exchange: the request r with its body, answered status with
// header and body. It returns each violation, or nothing.
func Check(r *http.Request, reqBody []byte, status int, header http.Header, body []byte) []string {
	s, err := loadSpec()
	if err != nil {
		return []string{err.Error()}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if why := uncanonical(r); why != "" {
		return s.routerRefusal(status, header, body, []string{why})
	}
	_, reqErrs := s.validator.ValidateHttpRequestSync(withBody(r, reqBody))
	if unknownRoute(reqErrs) {
		return s.routerRefusal(status, header, body, messages(reqErrs))
	}
	var out []string
	if len(reqErrs) > 0 && status < 300 {
		out = append(out, fmt.Sprintf("answered %d to a request the document refuses: %s", status,
			strings.Join(messages(reqErrs), "; ")))
	}
	resp := &http.Response{StatusCode: status, Header: header.Clone(), Body: io.NopCloser(bytes.NewReader(body)),
		ContentLength: int64(len(body)), Request: r}
	if _, errs := s.validator.ValidateHttpResponse(withBody(r, reqBody), resp); len(errs) > 0 {
		out = append(out, "answer: "+strings.Join(messages(errs), "; "))
	}
	return out
}

// routerRefusal checks the answer to a request for a route the document does not have (why is what the
// validator said of the request).
func (s *spec) routerRefusal(status int, header http.Header, body []byte, why []string) []string {
	schema, ok := s.routerErrors[status]
	if !ok {
		return []string{fmt.Sprintf("answered %d to a route the document does not have (%s); only 400, 404 and 405 "+
			"may answer one", status, strings.Join(why, "; "))}
	}
	var out []string
	if ct := header.Get("Content-Type"); ct != "application/json" {
		out = append(out, fmt.Sprintf("answer: Content-Type %q, want application/json", ct))
	}
	if status == http.StatusMethodNotAllowed && header.Get("Allow") == "" {
		out = append(out, "answer: 405 without an Allow header")
	}
	if _, errs := s.schemas.ValidateSchemaBytes(schema, body); len(errs) > 0 {
		out = append(out, "answer: "+strings.Join(messages(errs), "; "))
	}
	return out
}

// unknownRoute says whether the validator found no operation for a request: no such path, not with that
// method, or a path whose normalised readings would select different operations.
func unknownRoute(errs []*liberrors.ValidationError) bool {
	for _, e := range errs {
		if e.ValidationType != helpers.PathValidation {
			continue
		}
		switch e.ValidationSubType {
		case helpers.ValidationMissing, helpers.ValidationMissingOperation, helpers.ValidationAmbiguousPath:
			return true
		}
	}
	return false
}

// uncanonical says why a request's path is none of the document's, whose paths are canonical: an empty,
// "." or ".." segment, a trailing slash or an encoded slash (escaped or not). The validator, like many
// routers, would match some of these to an operation; the API refuses them before choosing one.
func uncanonical(r *http.Request) string {
	decoded, escaped := r.URL.Path, r.URL.EscapedPath()
	switch {
	case strings.Contains(strings.ToLower(escaped), "%2f"):
		return "path " + escaped + " has an encoded slash"
	case path.Clean(decoded) != decoded || path.Clean(escaped) != escaped:
		return "path " + escaped + ` has an empty, "." or ".." segment or a trailing slash`
	}
	return ""
}

// withBody is a copy of r the validator may read: body as its body, whatever r's own has become. The API
// reads every body as JSON, with or without a Content-Type (docs/openapi.yaml says so), so a body sent
// without one is validated as application/json.
func withBody(r *http.Request, body []byte) *http.Request {
	c := r.Clone(r.Context())
	c.Body, c.ContentLength = http.NoBody, 0
	if len(body) > 0 {
		c.Body, c.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
		if c.Header.Get("Content-Type") == "" {
			c.Header.Set("Content-Type", "application/json")
		}
	}
	return c
}

func messages(errs []*liberrors.ValidationError) []string {
	out := make([]string, 0, len(errs))
	for _, e := range errs {
		msg := e.Message
		if e.Reason != "" && e.Reason != e.Message {
			msg += ": " + e.Reason
		}
		for _, f := range e.SchemaValidationErrors {
			where := f.FieldPath
			if where == "" {
				where = "/" + strings.Join(f.InstancePath, "/")
			}
			msg += fmt.Sprintf(" [%s: %s]", where, f.Reason)
		}
		out = append(out, msg)
	}
	return out
}

// Reporter is where a violation is reported: a *testing.T (or B, F) fails the test that sent the request.
type Reporter interface {
	Errorf(format string, args ...any)
}

// Handler returns h checking every exchange with Check; a violation fails t, naming the request's method,
// path and status. The request's body is checked as far as h read it: a handler that refuses a request
// before reading its body (a 401, a 403) never makes the body arrive.
func Handler(t Reporter, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		in := &teeBody{}
		if r.Body != nil && r.Body != http.NoBody {
			in.ReadCloser = r.Body
			r.Body = in
		}
		out := &recorder{ResponseWriter: w}
		sent := r.Clone(r.Context()) // h may change r (its body); keep the request as it came
		h.ServeHTTP(out, r)
		report(t, sent, in.read.Bytes(), out.statusOrOK(), w.Header(), out.body.Bytes())
	})
}

// NewServer is httptest.NewServer over Handler(t, h), closed when t ends.
func NewServer(t testing.TB, h http.Handler) *httptest.Server {
	ts := httptest.NewServer(Handler(t, h))
	t.Cleanup(ts.Close)
	return ts
}

// Transport returns next (http.DefaultTransport when nil) checking every exchange with Check, for clients
// of an API in another process; the answer's body is read whole and handed on.
func Transport(t Reporter, next http.RoundTripper) http.RoundTripper {
	if next == nil {
		next = http.DefaultTransport
	}
	return roundTripper(func(r *http.Request) (*http.Response, error) {
		var reqBody []byte
		if r.Body != nil && r.Body != http.NoBody {
			data, err := io.ReadAll(r.Body)
			_ = r.Body.Close()
			if err != nil {
				return nil, err
			}
			reqBody = data
		}
		resp, err := next.RoundTrip(withBody(r, reqBody))
		if err != nil {
			return nil, err
		}
		body, err := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if err != nil {
			return nil, err
		}
		resp.Body = io.NopCloser(bytes.NewReader(body))
		sent := withBody(r, nil)
		sent.URL.Scheme, sent.URL.Host = "", "" // the document's paths are the server's, wherever it listens
		report(t, sent, reqBody, resp.StatusCode, resp.Header, body)
		return resp, nil
	})
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func report(t Reporter, r *http.Request, reqBody []byte, status int, header http.Header, body []byte) {
	if errs := Check(r, reqBody, status, header, body); len(errs) > 0 {
		t.Errorf("docs/openapi.yaml does not describe %s %s → %d:\n\t%s", r.Method, r.URL.RequestURI(), status,
			strings.Join(errs, "\n\t"))
	}
}

// teeBody keeps what the handler reads of a request's body.
type teeBody struct {
	io.ReadCloser
	read bytes.Buffer
}

func (b *teeBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.read.Write(p[:n])
	return n, err
}

// recorder keeps the status and body a handler writes, passing both on.
type recorder struct {
	http.ResponseWriter
	status int
	body   bytes.Buffer
}

func (w *recorder) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
	w.ResponseWriter.WriteHeader(status)
}

func (w *recorder) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	w.body.Write(p)
	return w.ResponseWriter.Write(p)
}

func (w *recorder) statusOrOK() int {
	if w.status == 0 {
		return http.StatusOK
	}
	return w.status
}

// Unwrap lets http.ResponseController reach the connection (the API sets read deadlines through it).
func (w *recorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }
