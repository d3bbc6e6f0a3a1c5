package fs

import (
	"context"

	"github.com/holdfast/holdfast/activities/backup"
)

// Type is the store's name in a backup storage's type field.
const Type = "fs"

// Config configures a file-system store; its keys sit beside type in the backup storage's section of the
// configuration file (stores.Config).
type Config struct {
	Path string `yaml:"path" json:"path"` // root directory; created if missing
}

// Type is the store's name in a backup storage's type field.
func (Config) Type() string { return Type }

// Validate reports, through bad, each setting the store cannot open with.
func (c Config) Validate(bad func(field, msg string)) {
	if c.Path == "" {
		bad("path", "is required for type "+Type)
	}
}

// Open opens the store (New).
func (c Config) Open(context.Context) (backup.Store, error) {
	st, err := New(c)
	if err != nil {
		return nil, err
	}
	return st, nil
}
