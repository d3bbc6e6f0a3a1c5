package agent

import "time"

// SetCallHeartbeatEvery makes hypervisor activities heartbeat every d until restore is called.
func SetCallHeartbeatEvery(d time.Duration) (restore func()) {
	old := callHeartbeatEvery
	callHeartbeatEvery = d
	return func() { callHeartbeatEvery = old }
}

// StopExports stops every export a serves, and its HTTP server, as if its process had died (tests only: an
// exported method would be an activity).
func StopExports(a *Activities) {
	a.http.mu.Lock()
	if a.http.srv != nil {
		_ = a.http.srv.Close()
		a.http.srv = nil
	}
	var ids []string
	for id := range a.http.live {
		ids = append(ids, id)
	}
	a.http.mu.Unlock()
	for _, id := range ids {
		a.http.end(id)
	}
	a.exports.mu.Lock()
	ids = ids[:0]
	for id := range a.exports.live {
		ids = append(ids, id)
	}
	a.exports.mu.Unlock()
	for _, id := range ids {
		a.exports.end(id)
	}
}

// ExportCount is the number of exports a serves.
func ExportCount(a *Activities) int { return a.exportCount() }
