package api

import (
	"net/http"
	"path"
	"strings"

	"github.com/holdfast/holdfast/workflows"
)

// ErrMethodNotAllowed is the error type of a known path asked with a method it does not take (405, with Allow).
const ErrMethodNotAllowed = "MethodNotAllowed"

// routeMethods are the methods the API's routes may take, in the order Allow lists them.
var routeMethods = []string{http.MethodDelete, http.MethodGet, http.MethodHead, http.MethodPatch, http.MethodPost,
	http.MethodPut}

// route answers what net/http's ServeMux would answer in its own words: a non-canonical path is refused
// (the mux would redirect it, as an HTML page, to another path), an unknown path is a 404 and a known path
// asked with another method a 405 listing the methods it takes, all as JSON errors.
func (s *Server) route(w http.ResponseWriter, r *http.Request) {
	if msg := uncleanPath(r); msg != "" {
		writeError(w, http.StatusBadRequest, workflows.ErrInvalidArgument, msg)
		return
	}
	if _, pattern := s.mux.Handler(r); pattern != "" {
		s.mux.ServeHTTP(w, r)
		return
	}
	var allow []string
	for _, m := range routeMethods {
		probe := &http.Request{Method: m, URL: r.URL, Host: r.Host, Header: http.Header{}}
		if _, pattern := s.mux.Handler(probe); m != r.Method && pattern != "" {
			allow = append(allow, m)
		}
	}
	if len(allow) == 0 {
		writeError(w, http.StatusNotFound, workflows.ErrNotFound, "No such endpoint: "+r.Method+" "+r.URL.Path)
		return
	}
	w.Header().Set("Allow", strings.Join(allow, ", "))
	writeError(w, http.StatusMethodNotAllowed, ErrMethodNotAllowed,
		"Method "+r.Method+" is not allowed on "+r.URL.Path+"; use "+strings.Join(allow, ", ")+".")
}

// uncleanPath says why a request path is not the one canonical spelling of a route, or "": an empty, "."
// or ".." segment or a trailing slash (escaped or not), or an encoded slash, which would put a "/" inside an
// ID instead of between segments.
func uncleanPath(r *http.Request) string {
	decoded, escaped := r.URL.Path, r.URL.EscapedPath()
	switch {
	case !strings.HasPrefix(decoded, "/"):
		return "path: must start with /"
	case strings.Contains(strings.ToLower(escaped), "%2f"):
		return "path: must not contain an encoded slash (%2F)"
	case path.Clean(decoded) != decoded || path.Clean(escaped) != escaped:
		return `path: must not contain empty, "." or ".." segments or end in /`
	}
	return ""
}
