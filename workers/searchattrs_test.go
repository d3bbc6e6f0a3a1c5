package workers_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/operatorservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/testsuite"

	"github.com/holdfast/holdfast/starter/startertest"
	"github.com/holdfast/holdfast/workers"
	"github.com/holdfast/holdfast/workflows"
)

func TestControlWorkerRefusesANamespaceWithoutItsSearchAttributes(t *testing.T) {
	ctx := context.Background()
	addr := startertest.FreeAddress(t)
	// An older deployment: the first three registered, the rest not.
	var args []string
	for _, sa := range workflows.SearchAttributes[:3] {
		args = append(args, "--search-attribute", sa.Name+"="+sa.Type)
	}
	dev, err := testsuite.StartDevServer(ctx, testsuite.DevServerOptions{
		ExistingPath: startertest.TemporalBin(t), LogLevel: "error", ExtraArgs: args,
		ClientOptions: &client.Options{HostPort: addr, Namespace: "default", Logger: startertest.QuietLogger{}},
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = dev.Stop() })
	c := dev.Client()

	err = workers.CheckSearchAttributes(ctx, c, "default")
	require.Error(t, err)
	assert.NotErrorIs(t, err, workers.ErrSearchAttributesUnchecked)
	assert.Contains(t, err.Error(), "HoldfastActiveOperation is missing; HoldfastOperations is missing")
	assert.Contains(t, err.Error(),
		"temporal operator search-attribute create --namespace default --name HoldfastOperations --type KeywordList")

	// Registered, but HoldfastOperations with the wrong type.
	_, err = c.OperatorService().AddSearchAttributes(ctx, &operatorservice.AddSearchAttributesRequest{
		Namespace: "default", SearchAttributes: map[string]enumspb.IndexedValueType{
			workflows.SearchActiveOperation: enumspb.INDEXED_VALUE_TYPE_KEYWORD,
			workflows.SearchOperations:      enumspb.INDEXED_VALUE_TYPE_KEYWORD,
		}})
	require.NoError(t, err)
	err = workers.CheckSearchAttributes(ctx, c, "default")
	require.Error(t, err)
	assert.Equal(t, "namespace default: search attribute HoldfastOperations is Keyword, want KeywordList", err.Error())

	// A namespace set up as deploy/README.md says.
	full := startertest.StartDevServer(t)
	fc, err := client.Dial(client.Options{HostPort: full.Address, Logger: startertest.QuietLogger{}})
	require.NoError(t, err)
	defer fc.Close()
	require.NoError(t, workers.CheckSearchAttributes(ctx, fc, "default"))
}
