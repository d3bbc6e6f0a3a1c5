package api_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

// A wrong method on a known path is a 405 listing the methods it takes; an unknown path stays a 404.
func TestAPIWrongMethodIsMethodNotAllowed(t *testing.T) {
	for _, c := range []struct{ method, target, allow string }{
		{"GET", "/v1/volumes/v1/snapshots", "POST"},
		{"POST", "/v1/volumes/v1", "DELETE, GET, HEAD, PUT"},
		{"DELETE", "/v1/operations/op-1", "GET, HEAD"},
		{"GET", "/v1/volumes/v1/restore", "POST"},
		{"POST", "/v1/volumes/v1/snapshots/s1", "DELETE"},
		{"PATCH", "/v1/policies/p1", "PUT"},
		{"POST", "/healthz", "GET, HEAD"},
	} {
		for _, token := range []string{"panel-secret", ""} {
			a := offline(t, c.method, c.target, token, "")
			requireRefused(t, a, http.StatusMethodNotAllowed, "MethodNotAllowed", "")
			assert.Equal(t, c.allow, a.header.Get("Allow"), c.method+" "+c.target)
			assert.Contains(t, a.message, c.method)
		}
	}
	requireRefused(t, offline(t, "GET", "/v2/volumes/v1", "panel-secret", ""), http.StatusNotFound, "NotFound", "")
	requireRefused(t, offline(t, "GET", "/", "", ""), http.StatusNotFound, "NotFound", "")
	requireRefused(t, offline(t, "POST", "/v1/volumes/v1/snapshots/s1/x", "panel-secret", ""), http.StatusNotFound,
		"NotFound", "")
}

// A path with an empty, "." or ".." segment, or an encoded slash, is refused as it is: net/http's ServeMux
// would answer a redirect (an HTML page) to another path, or route "%2F" inside an ID elsewhere.
func TestAPINonCanonicalPathsAreRefusedNotRedirected(t *testing.T) {
	for _, c := range []struct{ method, target string }{
		{"GET", "//v1/volumes/v1"},
		{"GET", "/v1//volumes/v1"},
		{"GET", "/v1/../v1/volumes/v1"},
		{"GET", "/v1/volumes/./v1"},
		{"GET", "/v1/volumes/v1/"},
		{"GET", "/v1/volumes/v1/."},
		{"POST", "/v1/volumes//snapshots"},
		{"POST", "/v1/volumes/v2/../v1/snapshots"},
		{"DELETE", "/v1/volumes/v1/snapshots/.."},
		{"GET", "/v1/volumes/%2e%2e/v1"},
		{"GET", "/v1/volumes/v1%2Fsnapshots"},
		{"POST", "/v1/volumes/v1%2fsnapshots"},
		{"GET", "/v1/volumes/v1%2F"},
		{"DELETE", "/v1/volumes/v1/snapshots/s1%2F..%2F..%2Fbackups%2Fb1"},
		{"GET", "/healthz/"},
	} {
		for _, token := range []string{"panel-secret", ""} {
			a := offline(t, c.method, c.target, token, "")
			requireRefused(t, a, http.StatusBadRequest, "InvalidArgument", "")
			assert.True(t, strings.HasPrefix(a.message, "path: "), a.message)
		}
	}
}
