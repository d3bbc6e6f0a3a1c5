// Package devserver starts the Temporal dev server the benchmarks (cmd/drbench, cmd/fleetbench) run their
// control plane on: the CLI binary the Makefile builds, an empty in-memory database, Holdfast's dev-server
// flags (workflows.DevServerArgs), its output in a log file, and a quiet client.
package devserver

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"go.temporal.io/sdk/client"
	sdklog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/testsuite"

	"github.com/holdfast/holdfast/workflows"
)

// Server is a running dev server and its log file.
type Server struct {
	*testsuite.DevServer
	log *os.File
}

// Start starts temporalBin's dev server for namespace, writing its output to logPath; extraArgs are added to
// Holdfast's flags (a benchmark's --metrics-port, say).
func Start(ctx context.Context, temporalBin, logPath, namespace string, extraArgs ...string) (*Server, error) {
	bin, err := filepath.Abs(temporalBin)
	if err == nil {
		_, err = os.Stat(bin)
	}
	if err != nil {
		return nil, fmt.Errorf("temporal dev server: %w (make temporal)", err)
	}
	log, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	quiet := slog.New(slog.DiscardHandler)
	dev, err := testsuite.StartDevServer(ctx, testsuite.DevServerOptions{ExistingPath: bin, LogLevel: "error",
		ExtraArgs: append(workflows.DevServerArgs(), extraArgs...), Stdout: log, Stderr: log,
		ClientOptions: &client.Options{Namespace: namespace, Logger: sdklog.NewStructuredLogger(quiet)}})
	if err != nil {
		_ = log.Close()
		return nil, fmt.Errorf("temporal dev server: %w", err)
	}
	return &Server{DevServer: dev, log: log}, nil
}

// Stop closes the client, stops the server (its database goes with it) and closes the log.
func (s *Server) Stop() {
	s.Client().Close()
	_ = s.DevServer.Stop()
	_ = s.log.Close()
}
