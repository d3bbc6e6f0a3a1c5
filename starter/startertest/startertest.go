// Package startertest runs a real Temporal dev server (built by `make temporal`) with Holdfast's control
// worker for tests, and offers a gated in-process hypervisor agent that holds operations open on demand.
// Test code only: it calls testing.T.
package startertest

import (
	"context"
	"errors"
	"maps"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/worker"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/starter"
	"github.com/holdfast/holdfast/workers"
	"github.com/holdfast/holdfast/workers/config"
	"github.com/holdfast/holdfast/workflows"
)

// TemporalBin finds the dev server built by `make temporal`: locally a missing one skips the test (naming
// the target), under CI=true it fails it.
func TemporalBin(t testing.TB) string {
	t.Helper()
	path := os.Getenv("HOLDFAST_TEMPORAL_BIN")
	if path == "" {
		_, file, _, _ := runtime.Caller(0)
		path = filepath.Join(filepath.Dir(file), "..", "..", "bin", "temporal")
	}
	if _, err := os.Stat(path); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("Temporal dev server not found at %s (CI=true: failing): run make temporal", path)
		}
		t.Skipf("Temporal dev server not found at %s: run make temporal", path)
	}
	abs, err := filepath.Abs(path)
	require.NoError(t, err)
	return abs
}

// FreeAddress returns a loopback address with a free port.
func FreeAddress(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().String()
}

// DevServer is a real Temporal dev server on a SQLite file, so it can be restarted with its state.
type DevServer struct {
	t       testing.TB
	bin     string
	db      string
	Address string
	server  *testsuite.DevServer
}

// StartDevServer starts a dev server with Holdfast's search attributes; it stops when the test ends.
func StartDevServer(t testing.TB) *DevServer {
	d := &DevServer{t: t, bin: TemporalBin(t), db: filepath.Join(t.TempDir(), "temporal.db"), Address: FreeAddress(t)}
	d.start()
	t.Cleanup(func() { _ = d.server.Stop() })
	return d
}

// devServerStarts is how many times a dev server is started before a test gives up: the free port picked for
// it can be taken by another process before the server binds it, and on a loaded machine a start can
// outlast the SDK's one-minute wait.
const devServerStarts = 3

func (d *DevServer) start() {
	var err error
	for attempt := 1; attempt <= devServerStarts; attempt++ {
		if err = d.startOnce(); err == nil {
			return
		}
		d.t.Logf("dev server on %s did not start (attempt %d of %d): %v", d.Address, attempt, devServerStarts, err)
		d.Address = FreeAddress(d.t)
	}
	require.NoError(d.t, err, "dev server")
}

func (d *DevServer) startOnce() error {
	args := workflows.DevServerArgs()
	s, err := testsuite.StartDevServer(context.Background(), testsuite.DevServerOptions{
		ExistingPath: d.bin, DBFilename: d.db, LogLevel: "error", ExtraArgs: args,
		ClientOptions: &client.Options{HostPort: d.Address, Namespace: "default"},
	})
	if err != nil {
		return err
	}
	d.server = s
	return nil
}

// Restart stops the server and starts it again on the same address and database.
func (d *DevServer) Restart() {
	require.NoError(d.t, d.server.Stop())
	if err := d.startOnce(); err != nil {
		require.NoError(d.t, err, "dev server restart on %s", d.Address) // callers hold this address
	}
}

// Cluster is a dev server with the control worker and one agent per hypervisor.
type Cluster struct {
	Dev      *DevServer
	Client   *starter.Client
	Temporal client.Client
	Config   *config.Config
	storages map[string]*switchableStorage
	control  worker.Worker
}

// NewCluster starts a dev server, the control worker, and an agent serving each given hypervisor's
// activities, with the config parsed from configYAML.
func NewCluster(t testing.TB, configYAML string, agents map[string]activities.Hypervisor) *Cluster {
	dev := StartDevServer(t)
	cfg, err := config.Parse(strings.NewReader(configYAML))
	require.NoError(t, err)
	tc, err := client.Dial(client.Options{HostPort: dev.Address, Logger: QuietLogger{}})
	require.NoError(t, err)
	t.Cleanup(tc.Close)
	hf := starter.New(tc, cfg)
	control := workers.NewControl(tc, hf.ControlActivities(), worker.Options{})
	ws := []worker.Worker{control}
	for hypervisorID, impl := range agents {
		// Like a real agent, each serves its hypervisor's queue and the queue its compensations go to.
		for _, q := range []string{activities.TaskQueue(hypervisorID), activities.CleanupTaskQueue(hypervisorID)} {
			w := worker.New(tc, q, worker.Options{})
			w.RegisterActivity(impl)
			ws = append(ws, w)
		}
	}
	// Every configured storage's queue is served: by default only DeleteBackup (by the first agent, as a
	// real agent serves it), until a test gives the storage a full implementation with ServeStorage.
	storages := map[string]*switchableStorage{}
	var first activities.Hypervisor
	for _, id := range slices.Sorted(maps.Keys(agents)) {
		if first == nil {
			first = agents[id]
		}
	}
	for name := range cfg.Storages {
		s := &switchableStorage{impl: deleteOnly{first}}
		storages[name] = s
		w := worker.New(tc, activities.StorageTaskQueue(name), worker.Options{})
		w.RegisterActivity(s)
		ws = append(ws, w)
	}
	for _, w := range ws {
		require.NoError(t, w.Start())
	}
	t.Cleanup(func() {
		for _, w := range ws {
			w.Stop()
		}
	})
	return &Cluster{Dev: dev, Client: hf, Temporal: tc, Config: cfg, storages: storages, control: control}
}

// StopControl stops the control worker (workflows make no progress; updates sent meanwhile queue up on
// the server and reach the workflow together) and returns the function that starts a fresh one.
func (c *Cluster) StopControl(t testing.TB) (start func()) {
	c.control.Stop()
	return func() {
		c.control = workers.NewControl(c.Temporal, c.Client.ControlActivities(), worker.Options{})
		require.NoError(t, c.control.Start())
		t.Cleanup(c.control.Stop)
	}
}

// ServeStorage makes a configured storage's queue run impl's activities from now on.
func (c *Cluster) ServeStorage(t testing.TB, storage string, impl activities.Storage) {
	s, ok := c.storages[storage]
	require.True(t, ok, "storage %q is not in the cluster's config", storage)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.impl = impl
}

// switchableStorage serves a storage queue with an implementation a test may swap.
type switchableStorage struct {
	mu   sync.Mutex
	impl activities.Storage
}

func (s *switchableStorage) get() activities.Storage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.impl
}

// ListCatalog is activities.Storage.ListCatalog.
func (s *switchableStorage) ListCatalog(ctx context.Context, in activities.CatalogInput) (activities.CatalogPage, error) {
	return s.get().ListCatalog(ctx, in)
}

// ReplicateBackup is activities.Storage.ReplicateBackup.
func (s *switchableStorage) ReplicateBackup(ctx context.Context, in activities.ReplicateInput) (activities.ReplicateResult, error) {
	return s.get().ReplicateBackup(ctx, in)
}

// ScrubStorage is activities.Storage.ScrubStorage.
func (s *switchableStorage) ScrubStorage(ctx context.Context, in activities.ScrubInput) (activities.ScrubResult, error) {
	return s.get().ScrubStorage(ctx, in)
}

// CollectGarbage is activities.Storage.CollectGarbage.
func (s *switchableStorage) CollectGarbage(ctx context.Context, in activities.GCInput) (activities.GCResult, error) {
	return s.get().CollectGarbage(ctx, in)
}

// DeleteBackup is activities.Storage.DeleteBackup.
func (s *switchableStorage) DeleteBackup(ctx context.Context, in activities.BackupRef) error {
	return s.get().DeleteBackup(ctx, in)
}

// AbandonBackup is activities.Storage.AbandonBackup.
func (s *switchableStorage) AbandonBackup(ctx context.Context, in activities.BackupRef) error {
	return s.get().AbandonBackup(ctx, in)
}

// deleteOnly serves a storage's DeleteBackup through a hypervisor agent; the rest is not served.
type deleteOnly struct{ hv activities.Hypervisor }

var errNotServed = errors.New("startertest: storage activity not served in this cluster (use ServeStorage)")

func (d deleteOnly) ListCatalog(context.Context, activities.CatalogInput) (activities.CatalogPage, error) {
	return activities.CatalogPage{}, errNotServed
}

func (d deleteOnly) ReplicateBackup(context.Context, activities.ReplicateInput) (activities.ReplicateResult, error) {
	return activities.ReplicateResult{}, errNotServed
}

func (d deleteOnly) ScrubStorage(context.Context, activities.ScrubInput) (activities.ScrubResult, error) {
	return activities.ScrubResult{}, errNotServed
}

func (d deleteOnly) CollectGarbage(context.Context, activities.GCInput) (activities.GCResult, error) {
	return activities.GCResult{}, nil // nothing to collect: the agent stores nothing the test looks at
}

func (d deleteOnly) DeleteBackup(ctx context.Context, in activities.BackupRef) error {
	if d.hv == nil {
		return errNotServed
	}
	return d.hv.DeleteBackup(ctx, in)
}

// AbandonBackup removes the backup as DeleteBackup does (the agent stores nothing the test looks at).
func (d deleteOnly) AbandonBackup(ctx context.Context, in activities.BackupRef) error {
	return d.DeleteBackup(ctx, in)
}

// Register registers a file volume on hypervisor hv1.
func (c *Cluster) Register(t testing.TB, volumeID, ownerID string) {
	_, err := c.Client.RegisterVolume(context.Background(), starter.RegisterRequest{VolumeID: volumeID, Name: volumeID,
		OwnerID: ownerID, HypervisorID: "hv1", Storage: activities.VolumeRef{Type: activities.VolumeFile, Path: "/vols/" + volumeID + ".qcow2"}})
	require.NoError(t, err)
}

// WaitFor polls cond (real time, a real server) until it holds, for at most a minute.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// QuietLogger drops the SDK's logs (tests assert behaviour, not log lines).
type QuietLogger struct{}

func (QuietLogger) Debug(string, ...any) {}
func (QuietLogger) Info(string, ...any)  {}
func (QuietLogger) Warn(string, ...any)  {}
func (QuietLogger) Error(string, ...any) {}

// Gate holds operations until it is opened.
type Gate struct {
	ch   chan struct{}
	once sync.Once
}

// Open lets every waiting and future operation through.
func (g *Gate) Open() { g.once.Do(func() { close(g.ch) }) }

// GatedHypervisor is an in-process agent: user snapshots and backup uploads wait until Gate.Open is called,
// so a test can hold an operation open (busy volume, permits in flight, restarts); everything else succeeds.
// Its exported methods are exactly the activities (workers register every exported method).
type GatedHypervisor struct {
	Gate *Gate
	// Hydrate, when set, holds hydrations instead of Gate (so a test can back up, then hold an instant
	// restore's hydration).
	Hydrate *Gate
	// Deleted records the volumes DeleteVolume was asked to delete.
	Deleted sync.Map
	// Attached makes the volume look attached to a running instance.
	Attached bool
}

var _ activities.Hypervisor = (*GatedHypervisor)(nil)

// NewGatedHypervisor returns an agent with a closed gate.
func NewGatedHypervisor() *GatedHypervisor {
	return &GatedHypervisor{Gate: NewGate()}
}

func (g *GatedHypervisor) wait(ctx context.Context) error {
	select {
	case <-g.Gate.ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Attachment implements activities.Hypervisor.
func (g *GatedHypervisor) Attachment(context.Context, activities.AttachmentInput) (activities.AttachmentResult, error) {
	return activities.AttachmentResult{Attached: g.Attached, Running: g.Attached, Domain: "vm-test"}, nil
}

// CreateSnapshot waits for the gate, except for Holdfast's own internal snapshots (backup, safety).
func (g *GatedHypervisor) CreateSnapshot(ctx context.Context, in activities.SnapshotInput) (activities.SnapshotResult, error) {
	if !strings.HasPrefix(in.SnapshotID, "holdfast-") {
		if err := g.wait(ctx); err != nil {
			return activities.SnapshotResult{}, err
		}
	}
	return activities.SnapshotResult{SnapshotID: in.SnapshotID, SizeBytes: 1 << 20, Consistency: activities.ConsistencyCrash}, nil
}

// DeleteSnapshot implements activities.Hypervisor.
func (g *GatedHypervisor) DeleteSnapshot(context.Context, activities.SnapshotRef) error { return nil }

// RollbackSnapshot implements activities.Hypervisor.
func (g *GatedHypervisor) RollbackSnapshot(context.Context, activities.SnapshotRef) error { return nil }

// UploadBackup heartbeats progress until the gate opens (or the context ends).
func (g *GatedHypervisor) UploadBackup(ctx context.Context, in activities.UploadBackupInput) (activities.UploadBackupResult, error) {
	if err := heartbeatUntil(ctx, g.Gate, "uploading", true); err != nil {
		return activities.UploadBackupResult{}, err
	}
	// As the agent answers for a qcow2 volume (the cluster's): the snapshot is kept as the next base, and a
	// base given is diffed against.
	res := activities.UploadBackupResult{SizeBytes: gatedTotal, StoredBytes: gatedTotal / 4, ReadBytes: gatedTotal,
		FullReadReason: in.FullReadReason, KeepSnapshot: true}
	if in.BaseSnapshotID != "" {
		res.ReadBytes, res.Incremental = 4<<20, true
	}
	return res, nil
}

// gatedTotal is the size of every gated copy.
const gatedTotal = int64(64 << 20)

// heartbeatUntil heartbeats a copy's progress in phase (with resume offsets when resumable) every 200 ms,
// 4 MiB more each time up to half of gatedTotal, until gate opens (nil) or ctx ends (its error).
func heartbeatUntil(ctx context.Context, gate *Gate, phase string, resumable bool) error {
	for done := int64(4 << 20); ; done = min(done+(4<<20), gatedTotal/2) {
		p := activities.Progress{Phase: phase, BytesDone: done, BytesTotal: gatedTotal, BytesPerSecond: 4 << 20}
		if resumable {
			p.NextOffset = done
		}
		activity.RecordHeartbeat(ctx, p)
		select {
		case <-gate.ch:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// DeleteBackup implements activities.Hypervisor.
func (g *GatedHypervisor) DeleteBackup(context.Context, activities.BackupRef) error { return nil }

// RestoreBackup implements activities.Hypervisor.
func (g *GatedHypervisor) RestoreBackup(context.Context, activities.RestoreBackupInput) (activities.RestoreResult, error) {
	return activities.RestoreResult{SizeBytes: 64 << 20}, nil
}

// PrepareInstantRestore implements activities.Hypervisor: a qcow2 target is ready at once; any other falls
// back, as the agent's does.
func (g *GatedHypervisor) PrepareInstantRestore(_ context.Context, in activities.RestoreBackupInput) (activities.InstantRestoreResult, error) {
	if in.Target.Format != "qcow2" && !strings.HasSuffix(in.Target.Path, ".qcow2") {
		return activities.InstantRestoreResult{FallbackReason: "instant restore needs a qcow2 file volume or an RBD image; restored in full"}, nil
	}
	return activities.InstantRestoreResult{SizeBytes: 64 << 20, Instant: true}, nil
}

// AbandonInstantRestore implements activities.Hypervisor (and records the volume in Deleted).
func (g *GatedHypervisor) AbandonInstantRestore(_ context.Context, in activities.RestoreBackupInput) error {
	g.Deleted.Store(in.TargetVolumeID, true)
	return nil
}

// NewGate returns a closed gate.
func NewGate() *Gate { return &Gate{ch: make(chan struct{})} }

// HydrateVolume heartbeats progress until the Hydrate gate (else Gate) opens, or the context ends.
func (g *GatedHypervisor) HydrateVolume(ctx context.Context, _ activities.RestoreBackupInput) (activities.RestoreResult, error) {
	gate := g.Gate
	if g.Hydrate != nil {
		gate = g.Hydrate
	}
	if err := heartbeatUntil(ctx, gate, "hydrating", false); err != nil {
		return activities.RestoreResult{}, err
	}
	return activities.RestoreResult{SizeBytes: gatedTotal, BytesWritten: gatedTotal}, nil
}

// CloneSnapshot implements activities.Hypervisor.
func (g *GatedHypervisor) CloneSnapshot(context.Context, activities.CloneSnapshotInput) (activities.RestoreResult, error) {
	return activities.RestoreResult{SizeBytes: 1 << 20}, nil
}

// DeleteVolume implements activities.Hypervisor (and records the volume in Deleted).
func (g *GatedHypervisor) DeleteVolume(_ context.Context, in activities.DeleteVolumeInput) error {
	g.Deleted.Store(in.VolumeID, true)
	return nil
}

// InspectVolume implements activities.Hypervisor: every location holds a 1 GiB volume.
func (g *GatedHypervisor) InspectVolume(context.Context, activities.AttachmentInput) (activities.InspectResult, error) {
	return activities.InspectResult{SizeBytes: 1 << 30}, nil
}
