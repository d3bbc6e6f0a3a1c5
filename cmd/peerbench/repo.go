package main

import (
	"context"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	s3store "github.com/holdfast/holdfast/activities/backup/s3"
)

// The repository kinds every tool is measured on.
const (
	kindLocal = "local"
	kindS3    = "s3"
)

var repoKinds = []string{kindLocal, kindS3}

// repo is one tool's repository for one run: a directory, or a bucket of its own in MinIO. dir holds the
// tool's state either way (configuration, cache, restores); for a local repository the data is in data.
type repo struct {
	kind     string
	dir      string
	data     string // local: the repository directory
	bucket   string // s3
	endpoint string // s3: as given, e.g. http://127.0.0.1:9000
	s3       *s3store.Store
}

func newRepo(ctx context.Context, cfg config, runDir, toolName, kind string, run int) (*repo, error) {
	r := &repo{kind: kind, dir: filepath.Join(runDir, toolName+"-"+kind)}
	r.data = filepath.Join(r.dir, "repo")
	if err := os.MkdirAll(r.dir, 0o755); err != nil {
		return nil, err
	}
	if kind == kindLocal {
		return r, nil
	}
	r.endpoint = cfg.endpoint
	r.bucket = fmt.Sprintf("peerbench-%s-%d-%08x", toolName, run+1, rand.Uint32())
	st, err := s3store.New(ctx, s3store.Config{Endpoint: cfg.endpoint, Bucket: r.bucket, PathStyle: true,
		AccessKey: accessKey(), SecretKey: secretKey()})
	if err != nil {
		return nil, err
	}
	if err := st.EnsureBucket(ctx); err != nil {
		return nil, fmt.Errorf("bucket %s: %w", r.bucket, err)
	}
	r.s3 = st
	return r, nil
}

// endpointHost is the endpoint without its scheme, as kopia takes it.
func (r *repo) endpointHost() string {
	u, err := url.Parse(r.endpoint)
	if err != nil || u.Host == "" {
		return r.endpoint
	}
	return u.Host
}

// size is the repository's bytes: the files under data, or the objects in the bucket.
func (r *repo) size(ctx context.Context) (int64, error) {
	var n int64
	if r.s3 == nil {
		err := filepath.WalkDir(r.data, func(_ string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return err
			}
			fi, err := d.Info()
			n += fi.Size()
			return err
		})
		if os.IsNotExist(err) {
			return 0, nil
		}
		return n, err
	}
	err := r.eachObject(ctx, func(o s3Object) error { n += o.size; return nil })
	return n, err
}

type s3Object struct {
	key  string
	size int64
}

func (r *repo) eachObject(ctx context.Context, fn func(s3Object) error) error {
	p := s3.NewListObjectsV2Paginator(r.s3.Client(), &s3.ListObjectsV2Input{Bucket: aws.String(r.bucket)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("list %s: %w", r.bucket, err)
		}
		for _, o := range page.Contents {
			if err := fn(s3Object{key: aws.ToString(o.Key), size: aws.ToInt64(o.Size)}); err != nil {
				return err
			}
		}
	}
	return nil
}

// remove deletes the bucket and everything in it (the directory goes with the run's).
func (r *repo) remove() {
	if r.s3 == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := r.s3.Client()
	_ = r.eachObject(ctx, func(o s3Object) error {
		_, err := c.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(r.bucket), Key: aws.String(o.key)})
		return err
	})
	_, _ = c.DeleteBucket(ctx, &s3.DeleteBucketInput{Bucket: aws.String(r.bucket)})
}

func accessKey() string { return envOr("HOLDFAST_TEST_S3_ACCESS_KEY", "holdfast") }
func secretKey() string { return envOr("HOLDFAST_TEST_S3_SECRET_KEY", "holdfast-secret") }

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
