// Package s3test gives tests an empty S3 store on each local test server (MinIO, versitygw) started by
// `make services-up-s3`. It owns bucket naming (unique per test, so packages can run in parallel) and
// cleanup; it must never be imported by non-test code paths that run in production.
package s3test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/holdfast/holdfast/activities/backup"
	s3store "github.com/holdfast/holdfast/activities/backup/s3"
	"github.com/holdfast/holdfast/activities/backup/storetest"
)

// Server is one local S3 test server.
type Server struct {
	Name     string // "minio", "versitygw"
	Endpoint string
}

// Servers lists the test servers; the endpoints default to what scripts/mk/s3.mk exports.
func Servers() []Server {
	return []Server{
		{"minio", env("HOLDFAST_TEST_S3_MINIO", "http://127.0.0.1:9000")},
		{"versitygw", env("HOLDFAST_TEST_S3_VERSITYGW", "http://127.0.0.1:9004")},
	}
}

func env(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// Config is a store config for srv with a fresh unique bucket name derived from the test name.
func Config(t testing.TB, srv Server) s3store.Config {
	name := strings.ToLower(t.Name())
	name = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			return r
		}
		return '-'
	}, name)
	if len(name) > 35 {
		name = name[len(name)-35:]
	}
	bucket := strings.Trim(fmt.Sprintf("hf-%s-%08x", name, rand.Uint32()), "-")
	bucket = strings.ReplaceAll(bucket, "--", "-")
	return s3store.Config{
		Endpoint:  srv.Endpoint,
		Bucket:    bucket,
		PathStyle: true,
		AccessKey: env("HOLDFAST_TEST_S3_ACCESS_KEY", "holdfast"),
		SecretKey: env("HOLDFAST_TEST_S3_SECRET_KEY", "holdfast-secret"),
		PartSize:  5 << 20,
	}
}

// NewStore returns an empty store in a new bucket on srv, removed when the test ends. It skips (locally)
// or fails (CI=true) when the server is not reachable.
func NewStore(t testing.TB, srv Server) *s3store.Store {
	t.Helper()
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(srv.Endpoint)
	if err != nil {
		storetest.RequireService(t, "S3 server "+srv.Name+" at "+srv.Endpoint, "services-up-s3", err)
	} else {
		resp.Body.Close()
	}
	ctx := context.Background()
	cfg := Config(t, srv)
	st, err := s3store.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.EnsureBucket(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = st.List(ctx, "", func(oi backup.ObjectInfo) error { return st.Delete(ctx, oi.Name) })
		_, _ = st.Client().DeleteBucket(ctx, &s3.DeleteBucketInput{Bucket: aws.String(cfg.Bucket)})
	})
	return st
}
