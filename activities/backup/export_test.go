package backup

import "time"

// SetLeaseClock replaces the clock that times e's lock leases, so a test can let a lease lapse at an exact
// point instead of waiting for it.
func SetLeaseClock(e *Engine, now func() time.Time) { e.leaseClock = now }
