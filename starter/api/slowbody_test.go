package api_test

import (
	"bufio"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/holdfast/holdfast/starter/api"
	"github.com/holdfast/holdfast/starter/api/apitest"
)

// slowBody sends a request whose body (bodyLen bytes announced) trickles in one byte every 50 ms, as a client
// holding connections open would, and reports the answer's status (0 if none) and how long the server kept
// the connection: until it closed it, or until wait ran out (closed false).
func slowBody(t *testing.T, addr, head string, bodyLen int, wait time.Duration) (status int, held time.Duration, closed bool) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer conn.Close()
	start := time.Now()
	_, err = io.WriteString(conn, head+"Content-Type: application/json\r\nContent-Length: "+
		strconv.Itoa(bodyLen)+"\r\n\r\n")
	require.NoError(t, err)
	go func() {
		for i := 0; i < bodyLen; i++ {
			if _, err := conn.Write([]byte{'{'}); err != nil {
				return // the server hung up: what the test wants
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	require.NoError(t, conn.SetReadDeadline(start.Add(wait)))
	br := bufio.NewReader(conn)
	if resp, err := http.ReadResponse(br, nil); err == nil {
		status = resp.StatusCode
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	_, err = io.Copy(io.Discard, br) // returns once the server closes the connection
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return status, time.Since(start), false
	}
	return status, time.Since(start), true
}

// A body trickling in at 1 byte per 50 ms must not hold a connection longer than the API's body timeout,
// whether the caller is authenticated (the handler reads the body: 408) or not (it never does: the server
// would otherwise wait for the whole body before answering 401). The server here is a bare httptest one
// with no timeouts of its own: the handler bounds the body read itself.
func TestAPISlowBodyIsCutOff(t *testing.T) {
	srv := api.New(nil, api.Tokens{Panel: []string{"panel-secret"}}, nil, slog.New(slog.DiscardHandler))
	srv.BodyTimeout = 300 * time.Millisecond
	ts := apitest.NewServer(t, srv)
	addr := strings.TrimPrefix(ts.URL, "http://")

	for _, c := range []struct {
		name, head string
		status     int
	}{
		{"authenticated", "POST /v1/volumes/v1/snapshots HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer panel-secret\r\n",
			http.StatusRequestTimeout},
		{"unauthenticated", "POST /v1/volumes/v1/snapshots HTTP/1.1\r\nHost: api\r\n", http.StatusUnauthorized},
		{"unknown path", "POST /v2/nothing HTTP/1.1\r\nHost: api\r\n", http.StatusNotFound},
	} {
		t.Run(c.name, func(t *testing.T) {
			status, held, closed := slowBody(t, addr, c.head, 200, 3*time.Second) // 200 bytes: 10 s to send
			require.True(t, closed, "connection still open after %s", held)
			assert.Less(t, held, 2*time.Second)
			assert.Equal(t, c.status, status)
		})
	}
}

// The http.Server the commands run the API in bounds headers, bodies and idle keep-alive connections.
func TestAPIHTTPServerHasTimeouts(t *testing.T) {
	srv := api.NewHTTPServer(http.NotFoundHandler())
	assert.Positive(t, srv.ReadHeaderTimeout)
	assert.GreaterOrEqual(t, srv.ReadTimeout, srv.ReadHeaderTimeout+api.BodyReadTimeout)
	assert.Positive(t, srv.IdleTimeout)
	assert.NotNil(t, srv.Handler)
}

// The body deadline ends with the body: a connection kept alive past it serves the next request, with or
// without a body.
func TestAPIBodyTimeoutSparesKeptAliveConnections(t *testing.T) {
	srv := api.New(nil, api.Tokens{Panel: []string{"panel-secret"}}, nil, slog.New(slog.DiscardHandler))
	srv.BodyTimeout = 100 * time.Millisecond
	ts := apitest.NewServer(t, srv)
	reused := 0
	trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
		if i.Reused {
			reused++
		}
	}}
	for i := 0; i < 3; i++ {
		req, err := http.NewRequestWithContext(httptrace.WithClientTrace(t.Context(), trace), "POST",
			ts.URL+"/v1/volumes/v1/snapshots", strings.NewReader(`{"name": 1}`))
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer panel-secret")
		resp, err := ts.Client().Do(req)
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
		time.Sleep(300 * time.Millisecond)
	}
	assert.Equal(t, 2, reused, "one connection serves all three requests")
}
