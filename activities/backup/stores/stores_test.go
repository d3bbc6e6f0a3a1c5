package stores_test

import (
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

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

func TestTypes(t *testing.T) {
	if got := stores.Types(); !slices.Equal(got, []string{fs.Type, s3.Type}) {
		t.Fatalf("Types() = %v", got)
	}
	var bad []string
	(&stores.Config{Type: "ftp"}).Validate(func(field, msg string) { bad = append(bad, field+": "+msg) })
	if !slices.Equal(bad, []string{`type: must be fs or s3, got "ftp"`}) {
		t.Fatalf("Validate of an unknown type: %q", bad)
	}
}

// A store type's settings sit beside type in the file, and only the configured type's are checked,
// defaulted and given their secrets.
func TestSettingsOfTheConfiguredType(t *testing.T) {
	var c stores.Config
	dec := yaml.NewDecoder(strings.NewReader("{type: s3, bucket: b, access_key_env: HF_TEST_AK, " +
		"secret_key_env: HF_TEST_SK, path: /ignored/by/s3}"))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		t.Fatal(err)
	}
	var bad []string
	c.Validate(func(field, msg string) { bad = append(bad, field+": "+msg) })
	if len(bad) != 0 || c.S3.Bucket != "b" || c.FS.Path != "/ignored/by/s3" {
		t.Fatalf("decoded %+v, problems %q", c, bad)
	}
	c.ApplyDefaults()
	if c.S3.Region != s3.DefaultRegion {
		t.Fatalf("region %q", c.S3.Region)
	}
	if err := c.ReadSecrets(); err == nil || !strings.Contains(err.Error(), "HF_TEST_AK and HF_TEST_SK must be set") {
		t.Fatalf("ReadSecrets without the variables: %v", err)
	}
	t.Setenv("HF_TEST_AK", "ak")
	t.Setenv("HF_TEST_SK", "sk")
	if err := c.ReadSecrets(); err != nil || c.S3.AccessKey != "ak" || c.S3.SecretKey != "sk" {
		t.Fatalf("ReadSecrets: %v", err)
	}
	for _, key := range []string{"access_key: x", "secret_key: x", "encryption_key_env: X", "part_size: 1"} {
		dec := yaml.NewDecoder(strings.NewReader("{type: s3, bucket: b, " + key + "}"))
		dec.KnownFields(true)
		if err := dec.Decode(&stores.Config{}); err == nil {
			t.Errorf("%s: accepted from the file", key)
		}
	}
}

func TestKey(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), "key")
	write := func(s string) {
		if err := os.WriteFile(keyFile, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(strings.Repeat("ab", 32) + "\n")
	k, err := stores.Config{EncryptionKeyFile: keyFile}.Key()
	if err != nil || len(k) != 32 || k[0] != 0xab {
		t.Fatalf("hex key: %x %v", k, err)
	}
	write(base64.StdEncoding.EncodeToString(k))
	if k2, err := (stores.Config{EncryptionKeyFile: keyFile}).Key(); err != nil || !slices.Equal(k, k2) {
		t.Fatalf("base64 key: %x %v", k2, err)
	}
	write("short")
	if _, err := (stores.Config{EncryptionKeyFile: keyFile}).Key(); err == nil || strings.Contains(err.Error(), "short") {
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
