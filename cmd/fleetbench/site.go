package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"go.temporal.io/sdk/client"
	sdklog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/worker"

	"github.com/holdfast/holdfast/activities/metrics"
	"github.com/holdfast/holdfast/cmd/holdfast/serve"
	"github.com/holdfast/holdfast/starter/api"
	"github.com/holdfast/holdfast/workers"
	"github.com/holdfast/holdfast/workers/config"
	"github.com/holdfast/holdfast/workflows"
)

// site is the fleet's control plane in this process: a Temporal dev server on an empty database (its own
// process), the control worker as serve.Control builds it, one hypervisor's agent, the baseline's worker and
// the HTTP API on a loopback port.
type site struct {
	server  *testsuite.DevServer
	logFile *os.File
	agent   *workers.Agent
	workers []worker.Worker
	closers []func()
	http    *http.Server
	apiURL  string
}

// startSite starts everything and returns once every worker polls and the API listens.
func startSite(ctx context.Context, cfg *config.Config, temporalBin, logPath, panelToken string) (*site, error) {
	bin, err := filepath.Abs(temporalBin)
	if err == nil {
		_, err = os.Stat(bin)
	}
	if err != nil {
		return nil, fmt.Errorf("temporal dev server: %w (make temporal)", err)
	}
	s := &site{}
	if s.logFile, err = os.Create(logPath); err != nil {
		return nil, err
	}
	quiet := slog.New(slog.DiscardHandler)
	s.server, err = testsuite.StartDevServer(ctx, testsuite.DevServerOptions{ExistingPath: bin, LogLevel: "error",
		ExtraArgs: workflows.DevServerArgs(), Stdout: s.logFile, Stderr: s.logFile,
		ClientOptions: &client.Options{Namespace: cfg.Temporal.Namespace, Logger: sdklog.NewStructuredLogger(quiet)}})
	if err != nil {
		s.close()
		return nil, fmt.Errorf("temporal dev server: %w", err)
	}
	tc := s.server.Client()
	m := metrics.New(metrics.NewRegistry())
	if s.agent, err = workers.NewAgent(ctx, cfg, hypervisor, m, quiet); err != nil {
		s.close()
		return nil, err
	}
	control, closeBilling, err := serve.Control(ctx, tc, cfg)
	if err != nil {
		s.close()
		return nil, err
	}
	s.closers = append(s.closers, closeBilling)
	ws := append([]worker.Worker{control, newBaselineWorker(tc)}, workers.NewAgentWorkers(tc, cfg, hypervisor, s.agent)...)
	for _, w := range ws {
		if err := w.Start(); err != nil {
			s.close()
			return nil, err
		}
		s.workers = append(s.workers, w)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		s.close()
		return nil, err
	}
	s.http = serve.API(tc, cfg, api.Tokens{Panel: []string{panelToken}}, m, quiet)
	go func() { _ = s.http.Serve(ln) }()
	s.apiURL = "http://" + ln.Addr().String()
	return s, nil
}

// close stops the API, the workers, the agent and the dev server (its database goes with it).
func (s *site) close() {
	if s.http != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = s.http.Shutdown(ctx)
		cancel()
	}
	for _, w := range s.workers {
		w.Stop()
	}
	for _, c := range s.closers {
		c()
	}
	if s.agent != nil {
		s.agent.Close()
	}
	if s.server != nil {
		s.server.Client().Close()
		_ = s.server.Stop()
	}
	_ = s.logFile.Close()
}
