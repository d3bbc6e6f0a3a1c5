package s3_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/holdfast/holdfast/activities/backup"
	s3store "github.com/holdfast/holdfast/activities/backup/s3"
	"github.com/holdfast/holdfast/activities/backup/s3/s3test"
	"github.com/holdfast/holdfast/activities/backup/storetest"
)

func TestConformance(t *testing.T) {
	for _, srv := range s3test.Servers() {
		t.Run(srv.Name, func(t *testing.T) {
			storetest.Run(t, func(t *testing.T) backup.Store { return s3test.NewStore(t, srv) }, storetest.Options{})
		})
	}
}

// A prefix keeps two stores in one bucket apart, and names come back without it.
func TestPrefix(t *testing.T) {
	srv := s3test.Servers()[0]
	base := s3test.NewStore(t, srv)
	cfg := s3test.Config(t, srv)
	ctx := context.Background()
	cfgA, cfgB := cfg, cfg
	cfgA.Bucket, cfgB.Bucket = bucketOf(base), bucketOf(base)
	cfgA.Prefix, cfgB.Prefix = "tenant-a", "tenant-b/x"
	a, err := s3store.New(ctx, cfgA)
	if err != nil {
		t.Fatal(err)
	}
	b, err := s3store.New(ctx, cfgB)
	if err != nil {
		t.Fatal(err)
	}
	if err := backup.PutBytes(ctx, a, "volumes/v/obj", []byte("a")); err != nil {
		t.Fatal(err)
	}
	var names []string
	if err := b.List(ctx, "", func(oi backup.ObjectInfo) error { names = append(names, oi.Name); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(names) != 0 {
		t.Fatalf("store b sees %v", names)
	}
	if err := a.List(ctx, "", func(oi backup.ObjectInfo) error { names = append(names, oi.Name); return nil }); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(names) != "[volumes/v/obj]" {
		t.Fatalf("store a lists %v", names)
	}
	if err := a.Delete(ctx, "volumes/v/obj"); err != nil {
		t.Fatal(err)
	}
}

// The config's printed forms never carry the secret.
func TestConfigRedacted(t *testing.T) {
	c := s3store.Config{Bucket: "b", AccessKey: "AK", SecretKey: "very-secret"}
	for _, s := range []string{fmt.Sprint(c), fmt.Sprintf("%+v", c), c.LogValue().String()} {
		if strings.Contains(s, "very-secret") {
			t.Fatalf("secret printed: %s", s)
		}
	}
}

func bucketOf(s *s3store.Store) string { return s.Bucket() }
