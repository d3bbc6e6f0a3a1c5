// Package stores builds a backup.Store (and its engine) from the backup-storage section of Holdfast's
// configuration, by type name. It owns config validation with errors naming the field, and reading the
// encryption key from an env var or file; it must never log or echo secrets.
package stores

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"strings"

	"github.com/holdfast/holdfast/activities/backup"
	"github.com/holdfast/holdfast/activities/backup/fs"
	"github.com/holdfast/holdfast/activities/backup/s3"
)

// Config is one backup storage:
//
//	type: s3                       # or fs
//	s3: {endpoint: http://127.0.0.1:9000, region: us-east-1, bucket: backups, prefix: holdfast,
//	     path_style: true, access_key: ..., secret_key: ...}   # keys omitted → AWS_* env / default chain
//	fs: {path: /mnt/nfs/holdfast}
//	encryption_key_file: /etc/holdfast/backup.key            # or encryption_key_env: HOLDFAST_BACKUP_KEY
type Config struct {
	Type              string    `yaml:"type" json:"type"`
	S3                s3.Config `yaml:"s3" json:"s3"`
	FS                fs.Config `yaml:"fs" json:"fs"`
	EncryptionKeyFile string    `yaml:"encryption_key_file" json:"encryption_key_file,omitempty"`
	EncryptionKeyEnv  string    `yaml:"encryption_key_env" json:"encryption_key_env,omitempty"`
}

// Open builds the store named by cfg.Type. For s3 it does not create the bucket (an operator's job).
func Open(ctx context.Context, cfg Config) (backup.Store, error) {
	switch cfg.Type {
	case "fs":
		if cfg.FS.Path == "" {
			return nil, fmt.Errorf("backup storage: fs.path is required")
		}
		return fs.New(cfg.FS)
	case "s3":
		if cfg.S3.Bucket == "" {
			return nil, fmt.Errorf("backup storage: s3.bucket is required")
		}
		return s3.New(ctx, cfg.S3)
	case "":
		return nil, fmt.Errorf("backup storage: type is required (fs or s3)")
	default:
		return nil, fmt.Errorf("backup storage: type %q unknown (want fs or s3)", cfg.Type)
	}
}

// Key returns the 32-byte encryption key (hex or base64, from the file or env var), or nil when none is
// configured.
func (c Config) Key() ([]byte, error) {
	var raw, field string
	switch {
	case c.EncryptionKeyFile != "" && c.EncryptionKeyEnv != "":
		return nil, fmt.Errorf("backup storage: set encryption_key_file or encryption_key_env, not both")
	case c.EncryptionKeyFile != "":
		b, err := os.ReadFile(c.EncryptionKeyFile)
		if err != nil {
			return nil, fmt.Errorf("backup storage: encryption_key_file: %w", err)
		}
		raw, field = string(b), "encryption_key_file"
	case c.EncryptionKeyEnv != "":
		v, ok := os.LookupEnv(c.EncryptionKeyEnv)
		if !ok {
			return nil, fmt.Errorf("backup storage: encryption_key_env: $%s is not set", c.EncryptionKeyEnv)
		}
		raw, field = v, "encryption_key_env"
	default:
		return nil, nil
	}
	raw = strings.TrimSpace(raw)
	if k, err := hex.DecodeString(raw); err == nil && len(k) == 32 {
		return k, nil
	}
	if k, err := base64.StdEncoding.DecodeString(raw); err == nil && len(k) == 32 {
		return k, nil
	}
	return nil, fmt.Errorf("backup storage: %s: key must be 32 bytes, hex or base64", field)
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
