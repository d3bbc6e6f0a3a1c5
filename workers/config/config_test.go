package config

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const full = `
temporal: {address: "temporal:7233", namespace: prod}
limits: {owner_in_flight: 4, cooldown: 2m, deadline: 90m}
plans:
  standard: {}
  pro: {max_snapshots: 20, max_backups: 30, snapshot_credit_value: 0.5, backup_credit_value: 0.25}
backup_storages:
  s3-eu: {type: s3, endpoint: "http://127.0.0.1:9000", bucket: holdfast, path_style: true,
          access_key_env: S3_KEY, secret_key_env: S3_SECRET}
  local: {type: fs, path: /var/lib/holdfast/backups}
hypervisor_groups:
  eu-1: {backup_storage: s3-eu}
  lab: {}
hypervisors:
  hv1: {group: eu-1, bandwidth_bytes_per_second: 100000000}
  hv2: {group: lab, concurrency: 4}
`

func TestParseAppliesDefaultsAndResolvesStorage(t *testing.T) {
	c, err := Parse(strings.NewReader(full))
	require.NoError(t, err)
	assert.Equal(t, "temporal:7233", c.Temporal.Address)
	assert.Equal(t, 4, c.Limits.OwnerInFlight)
	assert.Equal(t, 2*time.Minute, c.Limits.Cooldown)
	assert.Equal(t, 90*time.Minute, c.Limits.Deadline)
	assert.Equal(t, DefaultMaxSnapshots, c.Plans["standard"].MaxSnapshots)
	assert.Equal(t, DefaultMaxBackups, c.Plans["standard"].MaxBackups)
	assert.Equal(t, 20, c.Plans["pro"].MaxSnapshots)
	assert.Equal(t, 0.25, c.Plans["pro"].BackupCreditValue)
	assert.Equal(t, "s3-eu", c.BackupStorage("hv1"))
	assert.Equal(t, "", c.BackupStorage("hv2"), "a group without storage has none")
	assert.Equal(t, "", c.BackupStorage("nope"))
	assert.Equal(t, 2, c.Hypervisors["hv1"].Concurrency)
	assert.Equal(t, "us-east-1", c.Storages["s3-eu"].S3.Region)
	assert.NotContains(t, c.String(), "S3_SECRET")
}

func TestEmptyConfigGetsSpecDefaults(t *testing.T) {
	c, err := Parse(strings.NewReader(""))
	require.NoError(t, err)
	assert.Equal(t, DefaultOwnerLimit, c.Limits.OwnerInFlight)
	assert.Equal(t, DefaultCooldown, c.Limits.Cooldown)
	assert.Equal(t, DefaultDeadline, c.Limits.Deadline)
	require.Contains(t, c.Plans, DefaultPlan)
	assert.Equal(t, 5, c.Plans[DefaultPlan].MaxSnapshots)
	assert.Equal(t, 10, c.Plans[DefaultPlan].MaxBackups)
	assert.Equal(t, Control{WorkflowPollers: DefaultControlPollers, ActivityPollers: DefaultControlPollers,
		WorkflowCache: DefaultWorkflowCache}, c.Control)
}

func TestExplicitZeroCooldownIsKept(t *testing.T) {
	c, err := Parse(strings.NewReader("limits: {cooldown: 0s}"))
	require.NoError(t, err)
	assert.Equal(t, time.Duration(0), c.Limits.Cooldown)
	assert.Equal(t, DefaultDeadline, c.Limits.Deadline)
}

func TestValidationNamesTheField(t *testing.T) {
	cases := map[string]string{
		"hypervisors: {hv1: {group: nowhere}}":                           "hypervisors.hv1.group: unknown hypervisor group \"nowhere\"",
		"hypervisor_groups: {g: {backup_storage: missing}}":              "hypervisor_groups.g.backup_storage: unknown backup storage \"missing\"",
		"backup_storages: {x: {type: ftp}}":                              "backup_storages.x.type: must be fs or s3",
		"backup_storages: {x: {type: fs}}":                               "backup_storages.x.path: is required",
		"backup_storages: {x: {type: s3}}":                               "backup_storages.x.bucket: is required",
		"plans: {p: {max_backups: -1}}":                                  "plans.p.max_backups: must not be negative",
		"limits: {deadline: 10s}":                                        "limits.deadline: must be at least 1m",
		"hypervisors: {\"bad id!\": {}}":                                 "hypervisors.bad id!: id",
		"hypervisors: {hv1: {concurrency: -2}}":                          "hypervisors.hv1.concurrency: must be at least 1",
		"control: {workflow_pollers: -1}":                                "control.workflow_pollers: must be at least 1",
		"control: {workflow_cache: -5}":                                  "control.workflow_cache: must be at least 1",
		"control: {activity_pollers: -3}":                                "control.activity_pollers: must be at least 1",
		"backup_storages: {x: {type: s3, bucket: b, access_key_env: K}}": "backup_storages.x.access_key_env",
	}
	for in, want := range cases {
		_, err := Parse(strings.NewReader(in))
		if assert.Error(t, err, in) {
			assert.Contains(t, err.Error(), want, in)
		}
	}
}

func TestReplicaIsAnotherStorageWithTheSameKey(t *testing.T) {
	c, err := Parse(strings.NewReader(`
backup_storages:
  primary: {type: fs, path: /a, encryption_key_file: /etc/k, replica: offsite, require_replication: true}
  offsite: {type: s3, bucket: b, encryption_key_file: /etc/k}
  lab: {type: fs, path: /l, replica: lab-copy}
  lab-copy: {type: fs, path: /m}
`))
	require.NoError(t, err)
	name, required := c.Replica("primary")
	assert.Equal(t, "offsite", name)
	assert.True(t, required)
	name, required = c.Replica("lab")
	assert.Equal(t, "lab-copy", name)
	assert.False(t, required, "replication is best effort by default")
	name, required = c.Replica("offsite")
	assert.Equal(t, "", name, "a storage without a replica has none")
	assert.False(t, required)
	name, _ = c.Replica("nope")
	assert.Equal(t, "", name)
	assert.Equal(t, []string{"lab", "lab-copy", "offsite", "primary"}, c.StorageNames())

	cases := map[string]string{
		"backup_storages: {a: {type: fs, path: /a, replica: b}}":                "backup_storages.a.replica: unknown backup storage \"b\"",
		"backup_storages: {a: {type: fs, path: /a, replica: a}}":                "backup_storages.a.replica: must name another backup storage",
		"backup_storages: {a: {type: fs, path: /a, require_replication: true}}": "backup_storages.a.require_replication: needs a replica",
		`backup_storages: {a: {type: fs, path: /a, replica: b, encryption_key_file: /k},
                   b: {type: fs, path: /b}}`: "backup_storages.a.replica: replica \"b\" has encryption_key_file \"\"",
		`backup_storages: {a: {type: fs, path: /a, replica: b},
                   b: {type: fs, path: /b, encryption_key_file: /k}}`: "same key",
		`backup_storages: {a: {type: fs, path: /a, replica: b, encryption_key_file: /k1},
                   b: {type: fs, path: /b, encryption_key_file: /k2}}`: "backup_storages.a.replica",
	}
	for in, want := range cases {
		_, err := Parse(strings.NewReader(in))
		if assert.Error(t, err, in) {
			assert.Contains(t, err.Error(), want, in)
		}
	}
}

func TestUnknownFieldsAreRejected(t *testing.T) {
	_, err := Parse(strings.NewReader("plans: {standard: {max_snapshot: 3}}"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "max_snapshot")
}

func TestDeployExampleIsValid(t *testing.T) {
	c, err := Load("../../deploy/holdfast.example.yaml")
	require.NoError(t, err)
	assert.Equal(t, "offsite-s3", c.BackupStorage("hv-fra1-01"))
	assert.Equal(t, []string{"file", "rbd"}, c.Hypervisors["hv-fra1-01"].Drivers)
	assert.Equal(t, []string{"file"}, c.Hypervisors["hv-lab-01"].Drivers)
	replica, required := c.Replica("offsite-s3")
	assert.Equal(t, "offsite-s3-dr", replica)
	assert.False(t, required)
}

func TestPoliciesAreParsedAndValidatedByField(t *testing.T) {
	c, err := Parse(strings.NewReader(`
policies:
  nightly: {kind: backup, time_zone: Europe/Berlin, window: {start: "01:00", end: "05:00"}, keep_last: 7, keep_weekly: 4}
  quick: {kind: snapshot, every: 2s, keep_last: 2}
`))
	require.NoError(t, err)
	p := c.Policy("nightly")
	require.NotNil(t, p)
	assert.Equal(t, "nightly", p.PolicyID, "the key is the id")
	assert.Equal(t, 4*time.Hour, p.JitterDuration(), "jitter defaults to the window")
	assert.Equal(t, 2*time.Second, c.Policy("quick").Interval())
	assert.Nil(t, c.Policy("nope"))

	cases := map[string]string{
		"policies: {p: {kind: restore, every: 1h}}":                                             "policies.p.kind: must be snapshot or backup",
		"policies: {p: {kind: backup}}":                                                         "policies.p.every: give every, cron or window",
		"policies: {p: {kind: backup, every: 1h, time_zone: Nowhere/City}}":                     "policies.p.time_zone: unknown time zone",
		"policies: {p: {kind: backup, window: {start: \"25:00\", end: \"05:00\"}}}":             "policies.p.window.start: must be HH:MM",
		"policies: {p: {kind: backup, window: {start: \"01:00\", end: \"02:00\"}, jitter: 2h}}": "policies.p.jitter: must not exceed the window's length",
		"policies: {p: {kind: backup, every: 1h, keep_last: -1}}":                               "policies.p.keep_last: must be 0 to 1000",
		"policies: {\"bad id\": {kind: backup, every: 1h}}":                                     "policies.bad id: id",
		"policies: {p: }": "policies.p: is empty",
	}
	for in, want := range cases {
		_, err := Parse(strings.NewReader(in))
		if assert.Error(t, err, in) {
			assert.Contains(t, err.Error(), want, in)
		}
	}
	_, err = Parse(strings.NewReader("policies: {p: {kind: backup, every: 1h, keep: 3}}"))
	assert.ErrorContains(t, err, "keep", "unknown fields are rejected")
}
