package agent

import "time"

// SetCallHeartbeatEvery makes hypervisor activities heartbeat every d until restore is called.
func SetCallHeartbeatEvery(d time.Duration) (restore func()) {
	old := callHeartbeatEvery
	callHeartbeatEvery = d
	return func() { callHeartbeatEvery = old }
}
