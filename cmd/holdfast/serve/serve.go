// Package serve wires Holdfast's long-running parts over a connected Temporal client, once, for every
// command that runs them: `holdfast worker`, `holdfast api` and `holdfast dev` (which runs them all in one
// process). It decides nothing itself: what runs is in workers/ (which process hosts which workflows and
// activities) and starter/ (the Go client and the HTTP API).
package serve

import (
	"context"
	"log/slog"
	"net/http"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"

	"github.com/holdfast/holdfast/activities/metrics"
	"github.com/holdfast/holdfast/starter"
	"github.com/holdfast/holdfast/starter/api"
	"github.com/holdfast/holdfast/workers"
	"github.com/holdfast/holdfast/workers/config"
)

// Control builds the control-plane worker (not started): every workflow, the control activities over a
// Go client, and billing when a sink is configured (its schedule made sure of). close releases billing's
// ledger.
func Control(ctx context.Context, c client.Client, cfg *config.Config) (w worker.Worker, close func(), err error) {
	hf := starter.New(c, cfg)
	worker.SetStickyWorkflowCacheSize(cfg.Control.WorkflowCache)
	w = workers.NewControl(c, hf.ControlActivities(), workers.ControlOptions(cfg.Control))
	closeBilling, err := workers.StartBilling(ctx, w, c, cfg.Billing)
	if err != nil {
		return nil, nil, err
	}
	return w, closeBilling, nil
}

// API builds the HTTP API's server (not listening): the handler over a Go client, healthy while Temporal
// answers, counting guard-rail rejections in m.
func API(c client.Client, cfg *config.Config, tokens api.Tokens, m *metrics.Metrics, log *slog.Logger) *http.Server {
	health := func(ctx context.Context) error { _, err := c.CheckHealth(ctx, nil); return err }
	handler := api.New(starter.New(c, cfg), tokens, health, log)
	handler.OnRejection = m.GuardRailRejected
	return api.NewHTTPServer(handler)
}
