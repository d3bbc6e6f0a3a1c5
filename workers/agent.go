package workers

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/activities/agent"
	"github.com/holdfast/holdfast/activities/backup"
	"github.com/holdfast/holdfast/activities/backup/stores"
	"github.com/holdfast/holdfast/activities/metrics"
	"github.com/holdfast/holdfast/activities/volume"
	volumedrivers "github.com/holdfast/holdfast/activities/volume/drivers"
	"github.com/holdfast/holdfast/activities/volume/file"
	"github.com/holdfast/holdfast/workers/config"
)

// Dial connects to Temporal as the config says (TLS when configured).
func Dial(cfg *config.Config, opts client.Options) (client.Client, error) {
	opts.HostPort, opts.Namespace = cfg.Temporal.Address, cfg.Temporal.Namespace
	if t := cfg.Temporal.TLS; t != nil {
		tc, err := tlsConfig(t)
		if err != nil {
			return nil, err
		}
		opts.ConnectionOptions.TLS = tc
	}
	return client.Dial(opts)
}

func tlsConfig(t *config.TLS) (*tls.Config, error) {
	tc := &tls.Config{ServerName: t.ServerName, MinVersion: tls.VersionTLS12}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("temporal.tls.ca_file: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("temporal.tls.ca_file: no certificates in %s", t.CAFile)
		}
	}
	if t.CertFile != "" || t.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("temporal.tls.cert_file: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// StoreConfig is a configured backup storage's store configuration, with its credentials read from the
// environment variables the config names (never from the file).
func StoreConfig(s *config.Storage) (stores.Config, error) {
	sc := s.Config
	err := sc.ReadSecrets()
	return sc, err
}

// Agent is one hypervisor's activities and what they hold open.
type Agent struct {
	Activities *agent.Activities
	// Storage is the activities the agent serves on the queue of each backup storage (catalog, replication,
	// scrub, GC, deleting a backup), over the same engines and bandwidth limit as Activities.
	Storage *agent.Storage
	// LibvirtUsed says whether attachment state comes from libvirt (false: volumes are reported detached).
	LibvirtUsed  bool
	hypervisorID string
	closers      []func()
}

// Close releases drivers (Ceph connections).
func (a *Agent) Close() {
	for _, c := range a.closers {
		c()
	}
}

// NewAgent builds a hypervisor's activities from the config: its drivers, and one engine per backup storage
// it may read or write (every configured storage, so it can restore backups made elsewhere), all sharing
// the hypervisor's bandwidth limit.
func NewAgent(ctx context.Context, cfg *config.Config, hypervisorID string, m *metrics.Metrics, log *slog.Logger) (*Agent, error) {
	h, ok := cfg.Hypervisors[hypervisorID]
	if !ok {
		return nil, fmt.Errorf("hypervisor %q is not in the config", hypervisorID)
	}
	a := &Agent{LibvirtUsed: h.LibvirtURI != file.NoLibvirt, hypervisorID: hypervisorID}
	limiter := agent.SharedLimiter(float64(h.BandwidthBytesPerSecond))
	// "none" as the libvirt URI means none for every driver: the rbd driver then asks the cluster alone who
	// uses an image. Snapshot copies share the host's bandwidth with backups and restores.
	drivers, closeDrivers, err := volumedrivers.Open(ctx, h.Drivers,
		volume.HostConfig{LibvirtURI: h.LibvirtURI, CephConf: h.CephConf, Limiter: limiter})
	if err != nil {
		return nil, fmt.Errorf("hypervisors.%s: %w", hypervisorID, err)
	}
	a.closers = append(a.closers, closeDrivers)
	hangFaults(drivers, log)
	storeConfigs := map[string]stores.Config{}
	var errs []error
	for name, s := range cfg.Storages {
		sc, err := StoreConfig(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("backup_storages.%s: %w", name, err))
			continue
		}
		storeConfigs[name] = sc
	}
	if err := errors.Join(errs...); err != nil {
		a.Close()
		return nil, err
	}
	// A resume journal every 8 chunks (32 MiB): a crashed upload re-reads at most that much.
	engines, err := agent.NewEngines(ctx, storeConfigs, float64(h.BandwidthBytesPerSecond),
		backup.Options{Logger: log, CheckpointEvery: CheckpointEvery, Limiter: limiter,
			OnDeduplicated: func(n int64) { m.BackupDeduplicated(hypervisorID, n) },
			OnThrottled:    func(d time.Duration) { m.ThrottleWaited(hypervisorID, d) }})
	if err != nil {
		a.Close()
		return nil, err
	}
	exportDir := h.ExportDir
	if exportDir == "" {
		exportDir = config.DefaultExportDir(hypervisorID)
	}
	exportHTTP := h.ExportHTTP
	if exportHTTP == "" {
		exportHTTP = config.DefaultExportHTTP
	}
	ac := agent.Config{HypervisorID: hypervisorID, Drivers: drivers, Engines: engines, Logger: log, Metrics: m,
		VolumeRoots: h.VolumeRoots, RBDPools: h.RBDPools, ExportDir: exportDir, ExportHTTP: exportHTTP,
		Limiter: limiter}
	a.Activities, a.Storage = agent.New(ac), agent.NewStorage(ac)
	return a, nil
}

// CheckpointEvery is the number of 4 MiB chunks between resume checkpoints of a backup upload.
const CheckpointEvery = 8

// heartbeatThrottle caps how long the SDK holds back heartbeats (by default 80% of the heartbeat timeout,
// 24 s): progress users see, and an abort reaching the activity, are at most this late.
const heartbeatThrottle = 2 * time.Second

// cleanupConcurrency bounds the compensations an agent runs at once, apart from its other work.
const cleanupConcurrency = 4

// NewAgentWorkers returns every worker of one hypervisor's agent: its own queue (hypervisor/<id>, bounded
// by its configured concurrency), its cleanup queue (compensations, with slots of their own so that they
// never wait behind long transfers), and one queue per backup storage (NewStorageWorkers).
func NewAgentWorkers(c client.Client, cfg *config.Config, hypervisorID string, a *Agent) []worker.Worker {
	ws := make([]worker.Worker, 0, 2+len(cfg.Storages))
	for queue, slots := range map[string]int{
		activities.TaskQueue(hypervisorID):        cfg.Hypervisors[hypervisorID].Concurrency,
		activities.CleanupTaskQueue(hypervisorID): cleanupConcurrency,
	} {
		ws = append(ws, newActivityWorker(c, queue, slots, a.Activities))
	}
	return append(ws, NewStorageWorkers(c, cfg, a)...)
}

// newActivityWorker is a worker on queue running at most slots of impl's activities at once, with the
// agent's heartbeat throttle.
func newActivityWorker(c client.Client, queue string, slots int, impl any) worker.Worker {
	w := worker.New(c, queue, worker.Options{
		MaxConcurrentActivityExecutionSize: slots,
		MaxHeartbeatThrottleInterval:       heartbeatThrottle,
		DefaultHeartbeatThrottleInterval:   heartbeatThrottle,
	})
	w.RegisterActivity(impl)
	return w
}

// NewStorageWorkers returns one worker per configured backup storage, on activities.StorageTaskQueue(name),
// serving the agent's storage activities. Every agent serves every storage (each has an engine for all of
// them), so storage work goes to whichever agent is alive. Each worker runs at most the hypervisor's
// concurrency at once: replication and scrubs share the host's bandwidth limit with backups and restores.
func NewStorageWorkers(c client.Client, cfg *config.Config, a *Agent) []worker.Worker {
	var ws []worker.Worker
	for _, name := range cfg.StorageNames() {
		ws = append(ws, newActivityWorker(c, activities.StorageTaskQueue(name),
			cfg.Hypervisors[a.hypervisorID].Concurrency, a.Storage))
	}
	return ws
}

// Run runs workers until ctx ends or one of them stops on its own (a fatal error), then stops them all and
// returns the first worker's error (nil when ctx ended and every worker stopped cleanly).
func Run(ctx context.Context, ws ...worker.Worker) error {
	stop := make(chan any)
	errs := make(chan error, len(ws))
	for _, w := range ws {
		go func() { errs <- w.Run(stop) }()
	}
	var first error
	running := len(ws)
	select {
	case <-ctx.Done():
	case first = <-errs:
		running--
		if first == nil {
			first = errors.New("workers: a worker stopped on its own")
		}
	}
	close(stop)
	for ; running > 0; running-- {
		if err := <-errs; first == nil {
			first = err
		}
	}
	return first
}
