package workflows

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/testsuite"
)

func TestPolicyWorkflowStoresAValidatedPolicy(t *testing.T) {
	var suite testsuite.WorkflowTestSuite
	env := suite.NewTestWorkflowEnvironment()
	env.RegisterWorkflow(PolicyWorkflow)
	var bad, good *reply
	var got Policy
	var queryErr error
	update := func(p Policy) *reply {
		o := &reply{}
		env.UpdateWorkflow(UpdatePutPolicy, "", &testsuite.TestUpdateCallback{OnAccept: func() {},
			OnReject:   func(err error) { o.done, o.err = true, err },
			OnComplete: func(_ any, err error) { o.done, o.err = true, err }}, p)
		return o
	}
	env.RegisterDelayedCallback(func() {
		_, queryErr = env.QueryWorkflow(QueryPolicy)
		bad = update(Policy{PolicyID: "nightly", Kind: KindBackup})
		good = update(Policy{PolicyID: "nightly", Kind: KindBackup, Every: "24h", KeepLast: 7})
	}, time.Second)
	env.RegisterDelayedCallback(func() {
		v, err := env.QueryWorkflow(QueryPolicy)
		require.NoError(t, err)
		require.NoError(t, v.Get(&got))
		env.CancelWorkflow()
	}, time.Minute)
	env.ExecuteWorkflow(PolicyWorkflow, PolicyInput{PolicyID: "nightly"})
	require.Error(t, queryErr, "no policy stored yet")
	requireRejected(t, bad, ErrInvalidArgument, "every: give every, cron or window")
	require.NoError(t, good.err)
	assert.Equal(t, 7, got.KeepLast)
}
