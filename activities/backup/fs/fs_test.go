package fs_test

import (
	"testing"

	"github.com/holdfast/holdfast/activities/backup"
	"github.com/holdfast/holdfast/activities/backup/fs"
	"github.com/holdfast/holdfast/activities/backup/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) backup.Store {
		s, err := fs.New(fs.Config{Path: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}, storetest.Options{})
}
