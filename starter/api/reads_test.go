package api_test

import (
	"context"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/interceptor"

	"github.com/holdfast/holdfast/starter"
	"github.com/holdfast/holdfast/starter/api"
	"github.com/holdfast/holdfast/starter/api/apitest"
	"github.com/holdfast/holdfast/starter/startertest"
	"github.com/holdfast/holdfast/workflows"
)

// calls counts the queries and Updates a Temporal client sends, per workflow.
type calls struct {
	interceptor.ClientInterceptorBase
	mu               sync.Mutex
	queries, updates map[string]int
}

func (c *calls) InterceptClient(next interceptor.ClientOutboundInterceptor) interceptor.ClientOutboundInterceptor {
	return &countingClient{ClientOutboundInterceptorBase: interceptor.ClientOutboundInterceptorBase{Next: next}, c: c}
}

func (c *calls) count(m *map[string]int, workflowID string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if *m == nil {
		*m = map[string]int{}
	}
	(*m)[workflowID]++
}

// of returns the queries and Updates sent to workflowID so far, and starts counting again from zero.
func (c *calls) of(workflowID string) (queries, updates int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	queries, updates = c.queries[workflowID], c.updates[workflowID]
	delete(c.queries, workflowID)
	delete(c.updates, workflowID)
	return queries, updates
}

type countingClient struct {
	interceptor.ClientOutboundInterceptorBase
	c *calls
}

func (o *countingClient) QueryWorkflow(ctx context.Context, in *interceptor.ClientQueryWorkflowInput) (converter.EncodedValue, error) {
	o.c.count(&o.c.queries, in.WorkflowID)
	return o.Next.QueryWorkflow(ctx, in)
}

func (o *countingClient) UpdateWorkflow(ctx context.Context, in *interceptor.ClientUpdateWorkflowInput) (client.WorkflowUpdateHandle, error) {
	o.c.count(&o.c.updates, in.WorkflowID)
	return o.Next.UpdateWorkflow(ctx, in)
}

// A request reads its volume's state once: the read that checks the caller owns the volume is the one the
// request's first checks use (a second query per request cost every operation of a burst a round trip to
// the volume's worker, and a replay when the workflow had left the worker's cache). A request the state
// already refuses never reaches the workflow.
func TestAPIRequestReadsTheVolumeOnce(t *testing.T) {
	e := newEnv(t)
	counted := &calls{}
	tc, err := client.Dial(client.Options{HostPort: e.cluster.Dev.Address, Logger: startertest.QuietLogger{},
		Interceptors: []interceptor.ClientInterceptor{counted}})
	require.NoError(t, err)
	t.Cleanup(tc.Close)
	srv := api.New(starter.New(tc, e.cluster.Config), api.Tokens{Panel: []string{"panel-secret"},
		Owners: map[string]string{"alice-token": "alice"}}, nil, nil)
	ts := apitest.NewServer(t, srv)
	through := *e
	through.url, through.client = ts.URL, ts.Client()

	r := e.do("PUT", "/v1/volumes/v1", "panel-secret", volumeBody("alice", "hv1"))
	require.Equal(t, 200, r.status, r.raw)
	volume := workflows.VolumeWorkflowID("v1")

	r = through.do("POST", "/v1/volumes/v1/snapshots", "alice-token", map[string]any{})
	require.Equal(t, 202, r.status, r.raw)
	queries, updates := counted.of(volume)
	assert.Equal(t, 1, queries, "state queries for one accepted request")
	assert.Equal(t, 1, updates, "Updates for one accepted request")

	// The snapshot is held at its gate: the volume is busy, which the one read shows.
	r = through.do("POST", "/v1/volumes/v1/backups", "alice-token", map[string]any{})
	requireError(t, r, 409, workflows.ErrVolumeBusy, "")
	queries, updates = counted.of(volume)
	assert.Equal(t, 1, queries, "state queries for one refused request")
	assert.Equal(t, 0, updates, "Updates for a request the state refuses")
	e.hv1.Gate.Open()
}
