package main

import (
	"context"
	"log/slog"

	"go.temporal.io/sdk/worker"

	"github.com/holdfast/holdfast/cmd/internal/devserver"
	"github.com/holdfast/holdfast/starter"
	"github.com/holdfast/holdfast/workers"
	"github.com/holdfast/holdfast/workers/config"
)

// site is the recovery site's control plane, started from nothing: a Temporal dev server on an empty
// in-memory database, the control worker, and one hypervisor's agent with all its workers.
type site struct {
	server  *devserver.Server
	agent   *workers.Agent
	workers []worker.Worker
	client  *starter.Client
}

// startSite starts the dev server (Holdfast's search attributes registered, its output in logPath), the
// control worker and hypervisorID's agent, and returns once every worker polls.
func startSite(ctx context.Context, cfg *config.Config, temporalBin, hypervisorID, logPath string) (*site, error) {
	s := &site{}
	var err error
	if s.server, err = devserver.Start(ctx, temporalBin, logPath, cfg.Temporal.Namespace); err != nil {
		return nil, err
	}
	tc := s.server.Client()
	quiet := slog.New(slog.DiscardHandler)
	s.client = starter.New(tc, cfg)
	if s.agent, err = workers.NewAgent(ctx, cfg, hypervisorID, nil, quiet); err != nil {
		s.close()
		return nil, err
	}
	s.workers = append([]worker.Worker{workers.NewControl(tc, s.client.ControlActivities(), worker.Options{})},
		workers.NewAgentWorkers(tc, cfg, hypervisorID, s.agent)...)
	for i, w := range s.workers {
		if err := w.Start(); err != nil {
			s.workers = s.workers[:i]
			s.close()
			return nil, err
		}
	}
	return s, nil
}

// close stops the workers, the agent and the dev server (its database goes with it).
func (s *site) close() {
	for _, w := range s.workers {
		w.Stop()
	}
	if s.agent != nil {
		s.agent.Close()
	}
	if s.server != nil {
		s.server.Stop()
	}
}
