package metrics_test

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/holdfast/holdfast/activities/metrics"
)

// A control worker restarted while an operation ran sees it end without having seen it start: the in-flight
// gauges stay at zero instead of going to -1.
func TestInFlightGaugesNeverGoNegative(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := metrics.NewSDKHandler(reg)
	metrics.InFlight(h, "hv1", "alice", -1) // the end of an operation that started before the restart
	metrics.InFlight(h, "hv1", "alice", 1)
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP holdfast_operations_in_flight Operations running per hypervisor, as this worker saw them start. Sum across workers; never negative (an end this worker did not see start is not counted).
# TYPE holdfast_operations_in_flight gauge
holdfast_operations_in_flight{hypervisor="hv1"} 1
# HELP holdfast_owner_operations_in_flight Operations running per owner, as this worker saw them start. Sum across workers; never negative (an end this worker did not see start is not counted).
# TYPE holdfast_owner_operations_in_flight gauge
holdfast_owner_operations_in_flight{owner="alice"} 1
`), "holdfast_operations_in_flight", "holdfast_owner_operations_in_flight"))
}
