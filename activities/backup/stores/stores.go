// Package stores is the registry of backup stores: it lists every store type once, in Config, and builds a
// backup.Store (and its engine) from a backup storage's configuration by the type it names. Each store
// package owns its settings, their validation and its constructor (Settings); this package owns the type
// field, the encryption key, and reading that key from its file. It must never log or echo secrets.
package stores

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strings"

	"github.com/holdfast/holdfast/activities/backup"
	"github.com/holdfast/holdfast/activities/backup/fs"
	"github.com/holdfast/holdfast/activities/backup/s3"
)

// Config is one backup storage as the configuration file gives it (backup_storages.<name>, whose replication
// settings are the control plane's): its type, the settings of the store types beside it, and the key:
//
//	type: s3                       # or fs
//	endpoint: http://127.0.0.1:9000
//	bucket: backups                # s3's keys: endpoint, region, bucket, prefix, path_style,
//	access_key_env: S3_KEY         # access_key_env, secret_key_env; fs's: path
//	secret_key_env: S3_SECRET
//	encryption_key_file: /etc/holdfast/backup.key
type Config struct {
	Type string `yaml:"type"`

	// The registry: every store type's Settings, one line each; adding a store type is adding its package
	// and its line here. Their keys share the storage's section with type (the file's format), so a store
	// type must not take another's key.
	FS fs.Config `yaml:",inline"`
	S3 s3.Config `yaml:",inline"`

	// EncryptionKeyFile, when set, holds a 32-byte key (hex or base64) for client-side AES-256-GCM encryption.
	EncryptionKeyFile string `yaml:"encryption_key_file"`
}

// Settings is one store type's part of a Config: the keys it reads from a backup storage's section, their
// checks, and the store's constructor. A store package's Config implements it; it may also have an
// ApplyDefaults() method, filling settings the file leaves out, and a ReadSecrets() error method, reading
// credentials from where its settings point (an environment variable, never the file).
type Settings interface {
	// Type is the store's name in the type field.
	Type() string
	// Validate reports each setting the store cannot open with through bad, naming the field by its key.
	Validate(bad func(field, msg string))
	// Open builds the store from valid settings. It creates no bucket (an operator's job).
	Open(ctx context.Context) (backup.Store, error)
}

// settings returns the Settings of every store type in c, by type name: the fields of Config that are
// Settings. They are found by reflection so that Config's field list stays the only list of store types
// (the file is flat: each type's keys must be its field's, decoded inline, so the field cannot go).
func (c *Config) settings() map[string]Settings {
	v := reflect.ValueOf(c).Elem()
	byType := map[string]Settings{}
	for i := range v.NumField() {
		s, ok := v.Field(i).Addr().Interface().(Settings)
		if !ok {
			continue
		}
		if _, taken := byType[s.Type()]; taken {
			panic("stores: two store types named " + s.Type()) // a registry mistake: every test catches it
		}
		byType[s.Type()] = s
	}
	return byType
}

// Types returns the name of every store type, sorted.
func Types() []string {
	var types []string
	for t := range new(Config).settings() {
		types = append(types, t)
	}
	sort.Strings(types)
	return types
}

// typeChoice is the store types as messages offer them: "fs or s3".
func typeChoice() string { return strings.Join(Types(), " or ") }

// store returns the Settings of the type c names (false when no store type has that name).
func (c *Config) store() (Settings, bool) {
	s, ok := c.settings()[c.Type]
	return s, ok
}

// Validate reports, through bad, each problem that keeps the configured store from opening, naming the field
// by its key in the backup storage's section.
func (c *Config) Validate(bad func(field, msg string)) {
	s, ok := c.store()
	if !ok {
		bad("type", fmt.Sprintf("must be %s, got %q", typeChoice(), c.Type))
		return
	}
	s.Validate(bad)
}

// ApplyDefaults fills the settings of the configured store type that the file leaves out.
func (c *Config) ApplyDefaults() {
	if s, ok := c.store(); ok {
		if d, ok := s.(interface{ ApplyDefaults() }); ok {
			d.ApplyDefaults()
		}
	}
}

// ReadSecrets reads the configured store's credentials from the environment variables its settings name.
func (c *Config) ReadSecrets() error {
	if s, ok := c.store(); ok {
		if r, ok := s.(interface{ ReadSecrets() error }); ok {
			return r.ReadSecrets()
		}
	}
	return nil
}

// Open builds the store named by cfg.Type. For s3 it does not create the bucket (an operator's job).
func Open(ctx context.Context, cfg Config) (backup.Store, error) {
	if cfg.Type == "" {
		return nil, fmt.Errorf("backup storage: type is required (%s)", typeChoice())
	}
	s, ok := cfg.store()
	if !ok {
		return nil, fmt.Errorf("backup storage: type %q unknown (want %s)", cfg.Type, typeChoice())
	}
	var problems []error
	s.Validate(func(field, msg string) {
		problems = append(problems, fmt.Errorf("backup storage: %s.%s: %s", cfg.Type, field, msg))
	})
	if err := errors.Join(problems...); err != nil {
		return nil, err
	}
	return s.Open(ctx)
}

// Key returns the 32-byte encryption key (hex or base64, from encryption_key_file), or nil when none is
// configured.
func (c Config) Key() ([]byte, error) {
	if c.EncryptionKeyFile == "" {
		return nil, nil
	}
	b, err := os.ReadFile(c.EncryptionKeyFile)
	if err != nil {
		return nil, fmt.Errorf("backup storage: encryption_key_file: %w", err)
	}
	raw := strings.TrimSpace(string(b))
	if k, err := hex.DecodeString(raw); err == nil && len(k) == 32 {
		return k, nil
	}
	if k, err := base64.StdEncoding.DecodeString(raw); err == nil && len(k) == 32 {
		return k, nil
	}
	return nil, fmt.Errorf("backup storage: encryption_key_file: key must be 32 bytes, hex or base64")
}

// OpenEngine opens the store and returns an engine on it with the configured key; opts.Key is overridden.
func OpenEngine(ctx context.Context, cfg Config, opts backup.Options) (*backup.Engine, error) {
	st, err := Open(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if opts.Key, err = cfg.Key(); err != nil {
		return nil, err
	}
	return backup.New(st, opts)
}
