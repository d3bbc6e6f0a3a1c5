package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"go.temporal.io/sdk/worker"

	"github.com/holdfast/holdfast/activities/metrics"
	"github.com/holdfast/holdfast/cmd/holdfast/serve"
	"github.com/holdfast/holdfast/cmd/internal/devserver"
	"github.com/holdfast/holdfast/starter/api"
	"github.com/holdfast/holdfast/workers"
	"github.com/holdfast/holdfast/workers/config"
)

// site is the fleet's control plane in this process: a Temporal dev server on an empty database (its own
// process), the control worker as serve.Control builds it, one hypervisor's agent, the baseline's worker and
// the HTTP API on a loopback port.
type site struct {
	server  *devserver.Server
	agent   *workers.Agent
	workers []worker.Worker
	closers []func()
	http    *http.Server
	apiURL  string
	// metricsURL is the dev server's Prometheus endpoint.
	metricsURL string
}

// startSite starts everything and returns once every worker polls and the API listens.
func startSite(ctx context.Context, cfg *config.Config, temporalBin, logPath, panelToken string) (*site, error) {
	s := &site{}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s.metricsURL = fmt.Sprintf("http://127.0.0.1:%d/metrics", port)
	if s.server, err = devserver.Start(ctx, temporalBin, logPath, cfg.Temporal.Namespace,
		"--metrics-port", strconv.Itoa(port)); err != nil {
		return nil, err
	}
	tc := s.server.Client()
	quiet := slog.New(slog.DiscardHandler)
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
	ws := append([]worker.Worker{control, newBaselineWorker(tc, cfg)}, workers.NewAgentWorkers(tc, cfg, hypervisor, s.agent)...)
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

// freePort is a loopback TCP port nothing listens on now.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
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
		s.server.Stop()
	}
}
