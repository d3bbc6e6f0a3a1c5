// Package dev runs all of Holdfast on one machine for `make run`: a Temporal dev server (the CLI binary as a
// child process, SQLite under the data directory), the control worker, one local hypervisor agent (file
// driver, fs backup store), the HTTP API and metrics, plus a sample volume to try things on. Its fixed names
// (hypervisor "local", storage "local", plan "standard", volume "sample" of owner "demo") are part of the API
// contract's "Dev mode". It must work without libvirtd or Ceph.
package dev

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/activities/metrics"
	"github.com/holdfast/holdfast/activities/volume/domains"
	"github.com/holdfast/holdfast/activities/volume/file"
	"github.com/holdfast/holdfast/cmd/holdfast/serve"
	"github.com/holdfast/holdfast/starter"
	"github.com/holdfast/holdfast/starter/api"
	"github.com/holdfast/holdfast/workers"
	"github.com/holdfast/holdfast/workers/config"
	"github.com/holdfast/holdfast/workflows"
)

// Fixed dev-mode names (api.md "Dev mode").
const (
	HypervisorID = "local"
	StorageName  = "local"
	SampleVolume = "sample"
	SampleOwner  = "demo"
	SampleSize   = 256 << 20
	// SampleCopy is the volume the printed tour restores the sample's backup into; SampleInstant the one it
	// restores instantly.
	SampleCopy    = "sample-copy"
	SampleInstant = "sample-now"
)

// DevCooldown is dev mode's cooldown between two operations on a volume, unless Options.Cooldown says
// otherwise: off, so that the printed tour runs command after command (production keeps the spec's 5 min).
const DevCooldown = time.Duration(0)

// Options configure a dev run; Defaults fills them from the environment (api.md's HOLDFAST_* variables).
type Options struct {
	DataDir      string
	APIAddr      string
	MetricsAddr  string // 127.0.0.1:9090 (HOLDFAST_METRICS_ADDR)
	PanelToken   string
	OwnerTokens  map[string]string // token → owner_id
	Cooldown     *time.Duration
	Deadline     *time.Duration
	TemporalBin  string
	TemporalAddr string // 127.0.0.1:7233
	UIPort       int    // 8233
	// LibvirtURI overrides detection ("" detects qemu:///system, falling back to no libvirt).
	LibvirtURI string
	Out        io.Writer
	Log        *slog.Logger
	// Ready, when set, is called once everything serves.
	Ready func(Info)
}

// Info is what a dev run prints.
type Info struct {
	APIURL, WebUI, PanelToken, DataDir, Metrics string
	Libvirt                                     bool
	Cooldown                                    time.Duration
}

// Defaults reads HOLDFAST_PANEL_TOKEN, HOLDFAST_OWNER_TOKENS, HOLDFAST_API_ADDR, HOLDFAST_DATA_DIR and
// HOLDFAST_TEMPORAL_BIN.
func Defaults(getenv func(string) string) (Options, error) {
	o := Options{DataDir: getenv("HOLDFAST_DATA_DIR"), APIAddr: getenv("HOLDFAST_API_ADDR"),
		PanelToken: getenv("HOLDFAST_PANEL_TOKEN"), TemporalBin: getenv("HOLDFAST_TEMPORAL_BIN"),
		MetricsAddr:  getenv("HOLDFAST_METRICS_ADDR"),
		TemporalAddr: "127.0.0.1:7233", UIPort: 8233}
	if o.DataDir == "" {
		o.DataDir = ".holdfast"
	}
	if o.APIAddr == "" {
		o.APIAddr = "127.0.0.1:8080"
	}
	if o.MetricsAddr == "" {
		o.MetricsAddr = "127.0.0.1:9090"
	}
	if o.TemporalBin == "" {
		o.TemporalBin = filepath.Join("bin", "temporal")
	}
	owners, err := api.ParseOwnerTokens(getenv("HOLDFAST_OWNER_TOKENS"))
	if err != nil {
		return o, fmt.Errorf("HOLDFAST_OWNER_TOKENS: %w", err)
	}
	o.OwnerTokens = owners
	return o, nil
}

// ConfigFile is where Run writes the dev configuration, inside the data directory, so that the operator
// commands (holdfast recover, scrub, gc) can be tried against make run: --config .holdfast/holdfast.yaml.
const ConfigFile = "holdfast.yaml"

// configYAML is the dev-mode configuration: one hypervisor "local" whose group stores backups in
// <data>/backups, and the spec's default plan and limits (overridable for demos and tests).
func (o Options) configYAML(libvirtURI string) (string, error) {
	dataDir, err := filepath.Abs(o.DataDir)
	if err != nil {
		return "", err
	}
	var limits []string
	if o.Cooldown != nil {
		limits = append(limits, "cooldown: "+o.Cooldown.String())
	}
	if o.Deadline != nil {
		limits = append(limits, "deadline: "+o.Deadline.String())
	}
	return fmt.Sprintf(`
temporal: {address: %q}
limits: {%s}
backup_storages: {%s: {type: fs, path: %q}}
hypervisor_groups: {local-group: {backup_storage: %s}}
hypervisors: {%s: {group: local-group, libvirt_uri: %q, volume_roots: [%q], export_dir: %q}}
plans: {standard: {}}
billing: {ledger_path: %q}
`, o.TemporalAddr, strings.Join(limits, ", "), StorageName, filepath.Join(dataDir, "backups"), StorageName,
		HypervisorID, libvirtURI, filepath.Join(dataDir, "volumes"), filepath.Join(dataDir, "exports"),
		filepath.Join(dataDir, "billing.jsonl")), nil
}

// Run runs everything until ctx ends, then stops it all (the dev server last).
func Run(ctx context.Context, o Options) error {
	if o.Out == nil {
		o.Out = os.Stdout
	}
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if err := os.MkdirAll(filepath.Join(o.DataDir, "volumes"), 0o755); err != nil {
		return err
	}
	if o.PanelToken == "" {
		o.PanelToken = randomToken()
	}
	if o.Cooldown == nil {
		cooldown := DevCooldown
		o.Cooldown = &cooldown
	}
	libvirtURI := o.LibvirtURI
	if libvirtURI == "" {
		libvirtURI = detectLibvirt()
	}
	yaml, err := o.configYAML(libvirtURI)
	if err != nil {
		return err
	}
	cfg, err := config.Parse(strings.NewReader(yaml))
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(o.DataDir, ConfigFile), []byte(yaml), 0o644); err != nil {
		return err
	}

	server, err := startTemporal(o)
	if err != nil {
		return err
	}
	defer server.stop()
	reg := metrics.NewRegistry()
	c, err := dialWhenReady(ctx, cfg, metrics.NewSDKHandler(reg))
	if err != nil {
		return err
	}
	defer c.Close()
	m := metrics.New(reg)
	metricsErr := make(chan error, 1)
	go func() { metricsErr <- metrics.Serve(ctx, o.MetricsAddr, reg) }()

	hf := starter.New(c, cfg)
	agent, err := workers.NewAgent(ctx, cfg, HypervisorID, m, o.Log)
	if err != nil {
		return err
	}
	defer agent.Close()
	control, closeBilling, err := serve.Control(ctx, c, cfg)
	if err != nil {
		return err
	}
	defer closeBilling()
	ws := append([]worker.Worker{control}, workers.NewAgentWorkers(c, cfg, HypervisorID, agent)...)
	for _, w := range ws {
		if err := w.Start(); err != nil {
			return err
		}
		defer w.Stop()
	}

	ln, err := net.Listen("tcp", o.APIAddr)
	if err != nil {
		return fmt.Errorf("API address %s: %w (set HOLDFAST_API_ADDR)", o.APIAddr, err)
	}
	srv := serve.API(c, cfg, api.Tokens{Panel: []string{o.PanelToken}, Owners: o.OwnerTokens}, m, o.Log)
	go func() { _ = srv.Serve(ln) }()
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()

	if err := ensureSample(ctx, hf, o.DataDir); err != nil {
		return fmt.Errorf("sample volume: %w", err)
	}
	select {
	case err := <-metricsErr:
		return fmt.Errorf("metrics on %s: %w (set HOLDFAST_METRICS_ADDR)", o.MetricsAddr, err)
	default:
	}
	info := Info{APIURL: "http://" + ln.Addr().String(), WebUI: fmt.Sprintf("http://127.0.0.1:%d", o.UIPort),
		Metrics:    "http://" + o.MetricsAddr + "/metrics",
		PanelToken: o.PanelToken, DataDir: o.DataDir, Libvirt: libvirtURI != file.NoLibvirt, Cooldown: *o.Cooldown}
	printInfo(o.Out, info, o.OwnerTokens)
	if o.Ready != nil {
		o.Ready(info)
	}
	select {
	case <-ctx.Done():
		fmt.Fprintln(o.Out, "holdfast dev: stopping")
		return nil
	case err := <-server.done:
		// Without its server nothing here works: say so and stop, rather than stay up answering 503.
		server.exited = fmt.Errorf("the Temporal dev server exited (%v); its log is %s", err, server.log)
		fmt.Fprintln(o.Out, "holdfast dev:", server.exited, "- stopping")
		return server.exited
	}
}

func randomToken() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return "hf-" + hex.EncodeToString(b[:])
}

// detectLibvirt uses the local libvirtd when one answers; otherwise volumes are treated as detached.
func detectLibvirt() string {
	conn, err := domains.Open(domains.DefaultURI)
	if err != nil {
		return file.NoLibvirt
	}
	conn.Close()
	return domains.DefaultURI
}

type temporalServer struct {
	cmd  *exec.Cmd
	done chan error
	log  string
	// exited is why the server stopped on its own (nil while it runs, or when stop stopped it).
	exited error
}

func startTemporal(o Options) (*temporalServer, error) {
	if _, err := os.Stat(o.TemporalBin); err != nil {
		return nil, fmt.Errorf("Temporal dev server not found at %s: run make temporal", o.TemporalBin)
	}
	host, port, err := net.SplitHostPort(o.TemporalAddr)
	if err != nil {
		return nil, err
	}
	for _, addr := range []string{o.TemporalAddr, fmt.Sprintf("%s:%d", host, o.UIPort)} {
		if ln, err := net.Listen("tcp", addr); err != nil {
			return nil, fmt.Errorf("%s is in use (another Temporal or holdfast dev running?): %w", addr, err)
		} else {
			ln.Close()
		}
	}
	args := []string{"server", "start-dev", "--ip", host, "--port", port, "--ui-port", fmt.Sprint(o.UIPort),
		"--db-filename", filepath.Join(o.DataDir, "temporal.db"), "--log-level", "warn"}
	args = append(args, workflows.DevServerArgs()...)
	logFile, err := os.OpenFile(filepath.Join(o.DataDir, "temporal.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(o.TemporalBin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Its own process group: a Ctrl-C reaches us, and we stop the server in order, after the workers. And it
	// dies with us whatever kills us (kill -9 included): the kernel signals it when its parent thread goes.
	// The thread that starts it is locked for the server's life, because Pdeathsig follows that thread.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	s := &temporalServer{cmd: cmd, done: make(chan error, 1), log: logFile.Name()}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the server, which Pdeathsig then kills
		if err := cmd.Start(); err != nil {
			logFile.Close()
			started <- err
			return
		}
		started <- nil
		s.done <- cmd.Wait()
		logFile.Close()
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return s, nil
}

func (s *temporalServer) stop() {
	if s.exited != nil {
		return // it is gone already
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

func dialWhenReady(ctx context.Context, cfg *config.Config, mh client.MetricsHandler) (client.Client, error) {
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := workers.Dial(cfg, client.Options{Logger: quiet{}, MetricsHandler: mh})
		if err == nil {
			if _, err = c.CheckHealth(ctx, nil); err == nil {
				return c, nil
			}
			c.Close()
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("Temporal dev server did not answer on %s: %w (see .holdfast/temporal.log)",
				cfg.Temporal.Address, err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

type quiet struct{}

func (quiet) Debug(string, ...any) {}
func (quiet) Info(string, ...any)  {}
func (quiet) Warn(string, ...any)  {}
func (quiet) Error(string, ...any) {}

// ensureSample creates the 256 MiB qcow2 sample volume with some data (once) and registers it.
func ensureSample(ctx context.Context, hf *starter.Client, dataDir string) error {
	dir, err := filepath.Abs(filepath.Join(dataDir, "volumes"))
	if err != nil {
		return err
	}
	path := filepath.Join(dir, SampleVolume+".qcow2")
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		if err := makeSample(ctx, path); err != nil {
			return err
		}
	}
	_, err = hf.RegisterVolume(ctx, starter.RegisterRequest{VolumeID: SampleVolume, Name: SampleVolume,
		OwnerID: SampleOwner, HypervisorID: HypervisorID, Plan: config.DefaultPlan,
		Storage: activities.VolumeRef{Type: activities.VolumeFile, Path: path}, SizeBytes: SampleSize})
	return err
}

// makeSample writes a raw image with a recognisable pattern in its first 32 MiB (the rest sparse zeros) and
// converts it to qcow2 (compat 1.1, as libvirt checkpoints need).
func makeSample(ctx context.Context, path string) error {
	raw := path + ".raw"
	f, err := os.Create(raw)
	if err != nil {
		return err
	}
	defer os.Remove(raw)
	block := make([]byte, 1<<20)
	for i := int64(0); i < 32; i++ {
		for j := range block {
			block[j] = byte(i*31 + int64(j)%251)
		}
		if _, err := f.WriteAt(block, i<<20); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Truncate(SampleSize); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", "compat=1.1",
		raw, path).CombinedOutput()
	if err != nil {
		return fmt.Errorf("qemu-img convert (install qemu-utils: make deps): %v: %s", err, out)
	}
	return nil
}

func printInfo(w io.Writer, i Info, owners map[string]string) {
	fmt.Fprintf(w, "Holdfast dev is running.\n\n")
	fmt.Fprintf(w, "  Temporal Web UI  %s\n", i.WebUI)
	fmt.Fprintf(w, "  API              %s\n", i.APIURL)
	fmt.Fprintf(w, "  Metrics          %s\n", i.Metrics)
	fmt.Fprintf(w, "  Panel token      %s\n", i.PanelToken)
	for token, owner := range owners {
		fmt.Fprintf(w, "  Owner token      %s (%s)\n", token, owner)
	}
	fmt.Fprintf(w, "  Data             %s (volumes/, backups/, billing.jsonl, temporal.db, %s)\n", i.DataDir, ConfigFile)
	if !i.Libvirt {
		fmt.Fprintf(w, "  libvirt          not reachable: volumes are treated as detached\n")
	}
	cooldown := "off"
	if i.Cooldown > 0 {
		cooldown = i.Cooldown.String()
	}
	fmt.Fprintf(w, "  Cooldown         %s between operations on a volume (production: 5m; holdfast dev --cooldown 5m)\n", cooldown)
	// The tour: TestDevRunsTheProductAndStopsCleanly runs these lines as printed, in order.
	fmt.Fprintf(w, "\nTry, in another shell, in order:\n\n")
	fmt.Fprintf(w, "  export HOLDFAST_API=%s HOLDFAST_TOKEN=%s\n", i.APIURL, i.PanelToken)
	fmt.Fprintf(w, "  bin/holdfast snapshot %s --wait\n", SampleVolume)
	fmt.Fprintf(w, "  bin/holdfast backup %s --wait                                   # live progress: phase, %%, MB/s, ETA\n", SampleVolume)
	fmt.Fprintf(w, "  bin/holdfast restore %s --latest-backup --new-volume %s --wait\n", SampleVolume, SampleCopy)
	fmt.Fprintf(w, "  bin/holdfast restore %s --latest-backup --new-volume %s --instant --wait   # usable at once, hydrates behind\n",
		SampleVolume, SampleInstant)
	fmt.Fprintf(w, "  bin/holdfast status %s\n", SampleVolume)
	fmt.Fprintf(w, "  bin/holdfast status %s\n", SampleCopy)
	fmt.Fprintf(w, "  bin/holdfast status %s\n\n", SampleInstant)
	fmt.Fprintf(w, "Then watch the workflows in the Web UI (%s/namespaces/default/workflows) and the\n", i.WebUI)
	fmt.Fprintf(w, "metrics (curl -s %s | grep ^holdfast_).\n\n", i.Metrics)
	fmt.Fprintf(w, "Ctrl-C stops everything.\n")
}
