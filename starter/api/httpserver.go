package api

import (
	"errors"
	"net/http"
	"time"
)

// Timeouts of the API's connections. A panel sends small JSON bodies at once; a client trickling bytes
// is holding a connection, not sending a request, and is cut off.
const (
	// ReadHeaderTimeout bounds the request line and headers.
	ReadHeaderTimeout = 10 * time.Second
	// BodyReadTimeout bounds a request body, from the moment the handler sees the request.
	BodyReadTimeout = 30 * time.Second
	// IdleTimeout closes keep-alive connections that carry no request.
	IdleTimeout = 2 * time.Minute
)

// NewHTTPServer returns the http.Server the API runs in, with every read bounded. There is no WriteTimeout:
// an answer may legitimately wait for Temporal (up to 20 s of retries before a 503), and a client that stops
// reading answers only fills its own socket buffer. The handler also bounds body reads itself (BodyTimeout),
// so the API is safe in a server built elsewhere too.
func NewHTTPServer(h http.Handler) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: ReadHeaderTimeout,
		ReadTimeout: ReadHeaderTimeout + BodyReadTimeout, IdleTimeout: IdleTimeout}
}

// limitBodyTime gives a request's body BodyTimeout to arrive, authenticated or not: a handler that never reads
// the body (a 401, a 404) still makes the server drain it before answering, under the same deadline. Only
// requests with a body: for one without, the server already listens on the connection for the next request,
// and a deadline there would cancel this request's context once it passed.
func (s *Server) limitBodyTime(w http.ResponseWriter, r *http.Request) {
	if r.Body == nil || r.Body == http.NoBody {
		return
	}
	d := s.BodyTimeout
	if d <= 0 {
		d = BodyReadTimeout
	}
	if err := http.NewResponseController(w).SetReadDeadline(time.Now().Add(d)); err != nil &&
		!errors.Is(err, http.ErrNotSupported) {
		s.log.Warn("cannot bound the request body's read time", "error", err)
	}
}
