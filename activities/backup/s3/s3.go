// Package s3 is a backup.Store on any S3-compatible object storage (AWS, MinIO, versitygw, Ceph radosgw),
// through aws-sdk-go-v2.
//
// It owns the key layout under an optional prefix, multipart uploads with concurrent parts, and the mapping
// of S3 errors onto the Store contract. It must never log or return credentials, and never send checksum
// trailers a server did not ask for (radosgw 16.2 rejects streamed CRC32 trailers).
package s3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/feature/s3/manager"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"

	"github.com/holdfast/holdfast/activities/backup"
)

// Store keeps objects as keys prefix/name in one bucket.
type Store struct {
	cfg      Config
	client   *s3.Client
	uploader *manager.Uploader
	prefix   string // "" or "p/"
}

// New builds a client; it does not contact the server (use EnsureBucket or a first call for that).
func New(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Bucket == "" {
		return nil, errors.New("s3 store: bucket is required")
	}
	if (cfg.AccessKey == "") != (cfg.SecretKey == "") {
		return nil, errors.New("s3 store: access_key and secret_key must be given together")
	}
	cfg.ApplyDefaults()
	if cfg.PartSize == 0 {
		cfg.PartSize = 16 << 20
	}
	if cfg.PartSize < manager.MinUploadPartSize {
		return nil, fmt.Errorf("s3 store: part_size must be at least %d", manager.MinUploadPartSize)
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 4
	}
	opts := []func(*config.LoadOptions) error{config.WithRegion(cfg.Region)}
	if cfg.AccessKey != "" {
		opts = append(opts, config.WithCredentialsProvider(
			credentials.NewStaticCredentialsProvider(cfg.AccessKey, cfg.SecretKey, "")))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("s3 store: %w", err)
	}
	// Checksums only when required: streamed CRC32 trailers break radosgw 16.2 (XAmzContentSHA256Mismatch)
	// and buy nothing here — every chunk carries its own content hash, verified on read.
	awsCfg.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
	awsCfg.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
	// Many parts and chunks in flight at once: keep enough idle connections to reuse them.
	awsCfg.HTTPClient = awshttp.NewBuildableClient().WithTransportOptions(func(t *http.Transport) {
		t.MaxIdleConnsPerHost = 64
	})
	client := s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
		o.UsePathStyle = cfg.PathStyle
	})
	uploader := manager.NewUploader(client, func(u *manager.Uploader) {
		u.PartSize = cfg.PartSize
		u.Concurrency = cfg.Concurrency
		u.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		u.LeavePartsOnError = false // abort the multipart upload: nothing half-written stays behind
	})
	prefix := strings.Trim(cfg.Prefix, "/")
	if prefix != "" {
		if err := backup.ValidateName(prefix); err != nil {
			return nil, fmt.Errorf("s3 store: prefix: %w", err)
		}
		prefix += "/"
	}
	return &Store{cfg: cfg, client: client, uploader: uploader, prefix: prefix}, nil
}

func (s *Store) String() string {
	return fmt.Sprintf("s3:%s/%s/%s", s.cfg.Endpoint, s.cfg.Bucket, s.prefix)
}

// Bucket is the bucket the store writes to.
func (s *Store) Bucket() string { return s.cfg.Bucket }

// Client exposes the SDK client (benchmarks use it for the plain-PUT baseline).
func (s *Store) Client() *s3.Client { return s.client }

// EnsureBucket creates the bucket if it does not exist yet (idempotent).
func (s *Store) EnsureBucket(ctx context.Context) error {
	_, err := s.client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(s.cfg.Bucket)})
	var owned *types.BucketAlreadyOwnedByYou
	var exists *types.BucketAlreadyExists
	if err == nil || errors.As(err, &owned) || errors.As(err, &exists) {
		return nil
	}
	return fmt.Errorf("s3 create bucket %s: %w", s.cfg.Bucket, err)
}

func (s *Store) key(name string) (string, error) {
	if err := backup.ValidateName(name); err != nil {
		return "", err
	}
	return s.prefix + name, nil
}

// Put uploads through the multipart manager (a single PutObject below PartSize). The body is wrapped so a
// reader that ends early or fails makes the upload fail — and the manager then aborts it — instead of
// committing a short object.
func (s *Store) Put(ctx context.Context, name string, r io.Reader, size int64) error {
	key, err := s.key(name)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	in := &s3.PutObjectInput{Bucket: aws.String(s.cfg.Bucket), Key: aws.String(key)}
	if rs, ok := r.(io.ReadSeeker); ok && size < s.cfg.PartSize {
		// Seekable and small (every chunk and manifest): one PutObject straight from the caller's buffer, which
		// the SDK can sign and retry; the multipart manager would add a part-sized buffer per upload.
		if err := checkLen(rs, size); err != nil {
			return fmt.Errorf("s3 put %s: %w", name, err)
		}
		in.Body = rs
		in.ContentLength = aws.Int64(size)
		_, err = s.client.PutObject(ctx, in)
	} else {
		in.Body = &exactReader{r: r, left: size}
		_, err = s.uploader.Upload(ctx, in)
	}
	if err != nil {
		return fmt.Errorf("s3 put %s: %w", name, err)
	}
	return nil
}

// checkLen makes sure a seekable body has exactly size bytes from its current offset.
func checkLen(rs io.ReadSeeker, size int64) error {
	cur, err := rs.Seek(0, io.SeekCurrent)
	if err != nil {
		return err
	}
	end, err := rs.Seek(0, io.SeekEnd)
	if err != nil {
		return err
	}
	if _, err := rs.Seek(cur, io.SeekStart); err != nil {
		return err
	}
	if end-cur != size {
		return fmt.Errorf("body has %d bytes, want %d", end-cur, size)
	}
	return nil
}

// exactReader yields exactly left bytes, turning an early EOF into io.ErrUnexpectedEOF.
type exactReader struct {
	r    io.Reader
	left int64
}

func (e *exactReader) Read(p []byte) (int, error) {
	if e.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > e.left {
		p = p[:e.left]
	}
	n, err := e.r.Read(p)
	e.left -= int64(n)
	if err == io.EOF {
		if e.left > 0 {
			return n, io.ErrUnexpectedEOF
		}
		return n, io.EOF
	}
	return n, err
}

func (s *Store) Get(ctx context.Context, name string) (io.ReadCloser, error) {
	key, err := s.key(name)
	if err != nil {
		return nil, err
	}
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(s.cfg.Bucket), Key: aws.String(key)})
	if err != nil {
		return nil, mapErr("get", name, err)
	}
	return out.Body, nil
}

func (s *Store) Stat(ctx context.Context, name string) (backup.ObjectInfo, error) {
	key, err := s.key(name)
	if err != nil {
		return backup.ObjectInfo{}, err
	}
	out, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(s.cfg.Bucket), Key: aws.String(key)})
	if err != nil {
		return backup.ObjectInfo{}, mapErr("stat", name, err)
	}
	return backup.ObjectInfo{Name: name, Size: aws.ToInt64(out.ContentLength), ModTime: aws.ToTime(out.LastModified)}, nil
}

func (s *Store) List(ctx context.Context, prefix string, fn func(backup.ObjectInfo) error) error {
	p := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{
		Bucket: aws.String(s.cfg.Bucket),
		Prefix: aws.String(s.prefix + prefix),
	})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("s3 list %s: %w", prefix, err)
		}
		for _, o := range page.Contents {
			name := strings.TrimPrefix(aws.ToString(o.Key), s.prefix)
			if err := fn(backup.ObjectInfo{Name: name, Size: aws.ToInt64(o.Size), ModTime: aws.ToTime(o.LastModified)}); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s *Store) Delete(ctx context.Context, name string) error {
	key, err := s.key(name)
	if err != nil {
		return err
	}
	_, err = s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(s.cfg.Bucket), Key: aws.String(key)})
	if err != nil {
		if err := mapErr("delete", name, err); errors.Is(err, backup.ErrNotExist) {
			return nil // some servers answer 404 for a missing key; the contract says success
		}
		return fmt.Errorf("s3 delete %s: %w", name, err)
	}
	return nil
}

// mapErr turns a missing key (but not a missing bucket) into ErrNotExist.
func mapErr(op, name string, err error) error {
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode() == "NoSuchBucket" {
		return fmt.Errorf("s3 %s %s: %w", op, name, err)
	}
	var nsk *types.NoSuchKey
	var nf *types.NotFound
	var re *awshttp.ResponseError
	if errors.As(err, &nsk) || errors.As(err, &nf) || (errors.As(err, &re) && re.HTTPStatusCode() == http.StatusNotFound) {
		return fmt.Errorf("s3 %s %s: %w", op, name, backup.ErrNotExist)
	}
	return fmt.Errorf("s3 %s %s: %w", op, name, err)
}
