package s3

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/holdfast/holdfast/activities/backup"
)

// Type is the store's name in a backup storage's type field.
const Type = "s3"

// DefaultRegion is the region of a store that names none.
const DefaultRegion = "us-east-1"

// Config configures an S3 store; its keys sit beside type in the backup storage's section of the
// configuration file (stores.Config). Credentials never come from the file: AccessKeyEnv and SecretKeyEnv
// name the environment variables ReadSecrets takes them from. AccessKey and SecretKey are either both given
// or both empty, in which case the SDK's default chain is used (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
// env, shared config, instance role).
type Config struct {
	Endpoint  string `yaml:"endpoint" json:"endpoint"`     // e.g. http://127.0.0.1:9000; empty = AWS
	Region    string `yaml:"region" json:"region"`         // default DefaultRegion
	Bucket    string `yaml:"bucket" json:"bucket"`         // required
	Prefix    string `yaml:"prefix" json:"prefix"`         // optional key prefix, e.g. "holdfast"
	PathStyle bool   `yaml:"path_style" json:"path_style"` // bucket in the path (MinIO, radosgw, versitygw)
	// AccessKeyEnv and SecretKeyEnv name the environment variables holding the credentials (empty: the
	// SDK's default chain).
	AccessKeyEnv string `yaml:"access_key_env" json:"access_key_env,omitempty"`
	SecretKeyEnv string `yaml:"secret_key_env" json:"secret_key_env,omitempty"`
	// The rest is never read from the configuration file.
	AccessKey   string `yaml:"-" json:"access_key"`  // optional; see type comment
	SecretKey   string `yaml:"-" json:"-"`           // never serialised back out
	PartSize    int64  `yaml:"-" json:"part_size"`   // multipart part size; default 16 MiB
	Concurrency int    `yaml:"-" json:"concurrency"` // parts in flight per object; default 4
}

// LogValue keeps the secret out of structured logs even if a caller logs the whole config.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(slog.String("endpoint", c.Endpoint), slog.String("region", c.Region),
		slog.String("bucket", c.Bucket), slog.String("prefix", c.Prefix), slog.Bool("path_style", c.PathStyle))
}

// String is the redacted form, so fmt's %v of a Config never prints the secret.
func (c Config) String() string {
	return fmt.Sprintf("s3{endpoint=%s bucket=%s prefix=%s path_style=%t}", c.Endpoint, c.Bucket, c.Prefix, c.PathStyle)
}

// Type is the store's name in a backup storage's type field.
func (Config) Type() string { return Type }

// Validate reports, through bad, each setting the store cannot open with.
func (c Config) Validate(bad func(field, msg string)) {
	if c.Bucket == "" {
		bad("bucket", "is required for type "+Type)
	}
	if (c.AccessKeyEnv == "") != (c.SecretKeyEnv == "") {
		bad("access_key_env", "access_key_env and secret_key_env go together")
	}
}

// ApplyDefaults fills the region a configuration leaves out.
func (c *Config) ApplyDefaults() {
	if c.Region == "" {
		c.Region = DefaultRegion
	}
}

// ReadSecrets sets AccessKey and SecretKey from the environment variables AccessKeyEnv and SecretKeyEnv name,
// when they name any; both must then be set.
func (c *Config) ReadSecrets() error {
	if c.AccessKeyEnv == "" {
		return nil
	}
	c.AccessKey, c.SecretKey = os.Getenv(c.AccessKeyEnv), os.Getenv(c.SecretKeyEnv)
	if c.AccessKey == "" || c.SecretKey == "" {
		return fmt.Errorf("credentials: %s and %s must be set", c.AccessKeyEnv, c.SecretKeyEnv)
	}
	return nil
}

// Open builds the store's client (New): it neither contacts the server nor creates the bucket.
func (c Config) Open(ctx context.Context) (backup.Store, error) {
	st, err := New(ctx, c)
	if err != nil {
		return nil, err
	}
	return st, nil
}
