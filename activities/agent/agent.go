// Package agent implements activities.Hypervisor: the activities one hypervisor agent serves on
// activities.TaskQueue(hypervisor_id). It wires the volume drivers (file, rbd) to the backup engines (one per
// backup storage), turns their errors into the typed, non-retryable failures workflows branch on, heartbeats
// progress, and resumes an interrupted upload from its last checkpoint. Every hypervisor call heartbeats and
// ends within seconds of an abort or deadline, even one that hangs (heartbeat.go).
//
// It owns no state between calls but the exports of instant restores (instant.go): every activity answers
// from the drivers and stores, which is what makes Temporal's retries safe (every activity is idempotent),
// and an export lost with the process is served again by the retried activity that needs it. It must never be imported by workflows/ (it links
// cgo drivers), never decide policy (retention, limits, who may restore what: the workflows do), and never
// log secrets (engines hold keys; only storage names are logged).
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"syscall"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"
	"golang.org/x/time/rate"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/activities/backup"
	"github.com/holdfast/holdfast/activities/metrics"
	"github.com/holdfast/holdfast/activities/volume"
)

// Config is what one agent serves.
type Config struct {
	// HypervisorID is this host's id; it is put on every log line.
	HypervisorID string
	// Drivers serve volumes by activities.VolumeRef.Type ("file", "rbd"). A type with no driver fails with
	// ErrInvalidArgument: this hypervisor cannot hold such a volume.
	Drivers map[string]volume.Driver
	// Engines are the backup storages this hypervisor may use, by storage name (see NewEngines, which shares
	// one bandwidth limiter between them). A name with no engine fails with ErrNoBackupStorage.
	Engines map[string]*backup.Engine
	// Logger receives structured logs; default slog.Default().
	Logger *slog.Logger
	// Metrics records bytes and throughput (nil: none).
	Metrics *metrics.Metrics
	// VolumeRoots and RBDPools are where this host's volumes may live (the hypervisor's volume_roots and
	// rbd_pools). The control plane places volumes there already; the agent, which runs as root, checks
	// again before any driver touches a path or an image, and refuses links below a root.
	VolumeRoots []string
	RBDPools    []string
	// ExportDir is where instant restores' exports listen (UNIX sockets); empty: instant restores fall back
	// to full ones. It must be this process's, writable by no one else (checked before the first export).
	ExportDir string
	// ExportHTTP is the loopback address instant restores onto RBD are served from (raw HTTP streams for
	// Ceph's import-only migration); empty: they fall back to full ones.
	ExportHTTP string
	// Limiter is the hypervisor's bandwidth limit (nil: none); the HTTP exports are read through it.
	Limiter *rate.Limiter
}

// Activities is the hypervisor agent's activity set. Register it with worker.RegisterActivity: every exported
// method is an activity, named as in activities.Hypervisor, so it must have no other exported methods.
type Activities struct {
	hypervisorID string
	roots, pools []string
	drivers      map[string]volume.Driver
	engines      map[string]*backup.Engine
	log          *slog.Logger
	metrics      *metrics.Metrics
	// exports and http are the instant restores' exports this agent serves (the only state it holds
	// between calls): NBD for qcow2 volumes, HTTP for RBD images.
	exports *exports
	http    *httpExports
}

var _ activities.Hypervisor = (*Activities)(nil)

// New returns the activities of one hypervisor. The maps are copied, so the caller may reuse them.
func New(cfg Config) *Activities {
	a := &Activities{
		hypervisorID: cfg.HypervisorID,
		metrics:      cfg.Metrics,
		drivers:      make(map[string]volume.Driver, len(cfg.Drivers)),
		engines:      make(map[string]*backup.Engine, len(cfg.Engines)),
		log:          cfg.Logger,
		roots:        cfg.VolumeRoots,
		pools:        cfg.RBDPools,
	}
	a.exports = &exports{dir: cfg.ExportDir, log: a.log}
	a.http = &httpExports{addr: cfg.ExportHTTP, log: a.log, limiter: cfg.Limiter}
	if a.log == nil {
		a.log = slog.Default()
		a.exports.log, a.http.log = a.log, a.log
	}
	for k, v := range cfg.Drivers {
		a.drivers[k] = v
	}
	for k, v := range cfg.Engines {
		a.engines[k] = v
	}
	return a
}

// logger returns the logger of one activity call: volume_id is on every line, as the style guide requires,
// and the attempt number tells a retry from a first run.
func (a *Activities) logger(ctx context.Context, volumeID string, args ...any) *slog.Logger {
	l := a.log.With("hypervisor_id", a.hypervisorID, "volume_id", volumeID)
	if activity.IsActivity(ctx) {
		info := activity.GetInfo(ctx)
		l = l.With("activity", info.ActivityType.Name, "attempt", info.Attempt)
	}
	return l.With(args...)
}

func checkID(field, value string) error {
	if !activities.ValidID(value) {
		return invalid(fmt.Sprintf("%s %q is not a valid id", field, value))
	}
	return nil
}

// checkIDs checks (field, value) pairs and returns the first failure.
func checkIDs(fieldValues ...string) error {
	for i := 0; i+1 < len(fieldValues); i += 2 {
		if err := checkID(fieldValues[i], fieldValues[i+1]); err != nil {
			return err
		}
	}
	return nil
}

func invalid(msg string) error {
	return temporal.NewNonRetryableApplicationError(msg, activities.ErrInvalidArgument, nil)
}

// driver returns the driver and driver-level ref for a volume.
func (a *Activities) driver(field string, ref activities.VolumeRef) (volume.Driver, volume.Ref, error) {
	d, ok := a.drivers[ref.Type]
	if !ok {
		return nil, volume.Ref{}, invalid(fmt.Sprintf("%s: volume type %q is not served by this hypervisor", field, ref.Type))
	}
	if err := a.placed(ref); err != nil {
		return nil, volume.Ref{}, invalid(fmt.Sprintf("%s: %v", field, err))
	}
	return d, volume.Ref{Type: volume.Type(ref.Type), Path: ref.Path, Format: volume.Format(ref.Format),
		Pool: ref.Pool, Image: ref.Image, CreatedBy: ref.CreatedBy}, nil
}

// placed checks that a volume lives where this hypervisor keeps volumes: a file inside a volume root with
// no link on the way to it, an image in one of its pools.
func (a *Activities) placed(ref activities.VolumeRef) error {
	if ref.Type == string(volume.TypeRBD) {
		if !slices.Contains(a.pools, ref.Pool) {
			return errors.New("pool is not one this hypervisor keeps volumes in")
		}
		return nil
	}
	root, err := volume.InsideRoots(ref.Path, a.roots)
	if err != nil {
		return fmt.Errorf("path %w", err)
	}
	return volume.NoSymlinkBelow(root, ref.Path)
}

// engine returns the backup engine of a storage.
func (a *Activities) engine(storage string) (*backup.Engine, error) {
	e, ok := a.engines[storage]
	if !ok || e == nil {
		return nil, temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("backup storage %q is not configured on hypervisor %s", storage, a.hypervisorID),
			activities.ErrNoBackupStorage, nil)
	}
	return e, nil
}

// classify turns a driver or engine error into what the workflow's retry policy acts on: the failures a
// retry can never fix become non-retryable application errors of a stable type; everything else (I/O,
// timeouts, a sick store) stays retryable. ctx decides cancellation first, because an aborted operation
// surfaces whatever error the interrupted call happened to return and must not be reported as, say, corrupt.
func classify(ctx context.Context, op string, err error) error {
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	var chunkErr *backup.ChunkError
	var appErr *temporal.ApplicationError
	msg := op + ": " + err.Error()
	switch {
	case errors.As(err, &appErr):
		return err // already typed (validation inside this package)
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return temporal.NewNonRetryableApplicationError(msg, activities.ErrNoSpace, err)
	case errors.Is(err, volume.ErrAttachedRunning):
		if op == activities.DeleteVolumeName {
			msg = "Cannot delete a volume attached to a running instance"
		} else {
			msg = activities.MsgAttachedRunning
		}
		return temporal.NewNonRetryableApplicationError(msg, activities.ErrAttachedRunning, err)
	// Before ErrNotExist: a chunk missing under a manifest that references it is damage, not absence.
	case errors.As(err, &chunkErr), errors.Is(err, backup.ErrCorrupt), errors.Is(err, backup.ErrInvalidManifest):
		return temporal.NewNonRetryableApplicationError(msg, activities.ErrCorrupt, err)
	case errors.Is(err, volume.ErrNotFound), errors.Is(err, backup.ErrNotExist):
		return temporal.NewNonRetryableApplicationError(msg, activities.ErrNotFound, err)
	case errors.Is(err, backup.ErrWrongKey), errors.Is(err, volume.ErrExists), errors.Is(err, volume.ErrUnsupported),
		errors.Is(err, volume.ErrNotOwned):
		// Each needs an operator (the storage's key, a volume in the way, a driver that cannot do this):
		// retrying for the operation's whole deadline would only delay the answer.
		return temporal.NewNonRetryableApplicationError(msg, activities.ErrInvalidArgument, err)
	}
	return fmt.Errorf("%s: %w", op, err)
}
