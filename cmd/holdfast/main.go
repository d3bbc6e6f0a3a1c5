// Command holdfast is Holdfast's single binary: the servers (worker, agent, api, dev) and the CLI
// (snapshot, backup, restore, delete, abort, status, list, watch) that talks to the HTTP API.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"go.temporal.io/sdk/client"

	"github.com/holdfast/holdfast/activities/metrics"
	"github.com/holdfast/holdfast/cmd/holdfast/cli"
	"github.com/holdfast/holdfast/cmd/holdfast/dev"
	"github.com/holdfast/holdfast/cmd/holdfast/serve"
	"github.com/holdfast/holdfast/starter"
	"github.com/holdfast/holdfast/starter/api"
	"github.com/holdfast/holdfast/workers"
	"github.com/holdfast/holdfast/workers/config"
)

const usage = `holdfast — durable snapshots, backups and restores of block volumes

Servers:
  holdfast dev [--cooldown D] [--deadline D]       everything on this machine (make run)
  holdfast worker [control] --config FILE [--metrics ADDR]        control-plane worker (workflows)
  holdfast agent --config FILE --hypervisor ID [--metrics ADDR]   one hypervisor's activities
  holdfast api --config FILE [--listen ADDR] [--metrics ADDR]     the HTTP API
      (tokens: HOLDFAST_PANEL_TOKEN=t1,t2 and HOLDFAST_OWNER_TOKENS=owner=token,...)

` + adminUsage + `
CLI (talks to the API; see 'holdfast help cli'):
  snapshot | backup | restore | delete | abort | status | list | watch
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || (args[0] == "help" && len(args) == 1) {
		fmt.Fprint(stdout, usage)
		return 0
	}
	if args[0] == "help" && len(args) > 1 && args[1] == "cli" {
		return cli.Run(ctx, []string{"help"}, stdout, stderr, os.Getenv)
	}
	if cli.IsCommand(args[0]) {
		return cli.Run(ctx, args, stdout, stderr, os.Getenv)
	}
	log := slog.New(slog.NewJSONHandler(stderr, nil))
	var err error
	switch args[0] {
	case "dev":
		err = runDev(ctx, args[1:], stdout)
	case "worker":
		err = runWorker(ctx, args[1:], log)
	case "agent":
		err = runAgent(ctx, args[1:], log)
	case "api":
		err = runAPI(ctx, args[1:], log)
	default:
		admin, ok := adminCommands[args[0]]
		if !ok {
			fmt.Fprintf(stderr, "holdfast: unknown command %q\n\n%s", args[0], usage)
			return 2
		}
		err = admin(ctx, args[1:], stdout, log)
	}
	if err != nil {
		var usageErr usageError
		if errors.As(err, &usageErr) {
			fmt.Fprintf(stderr, "holdfast %s: %v\n", args[0], err)
			return 2
		}
		fmt.Fprintf(stderr, "holdfast %s: %v\n", args[0], err)
		return 1
	}
	return 0
}

type usageError struct{ error }

func parse(fs *flag.FlagSet, args []string) error {
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	return nil
}

func runDev(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	cooldown := fs.Duration("cooldown", -1, "override the cooldown (e.g. 10s)")
	deadline := fs.Duration("deadline", -1, "override the operation deadline (e.g. 10m)")
	if err := parse(fs, args); err != nil {
		return err
	}
	o, err := dev.Defaults(os.Getenv)
	if err != nil {
		return usageError{err}
	}
	if *cooldown >= 0 {
		o.Cooldown = cooldown
	}
	if *deadline >= 0 {
		o.Deadline = deadline
	}
	o.Out = stdout
	o.Log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	return dev.Run(ctx, o)
}

func loadConfig(fs *flag.FlagSet, args []string) (*config.Config, error) {
	path := fs.String("config", os.Getenv("HOLDFAST_CONFIG"), "config file (env HOLDFAST_CONFIG)")
	if err := parse(fs, args); err != nil {
		return nil, err
	}
	if *path == "" {
		return nil, usageError{errors.New("--config is required")}
	}
	return config.Load(*path)
}

// serveMetrics starts a process's /metrics endpoint; the returned options carry the SDK's metrics into it.
func serveMetrics(ctx context.Context, addr string, log *slog.Logger) (client.Options, *metrics.Metrics) {
	reg := metrics.NewRegistry()
	go func() {
		if err := metrics.Serve(ctx, addr, reg); err != nil {
			log.Error("metrics endpoint failed", "address", addr, "error", err)
		}
	}()
	return client.Options{Logger: log, MetricsHandler: metrics.NewSDKHandler(reg)}, metrics.New(reg)
}

func runWorker(ctx context.Context, args []string, log *slog.Logger) error {
	if len(args) > 0 && args[0] == "control" {
		args = args[1:]
	}
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	metricsAddr := fs.String("metrics", "127.0.0.1:9464", "Prometheus /metrics address")
	cfg, err := loadConfig(fs, args)
	if err != nil {
		return err
	}
	opts, _ := serveMetrics(ctx, *metricsAddr, log)
	c, err := workers.Dial(cfg, opts)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := workers.CheckSearchAttributes(ctx, c, cfg.Temporal.Namespace); err != nil {
		if !errors.Is(err, workers.ErrSearchAttributesUnchecked) {
			return err
		}
		log.Warn("could not check the namespace's search attributes; make sure they are registered", "error", err)
	}
	if err := starter.New(c, cfg).SyncConfigPolicies(ctx); err != nil {
		return err
	}
	w, closeBilling, err := serve.Control(ctx, c, cfg)
	if err != nil {
		return err
	}
	defer closeBilling()
	log.Info("control worker starting", "config", cfg.String(), "billing", cfg.Billing.Enabled())
	return w.Run(interruptOn(ctx))
}

func runAgent(ctx context.Context, args []string, log *slog.Logger) error {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	hypervisorID := fs.String("hypervisor", "", "this host's hypervisor_id")
	metricsAddr := fs.String("metrics", "127.0.0.1:9465", "Prometheus /metrics address")
	cfg, err := loadConfig(fs, args)
	if err != nil {
		return err
	}
	if *hypervisorID == "" {
		return usageError{errors.New("--hypervisor is required")}
	}
	opts, m := serveMetrics(ctx, *metricsAddr, log)
	agent, err := workers.NewAgent(ctx, cfg, *hypervisorID, m, log.With("hypervisor_id", *hypervisorID))
	if err != nil {
		return err
	}
	defer agent.Close()
	c, err := workers.Dial(cfg, opts)
	if err != nil {
		return err
	}
	defer c.Close()
	log.Info("agent starting", "hypervisor_id", *hypervisorID, "libvirt", agent.LibvirtUsed,
		"storages", cfg.StorageNames())
	ws := workers.NewAgentWorkers(c, cfg, *hypervisorID, agent)
	return workers.Run(ctx, ws...)
}

func runAPI(ctx context.Context, args []string, log *slog.Logger) error {
	fs := flag.NewFlagSet("api", flag.ContinueOnError)
	listen := fs.String("listen", envOr("HOLDFAST_API_ADDR", "127.0.0.1:8080"), "listen address")
	metricsAddr := fs.String("metrics", "127.0.0.1:9466", "Prometheus /metrics address")
	cfg, err := loadConfig(fs, args)
	if err != nil {
		return err
	}
	tokens, err := tokensFromEnv()
	if err != nil {
		return usageError{err}
	}
	opts, m := serveMetrics(ctx, *metricsAddr, log)
	c, err := workers.Dial(cfg, opts)
	if err != nil {
		return err
	}
	defer c.Close()
	srv := serve.API(c, cfg, tokens, m, log)
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	log.Info("API listening", "address", ln.Addr().String())
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// tokensFromEnv reads HOLDFAST_PANEL_TOKEN (comma-separated) and HOLDFAST_OWNER_TOKENS (owner=token,...).
func tokensFromEnv() (api.Tokens, error) {
	var t api.Tokens
	for _, p := range strings.Split(os.Getenv("HOLDFAST_PANEL_TOKEN"), ",") {
		if p = strings.TrimSpace(p); p != "" {
			t.Panel = append(t.Panel, p)
		}
	}
	owners, err := api.ParseOwnerTokens(os.Getenv("HOLDFAST_OWNER_TOKENS"))
	if err != nil {
		return t, fmt.Errorf("HOLDFAST_OWNER_TOKENS: %w", err)
	}
	t.Owners = owners
	if len(t.Panel) == 0 && len(t.Owners) == 0 {
		return t, errors.New("no tokens: set HOLDFAST_PANEL_TOKEN and/or HOLDFAST_OWNER_TOKENS")
	}
	return t, nil
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// interruptOn adapts a context to the worker's stop channel.
func interruptOn(ctx context.Context) <-chan any {
	ch := make(chan any)
	go func() { <-ctx.Done(); close(ch) }()
	return ch
}
