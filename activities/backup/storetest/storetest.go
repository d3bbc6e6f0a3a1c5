// Package storetest is the conformance suite every backup.Store implementation must pass, run against each
// real backend (fs on a temp dir; s3 on MinIO and versitygw). It owns the executable form of the Store
// contract; it must never contain backend-specific branches — a backend that needs one is non-conforming.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/holdfast/holdfast/activities/backup"
)

// Options tune the suite for a backend.
type Options struct {
	// LargeSize is the size of the object used to exercise multipart / streamed writes. Zero means 12 MiB
	// (more than two 5 MiB S3 parts).
	LargeSize int
}

// Run runs every contract check against a fresh, empty store from newStore for each subtest.
func Run(t *testing.T, newStore func(t *testing.T) backup.Store, opts Options) {
	if opts.LargeSize == 0 {
		opts.LargeSize = 12 << 20
	}
	ctx := context.Background()
	put := func(t *testing.T, s backup.Store, name string, data []byte) {
		t.Helper()
		if err := s.Put(ctx, name, bytes.NewReader(data), int64(len(data))); err != nil {
			t.Fatalf("Put(%s): %v", name, err)
		}
	}
	get := func(t *testing.T, s backup.Store, name string) []byte {
		t.Helper()
		b, err := backup.ReadAll(ctx, s, name, 1<<30)
		if err != nil {
			t.Fatalf("Get(%s): %v", name, err)
		}
		return b
	}

	t.Run("PutGetStat", func(t *testing.T) {
		s := newStore(t)
		data := randomBytes(1000)
		put(t, s, "volumes/v1/chunks/ab/abcdef", data)
		if got := get(t, s, "volumes/v1/chunks/ab/abcdef"); !bytes.Equal(got, data) {
			t.Fatalf("Get returned %d bytes, want the %d put", len(got), len(data))
		}
		info, err := s.Stat(ctx, "volumes/v1/chunks/ab/abcdef")
		if err != nil {
			t.Fatal(err)
		}
		if info.Size != int64(len(data)) || info.ModTime.IsZero() || info.Name != "volumes/v1/chunks/ab/abcdef" {
			t.Fatalf("Stat = %+v", info)
		}
	})

	t.Run("EmptyObject", func(t *testing.T) {
		s := newStore(t)
		put(t, s, "empty", nil)
		if got := get(t, s, "empty"); len(got) != 0 {
			t.Fatalf("got %d bytes", len(got))
		}
	})

	t.Run("OverwriteAndIdempotentPut", func(t *testing.T) {
		s := newStore(t)
		put(t, s, "a/b", []byte("one"))
		put(t, s, "a/b", []byte("two-two"))
		put(t, s, "a/b", []byte("two-two"))
		if got := get(t, s, "a/b"); string(got) != "two-two" {
			t.Fatalf("got %q", got)
		}
	})

	t.Run("NotExist", func(t *testing.T) {
		s := newStore(t)
		if _, err := s.Get(ctx, "missing/object"); !errors.Is(err, backup.ErrNotExist) {
			t.Fatalf("Get missing: %v, want ErrNotExist", err)
		}
		if _, err := s.Stat(ctx, "missing/object"); !errors.Is(err, backup.ErrNotExist) {
			t.Fatalf("Stat missing: %v, want ErrNotExist", err)
		}
		put(t, s, "dir/obj", []byte("x"))
		if _, err := s.Stat(ctx, "dir"); !errors.Is(err, backup.ErrNotExist) {
			t.Fatalf("Stat of a name that is only a prefix: %v, want ErrNotExist", err)
		}
	})

	t.Run("DeleteIdempotent", func(t *testing.T) {
		s := newStore(t)
		put(t, s, "x/y", []byte("data"))
		for i := range 2 {
			if err := s.Delete(ctx, "x/y"); err != nil {
				t.Fatalf("Delete #%d: %v", i+1, err)
			}
		}
		if _, err := s.Get(ctx, "x/y"); !errors.Is(err, backup.ErrNotExist) {
			t.Fatalf("Get after delete: %v", err)
		}
		if err := s.Delete(ctx, "never/was"); err != nil {
			t.Fatalf("Delete missing: %v", err)
		}
	})

	t.Run("List", func(t *testing.T) {
		s := newStore(t)
		names := []string{"volumes/a/chunks/00/c1", "volumes/a/chunks/01/c2", "volumes/a/manifests/b1.json",
			"volumes/ab/manifests/b2.json", "other/x"}
		for _, n := range names {
			put(t, s, n, []byte(n))
		}
		check := func(prefix string, want []string) {
			t.Helper()
			var got []string
			err := s.List(ctx, prefix, func(oi backup.ObjectInfo) error {
				if oi.Size != int64(len(oi.Name)) {
					t.Errorf("List %s: size %d", oi.Name, oi.Size)
				}
				got = append(got, oi.Name)
				return nil
			})
			if err != nil {
				t.Fatalf("List(%q): %v", prefix, err)
			}
			sort.Strings(got)
			sort.Strings(want)
			if strings.Join(got, ",") != strings.Join(want, ",") {
				t.Fatalf("List(%q) = %v, want %v", prefix, got, want)
			}
		}
		check("volumes/a/", names[:3])
		check("volumes/a", names[:4])
		check("volumes/a/manifests/", names[2:3])
		check("", names)
		check("nothing/here/", nil)

		stop := errors.New("stop")
		calls := 0
		err := s.List(ctx, "", func(backup.ObjectInfo) error { calls++; return stop })
		if !errors.Is(err, stop) || calls != 1 {
			t.Fatalf("List with fn error: err=%v calls=%d, want the fn's error after 1 call", err, calls)
		}
	})

	// The volume locks (backup/lock.go) depend on these two: a lock written (or removed) is seen by the next
	// listing of any client, and re-writing a lock renews its ModTime.
	t.Run("ListSeesDeletes", func(t *testing.T) {
		s := newStore(t)
		put(t, s, "locks/a", []byte("a"))
		put(t, s, "locks/b", []byte("b"))
		if err := s.Delete(ctx, "locks/a"); err != nil {
			t.Fatal(err)
		}
		var got []string
		if err := s.List(ctx, "locks/", func(oi backup.ObjectInfo) error {
			got = append(got, oi.Name)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if strings.Join(got, ",") != "locks/b" {
			t.Fatalf("List after a Delete = %v, want [locks/b]", got)
		}
	})

	t.Run("OverwriteRenewsModTime", func(t *testing.T) {
		s := newStore(t)
		put(t, s, "locks/l", []byte("1"))
		first, err := s.Stat(ctx, "locks/l")
		if err != nil {
			t.Fatal(err)
		}
		// Stores keep ModTime to the second (S3's Last-Modified): re-write until the store's clock moved on.
		for deadline := time.Now().Add(5 * time.Second); ; {
			time.Sleep(250 * time.Millisecond)
			put(t, s, "locks/l", []byte("1"))
			again, err := s.Stat(ctx, "locks/l")
			if err != nil {
				t.Fatal(err)
			}
			if again.ModTime.After(first.ModTime) {
				var listed time.Time
				if err := s.List(ctx, "locks/", func(oi backup.ObjectInfo) error {
					listed = oi.ModTime
					return nil
				}); err != nil {
					t.Fatal(err)
				}
				if !listed.After(first.ModTime) {
					t.Fatalf("List still shows ModTime %v after a re-write at %v", listed, again.ModTime)
				}
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("re-writing an object for 5 s never renewed its ModTime (%v)", first.ModTime)
			}
		}
	})

	t.Run("LargeObject", func(t *testing.T) {
		s := newStore(t)
		data := randomBytes(opts.LargeSize)
		put(t, s, "big/object", data)
		if got := get(t, s, "big/object"); !bytes.Equal(got, data) {
			t.Fatalf("large object differs (got %d bytes)", len(got))
		}
	})

	t.Run("ShortBodyFailsAndLeavesNothing", func(t *testing.T) {
		s := newStore(t)
		err := s.Put(ctx, "short/body", bytes.NewReader([]byte("abc")), 10)
		if err == nil {
			t.Fatal("Put with a body shorter than size succeeded")
		}
		if _, err := s.Stat(ctx, "short/body"); !errors.Is(err, backup.ErrNotExist) {
			t.Fatalf("a failed Put left an object: %v", err)
		}
	})

	t.Run("FailingReaderLeavesNothing", func(t *testing.T) {
		s := newStore(t)
		r := io.MultiReader(bytes.NewReader(randomBytes(1<<20)), errReader{errors.New("disk on fire")})
		if err := s.Put(ctx, "broken/body", r, 2<<20); err == nil {
			t.Fatal("Put with a failing reader succeeded")
		}
		if _, err := s.Stat(ctx, "broken/body"); !errors.Is(err, backup.ErrNotExist) {
			t.Fatalf("a failed Put left an object: %v", err)
		}
		// Nothing else is listed either (no visible temp files).
		_ = s.List(ctx, "", func(oi backup.ObjectInfo) error {
			t.Errorf("unexpected object %q after failed put", oi.Name)
			return nil
		})
	})

	t.Run("CancelledContext", func(t *testing.T) {
		s := newStore(t)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if err := s.Put(cctx, "c/obj", bytes.NewReader([]byte("x")), 1); err == nil {
			t.Fatal("Put with a cancelled context succeeded")
		}
		if _, err := s.Stat(ctx, "c/obj"); !errors.Is(err, backup.ErrNotExist) {
			t.Fatalf("cancelled Put left an object: %v", err)
		}
	})

	t.Run("InvalidNames", func(t *testing.T) {
		s := newStore(t)
		for _, n := range []string{"", "../escape", "a/../../b", "/abs", "a//b", "a/./b", "sp ace"} {
			if err := s.Put(ctx, n, bytes.NewReader(nil), 0); err == nil {
				t.Errorf("Put(%q) accepted an invalid name", n)
			}
		}
	})

	t.Run("Concurrent", func(t *testing.T) {
		s := newStore(t)
		var wg sync.WaitGroup
		errs := make(chan error, 16)
		for i := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				name := fmt.Sprintf("conc/%02d", i)
				data := bytes.Repeat([]byte{byte(i)}, 64<<10)
				if err := s.Put(ctx, name, bytes.NewReader(data), int64(len(data))); err != nil {
					errs <- err
					return
				}
				got, err := backup.ReadAll(ctx, s, name, 1<<20)
				if err != nil {
					errs <- err
				} else if !bytes.Equal(got, data) {
					errs <- fmt.Errorf("%s: content differs", name)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

func randomBytes(n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{1, 2, 3})
	_, _ = r.Read(b)
	return b
}

// RequireService skips (locally) or fails (CI=true) a test whose backing service is unreachable, naming the
// make target that starts it. Never a silent skip in CI.
func RequireService(t testing.TB, what, makeTarget string, err error) {
	t.Helper()
	msg := fmt.Sprintf("%s not running (%v): make %s", what, err, makeTarget)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}
