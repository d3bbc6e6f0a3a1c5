// Package config loads Holdfast's one YAML configuration file: hypervisors, the hypervisor groups that own
// a backup storage, backup storages, plans and the guard-rail limits. Load validates everything up front and
// names the offending field in its errors; every option has a safe default. Secrets are never read from the
// file into logs: storages name environment variables or files that hold them.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/activities/backup/stores"
	"github.com/holdfast/holdfast/workflows"
)

// Defaults of the v1 spec.
const (
	DefaultMaxSnapshots = 5
	DefaultMaxBackups   = 10
	DefaultOwnerLimit   = 3
	DefaultCooldown     = 5 * time.Minute
	DefaultDeadline     = 2 * time.Hour
	DefaultPlan         = "standard"
)

// Config is the whole file.
type Config struct {
	Temporal    Temporal               `yaml:"temporal"`
	Limits      Limits                 `yaml:"limits"`
	Plans       map[string]*Plan       `yaml:"plans"`
	Groups      map[string]*Group      `yaml:"hypervisor_groups"`
	Hypervisors map[string]*Hypervisor `yaml:"hypervisors"`
	Storages    map[string]*Storage    `yaml:"backup_storages"`
	Billing     Billing                `yaml:"billing"`
	Control     Control                `yaml:"control"`
	// Policies are scheduled snapshot/backup policies (policies.<policy_id>); volumes are attached to them
	// through the API. Policies PUT through the API live in Temporal (PolicyWorkflow), not here.
	Policies map[string]*workflows.Policy `yaml:"policies"`
}

// Temporal says how to reach the Temporal frontend.
type Temporal struct {
	Address   string `yaml:"address"`
	Namespace string `yaml:"namespace"`
	// TLS, when set, connects with TLS (CA and client certificate files for mTLS are optional).
	TLS *TLS `yaml:"tls"`
}

// TLS options of the Temporal connection.
type TLS struct {
	CAFile     string `yaml:"ca_file"`
	CertFile   string `yaml:"cert_file"`
	KeyFile    string `yaml:"key_file"`
	ServerName string `yaml:"server_name"`
}

// Control tunes the control worker (holdfast worker control): how many long polls it may keep open for
// workflow and activity tasks, and how many workflows it keeps in memory. Its pollers scale between 1 and
// these with the backlog (the SDK's autoscaling pollers): a fixed 2, the SDK's old default, kept every
// operation's child workflow waiting seconds for its first task under a burst.
type Control struct {
	WorkflowPollers int `yaml:"workflow_pollers"`
	ActivityPollers int `yaml:"activity_pollers"`
	// WorkflowCache is how many workflows the worker keeps in memory between their tasks (the SDK's sticky
	// cache, process-wide). It bounds the worker's memory whatever the number of volumes: a workflow pushed
	// out is replayed from its (bounded) history at its next task.
	WorkflowCache int `yaml:"workflow_cache"`
}

// Control worker defaults: the maximum of each kind of poller, and the workflows kept in memory (a 1,000-volume
// fleet's volume, owner and operation workflows fit, with its night's scheduled runs; the SDK's own default,
// 10,000, let memory grow with the fleet).
const (
	DefaultControlPollers = 16
	DefaultWorkflowCache  = 2_500
)

// Billing says where hourly line items go (both sinks optional; with neither, billing does not run).
type Billing struct {
	// LedgerPath is a JSON-lines ledger file, deduplicated by line-item key.
	LedgerPath string `yaml:"ledger_path"`
	// WebhookURL receives POSTed batches (Idempotency-Key header); WebhookTokenEnv names the environment
	// variable holding its bearer token.
	WebhookURL      string `yaml:"webhook_url"`
	WebhookTokenEnv string `yaml:"webhook_token_env"`
}

// Enabled reports whether any billing sink is configured.
func (b Billing) Enabled() bool { return b.LedgerPath != "" || b.WebhookURL != "" }

// Limits are the guard rails shared by every volume.
type Limits struct {
	// OwnerInFlight bounds the operations in flight per owner across all volumes (spec: 3).
	OwnerInFlight int `yaml:"owner_in_flight"`
	// Cooldown is the pause after an operation ends before the volume takes another (spec: 5m).
	Cooldown time.Duration `yaml:"cooldown"`
	// Deadline is how long an operation may run before it is failed and cleaned up (spec: 2h).
	Deadline time.Duration `yaml:"deadline"`
}

// Plan caps what a volume retains and prices it.
type Plan struct {
	MaxSnapshots int `yaml:"max_snapshots"`
	MaxBackups   int `yaml:"max_backups"`
	// Credit values are credits per GB of retained available items per month (0: free within the caps).
	SnapshotCreditValue float64 `yaml:"snapshot_credit_value"`
	BackupCreditValue   float64 `yaml:"backup_credit_value"`
}

// Group is a set of hypervisors sharing one backup storage ("" or absent: none configured).
type Group struct {
	BackupStorage string `yaml:"backup_storage"`
}

// Hypervisor is one host whose agent serves task queue hypervisor/<hypervisor_id>.
type Hypervisor struct {
	Group string `yaml:"group"`
	// Concurrency bounds the activities the agent runs at once (default 2).
	Concurrency int `yaml:"concurrency"`
	// BandwidthBytesPerSecond bounds the agent's backup/restore I/O, shared by all its activities (0: no limit).
	BandwidthBytesPerSecond int64 `yaml:"bandwidth_bytes_per_second"`
	// LibvirtURI is where domains are looked up (default qemu:///system; "none": no libvirt, volumes detached).
	LibvirtURI string `yaml:"libvirt_uri"`
	// CephConf is the ceph.conf used by the rbd driver (default /etc/ceph/ceph.conf).
	CephConf string `yaml:"ceph_conf"`
	// Drivers are the volume types this host serves: file, rbd (default [file]).
	Drivers []string `yaml:"drivers"`
	// VolumeRoots are the directories file volumes may live in (absolute, clean). Registrations outside them
	// are refused, and a restore to a new volume creates its file in the first one. None: no file volumes.
	VolumeRoots []string `yaml:"volume_roots"`
	// RBDPools are the Ceph pools RBD volumes may live in; a restore creates new images in the first one.
	// None: no RBD volumes.
	RBDPools []string `yaml:"rbd_pools"`
	// ExportDir is where the agent serves instant restores' backups to QEMU (UNIX sockets; default
	// /run/holdfast/exports/<hypervisor id>). It must be the agent's own and writable by no one else;
	// where it cannot be, instant restores are made in full (and say so).
	ExportDir string `yaml:"export_dir"`
	// ExportHTTP is the loopback address (host:port) the agent serves instant restores onto RBD from: raw
	// HTTP streams Ceph's import-only live migration reads (default 127.0.0.1:9470; the migrating image's
	// clients, QEMU on this host and the agent, read it there).
	ExportHTTP string `yaml:"export_http"`
}

// DefaultExportHTTP is a hypervisor's ExportHTTP when the config names none.
const DefaultExportHTTP = "127.0.0.1:9470"

// DefaultExportDir is a hypervisor's ExportDir when the config names none.
func DefaultExportDir(hypervisorID string) string {
	return filepath.Join("/run/holdfast/exports", hypervisorID)
}

// Storage is a backup storage: the store's configuration (stores.Config: its type, that type's settings and
// the encryption key file, as keys of this same section), and where its backups are replicated.
type Storage struct {
	stores.Config `yaml:",inline"`
	// Replica names another backup storage that receives a copy of every backup made here (off-site
	// replication; "": none). Chunks are copied as stored, so it must use the same encryption_key_file.
	Replica string `yaml:"replica"`
	// RequireReplication makes a backup count as available only once its replica verified (default false:
	// replication is best effort, and a backup is available as soon as it is stored here).
	RequireReplication bool `yaml:"require_replication"`
}

// Load reads and validates a configuration file.
func Load(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	defer f.Close()
	c, err := Parse(f)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// Parse decodes (unknown fields are errors), applies defaults and validates.
func Parse(r io.Reader) (*Config, error) {
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	// Limits get their defaults before decoding, so that an explicit zero (cooldown: 0s) stays zero.
	c := Config{Limits: Limits{OwnerInFlight: DefaultOwnerLimit, Cooldown: DefaultCooldown, Deadline: DefaultDeadline}}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	c.applyDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

func (c *Config) applyDefaults() {
	if c.Temporal.Address == "" {
		c.Temporal.Address = "127.0.0.1:7233"
	}
	if c.Temporal.Namespace == "" {
		c.Temporal.Namespace = "default"
	}
	if c.Control.WorkflowPollers == 0 {
		c.Control.WorkflowPollers = DefaultControlPollers
	}
	if c.Control.ActivityPollers == 0 {
		c.Control.ActivityPollers = DefaultControlPollers
	}
	if c.Control.WorkflowCache == 0 {
		c.Control.WorkflowCache = DefaultWorkflowCache
	}
	if c.Plans == nil {
		c.Plans = map[string]*Plan{}
	}
	if len(c.Plans) == 0 {
		c.Plans[DefaultPlan] = &Plan{}
	}
	for _, p := range c.Plans {
		if p == nil {
			continue
		}
		if p.MaxSnapshots == 0 {
			p.MaxSnapshots = DefaultMaxSnapshots
		}
		if p.MaxBackups == 0 {
			p.MaxBackups = DefaultMaxBackups
		}
	}
	for _, h := range c.Hypervisors {
		if h == nil {
			continue
		}
		if h.Concurrency == 0 {
			h.Concurrency = 2
		}
		if h.LibvirtURI == "" {
			h.LibvirtURI = "qemu:///system"
		}
		if h.CephConf == "" {
			h.CephConf = "/etc/ceph/ceph.conf"
		}
		if len(h.Drivers) == 0 {
			h.Drivers = []string{activities.VolumeFile}
		}
	}
	for _, s := range c.Storages {
		if s != nil {
			s.ApplyDefaults()
		}
	}
	for id, p := range c.Policies {
		if p != nil {
			p.PolicyID = id
		}
	}
}

// Validate checks every field; the error names each offending field by its path in the file.
func (c *Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	if u := c.Billing.WebhookURL; u != "" && !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
		bad("billing.webhook_url", "must be an http(s) URL, got %q", u)
	}
	if c.Limits.OwnerInFlight < 1 {
		bad("limits.owner_in_flight", "must be at least 1, got %d", c.Limits.OwnerInFlight)
	}
	if c.Control.WorkflowPollers < 1 {
		bad("control.workflow_pollers", "must be at least 1, got %d", c.Control.WorkflowPollers)
	}
	if c.Control.ActivityPollers < 1 {
		bad("control.activity_pollers", "must be at least 1, got %d", c.Control.ActivityPollers)
	}
	if c.Control.WorkflowCache < 1 {
		bad("control.workflow_cache", "must be at least 1, got %d", c.Control.WorkflowCache)
	}
	if c.Limits.Cooldown < 0 {
		bad("limits.cooldown", "must not be negative, got %s", c.Limits.Cooldown)
	}
	if c.Limits.Deadline < time.Minute {
		bad("limits.deadline", "must be at least 1m, got %s", c.Limits.Deadline)
	}
	for _, id := range sortedKeys(c.Plans) {
		p, f := c.Plans[id], "plans."+id
		checkID(bad, f, id)
		if p == nil {
			bad(f, "is empty")
			continue
		}
		if p.MaxSnapshots < 0 {
			bad(f+".max_snapshots", "must not be negative, got %d", p.MaxSnapshots)
		}
		if p.MaxBackups < 0 {
			bad(f+".max_backups", "must not be negative, got %d", p.MaxBackups)
		}
		if p.SnapshotCreditValue < 0 {
			bad(f+".snapshot_credit_value", "must not be negative, got %g", p.SnapshotCreditValue)
		}
		if p.BackupCreditValue < 0 {
			bad(f+".backup_credit_value", "must not be negative, got %g", p.BackupCreditValue)
		}
	}
	for _, id := range sortedKeys(c.Storages) {
		s, f := c.Storages[id], "backup_storages."+id
		checkID(bad, f, id)
		if s == nil {
			bad(f, "is empty")
			continue
		}
		s.Validate(func(field, msg string) { bad(f+"."+field, "%s", msg) })
		c.validateReplica(bad, id, s)
	}
	for _, id := range sortedKeys(c.Groups) {
		g, f := c.Groups[id], "hypervisor_groups."+id
		checkID(bad, f, id)
		if g == nil || g.BackupStorage == "" {
			continue
		}
		if _, ok := c.Storages[g.BackupStorage]; !ok {
			bad(f+".backup_storage", "unknown backup storage %q", g.BackupStorage)
		}
	}
	for _, id := range sortedKeys(c.Hypervisors) {
		h, f := c.Hypervisors[id], "hypervisors."+id
		checkID(bad, f, id)
		if h == nil {
			bad(f, "is empty")
			continue
		}
		if h.Group != "" {
			if _, ok := c.Groups[h.Group]; !ok {
				bad(f+".group", "unknown hypervisor group %q", h.Group)
			}
		}
		if h.Concurrency < 1 {
			bad(f+".concurrency", "must be at least 1, got %d", h.Concurrency)
		}
		for i, d := range h.Drivers {
			if !slices.Contains(activities.VolumeTypes(), d) {
				bad(fmt.Sprintf("%s.drivers[%d]", f, i), "must be %s, got %q", volumeTypeChoice(), d)
			}
		}
		if h.BandwidthBytesPerSecond < 0 {
			bad(f+".bandwidth_bytes_per_second", "must not be negative, got %d", h.BandwidthBytesPerSecond)
		}
		for i, root := range h.VolumeRoots {
			if !filepath.IsAbs(root) || filepath.Clean(root) != root || root == "/" {
				bad(fmt.Sprintf("%s.volume_roots[%d]", f, i), "must be a clean absolute directory other than /, got %q", root)
			}
		}
		for i, pool := range h.RBDPools {
			if !activities.ValidID(pool) {
				bad(fmt.Sprintf("%s.rbd_pools[%d]", f, i), "must match %s, got %q", activities.IDPattern, pool)
			}
		}
		if d := h.ExportDir; d != "" && (!filepath.IsAbs(d) || filepath.Clean(d) != d || d == "/") {
			bad(f+".export_dir", "must be a clean absolute directory other than /, got %q", d)
		}
		if a := h.ExportHTTP; a != "" {
			host, _, err := net.SplitHostPort(a)
			if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
				bad(f+".export_http", "must be a loopback host:port (e.g. 127.0.0.1:9470), got %q", a)
			}
		}
	}
	for _, id := range sortedKeys(c.Policies) {
		p, f := c.Policies[id], "policies."+id
		checkID(bad, f, id)
		if p == nil {
			bad(f, "is empty")
			continue
		}
		for _, problem := range p.Problems() {
			if field, msg, ok := strings.Cut(problem, ": "); ok && field != "policy_id" {
				bad(f+"."+field, "%s", msg)
			}
		}
	}
	return errors.Join(errs...)
}

// validateReplica checks a storage's replication settings: the replica is another configured storage that
// can read the chunks copied to it as they are (the same encryption key file, or neither encrypted).
func (c *Config) validateReplica(bad func(string, string, ...any), id string, s *Storage) {
	f := "backup_storages." + id
	if s.RequireReplication && s.Replica == "" {
		bad(f+".require_replication", "needs a replica")
	}
	if s.Replica == "" {
		return
	}
	r, ok := c.Storages[s.Replica]
	switch {
	case s.Replica == id:
		bad(f+".replica", "must name another backup storage, not %q itself", id)
	case !ok:
		bad(f+".replica", "unknown backup storage %q", s.Replica)
	case r != nil && r.EncryptionKeyFile != s.EncryptionKeyFile:
		bad(f+".replica", "replica %q has encryption_key_file %q, this storage %q: chunks are copied as stored, "+
			"so both must use the same key", s.Replica, r.EncryptionKeyFile, s.EncryptionKeyFile)
	}
}

// volumeTypeChoice is the volume types as messages offer them: "file or rbd".
func volumeTypeChoice() string { return strings.Join(activities.VolumeTypes(), " or ") }

func checkID(bad func(string, string, ...any), field, id string) {
	if !activities.ValidID(id) {
		bad(field, "id %q must match %s", id, activities.IDPattern)
	}
}

// BackupStorage returns the name of the backup storage of a hypervisor's group ("" when none).
func (c *Config) BackupStorage(hypervisorID string) string {
	h := c.Hypervisors[hypervisorID]
	if h == nil || h.Group == "" {
		return ""
	}
	if g := c.Groups[h.Group]; g != nil {
		return g.BackupStorage
	}
	return ""
}

// Replica returns the storage that receives a copy of every backup made in storage ("" when none) and
// whether a backup there counts as available only once replicated.
func (c *Config) Replica(storage string) (name string, required bool) {
	s := c.Storages[storage]
	if s == nil {
		return "", false
	}
	return s.Replica, s.RequireReplication
}

// HypervisorIDs returns the configured hypervisors, sorted.
func (c *Config) HypervisorIDs() []string { return sortedKeys(c.Hypervisors) }

// Policy returns a config policy (nil when the file defines none by that id).
func (c *Config) Policy(policyID string) *workflows.Policy { return c.Policies[policyID] }

// PolicyIDs returns the config-file policies, sorted.
func (c *Config) PolicyIDs() []string { return sortedKeys(c.Policies) }

// StorageNames returns the configured backup storages, sorted.
func (c *Config) StorageNames() []string { return sortedKeys(c.Storages) }

// PlanIDs returns the configured plans, sorted.
func (c *Config) PlanIDs() []string { return sortedKeys(c.Plans) }

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// String renders the config for logs without secrets (the file holds none: only env/file names).
func (c *Config) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "temporal=%s/%s plans=%v hypervisors=%v storages=%v", c.Temporal.Address,
		c.Temporal.Namespace, c.PlanIDs(), c.HypervisorIDs(), c.StorageNames())
	return b.String()
}
