package stores_test

import (
	"context"
	"strings"
	"testing"

	"github.com/holdfast/holdfast/activities/backup/fs"
	"github.com/holdfast/holdfast/activities/backup/s3"
	"github.com/holdfast/holdfast/activities/backup/stores"
)

func TestOpen(t *testing.T) {
	ctx := context.Background()
	st, err := stores.Open(ctx, stores.Config{Type: "fs", FS: fsConfig(t.TempDir())})
	if err != nil || !strings.HasPrefix(st.String(), "fs:") {
		t.Fatalf("fs: %v %v", st, err)
	}
	st, err = stores.Open(ctx, stores.Config{Type: "s3", S3: s3Config("b")})
	if err != nil || !strings.HasPrefix(st.String(), "s3:") {
		t.Fatalf("s3: %v %v", st, err)
	}
	for _, c := range []struct {
		cfg  stores.Config
		want string
	}{
		{stores.Config{}, "type is required"},
		{stores.Config{Type: "ftp"}, `type "ftp" unknown`},
		{stores.Config{Type: "fs"}, "fs.path"},
		{stores.Config{Type: "s3"}, "s3.bucket"},
	} {
		if _, err := stores.Open(ctx, c.cfg); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Open(%+v) = %v, want error naming %q", c.cfg, err, c.want)
		}
	}
}

func TestKey(t *testing.T) {
	hexKey := strings.Repeat("ab", 32)
	t.Setenv("HF_TEST_KEY", hexKey)
	k, err := stores.Config{EncryptionKeyEnv: "HF_TEST_KEY"}.Key()
	if err != nil || len(k) != 32 || k[0] != 0xab {
		t.Fatalf("hex env key: %x %v", k, err)
	}
	t.Setenv("HF_TEST_KEY", "short")
	if _, err := (stores.Config{EncryptionKeyEnv: "HF_TEST_KEY"}).Key(); err == nil || strings.Contains(err.Error(), "short") {
		t.Fatalf("bad key: %v (must fail without echoing the key)", err)
	}
	if k, err := (stores.Config{}).Key(); k != nil || err != nil {
		t.Fatalf("no key: %v %v", k, err)
	}
}

func fsConfig(p string) fs.Config { return fs.Config{Path: p} }

func s3Config(bucket string) s3.Config {
	return s3.Config{Endpoint: "http://127.0.0.1:1", Bucket: bucket, PathStyle: true, AccessKey: "a", SecretKey: "b"}
}
