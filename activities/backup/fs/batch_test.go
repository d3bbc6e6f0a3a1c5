package fs_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/holdfast/holdfast/activities/backup"
	"github.com/holdfast/holdfast/activities/backup/fs"
)

// temps lists the temporary files under root.
func temps(t *testing.T, root string) []string {
	t.Helper()
	out, err := fs.TempFiles(root)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestBatchPutsAreInvisibleUntilFlushed: a batch's put is not listed, read or stat-ed until Flush; then it
// is, with its bytes; Discard leaves nothing of the puts not flushed.
func TestBatchPutsAreInvisibleUntilFlushed(t *testing.T) {
	ctx := context.Background()
	root, st := newStore(t)
	var d backup.DeferredStore = st
	b := d.Batch("b1")
	if err := b.Put(ctx, "volumes/v/chunks/ab/one", []byte("first")); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Stat(ctx, "volumes/v/chunks/ab/one"); !errors.Is(err, backup.ErrNotExist) {
		t.Fatalf("stat before flush: %v, want not exist", err)
	}
	listed := 0
	if err := st.List(ctx, "volumes/", func(backup.ObjectInfo) error { listed++; return nil }); err != nil || listed != 0 {
		t.Fatalf("list before flush: %d objects, %v", listed, err)
	}
	if err := b.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	rc, err := st.Get(ctx, "volumes/v/chunks/ab/one")
	if err != nil {
		t.Fatalf("get after flush: %v", err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(got, []byte("first")) {
		t.Fatalf("after flush: %q", got)
	}

	if err := b.Put(ctx, "volumes/v/chunks/cd/two", []byte("second")); err != nil {
		t.Fatal(err)
	}
	b.Discard()
	if _, err := st.Stat(ctx, "volumes/v/chunks/cd/two"); !errors.Is(err, backup.ErrNotExist) {
		t.Fatalf("discarded put: %v, want not exist", err)
	}
	if left := temps(t, root); len(left) != 0 {
		t.Fatalf("discard left %v", left)
	}
	if err := b.Flush(ctx); err != nil { // nothing pending any more
		t.Fatal(err)
	}
	if _, err := st.Stat(ctx, "volumes/v/chunks/cd/two"); !errors.Is(err, backup.ErrNotExist) {
		t.Fatalf("flush after discard made the put visible: %v", err)
	}
}

// TestRemoveStaleTemp removes what a batch of a dead process left (another Store on the same directory
// stands for it), once older than the age given, and never a live batch's puts.
func TestRemoveStaleTemp(t *testing.T) {
	ctx := context.Background()
	root, st := newStore(t)
	dead := openStore(t, root) // another process's view of the same directory
	if err := dead.Batch("b1").Put(ctx, "volumes/v/chunks/ab/lost", []byte("x")); err != nil {
		t.Fatal(err)
	}
	mine := st.Batch("b1")
	if err := mine.Put(ctx, "volumes/v/chunks/ab/live", []byte("y")); err != nil {
		t.Fatal(err)
	}
	if n, err := st.RemoveStaleTemp(ctx, "volumes/v/", time.Hour); err != nil || n != 0 {
		t.Fatalf("young temporary files: removed %d, %v", n, err)
	}
	old := time.Now().Add(-2 * time.Hour)
	for _, p := range temps(t, root) {
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := st.RemoveStaleTemp(ctx, "volumes/v/", time.Hour); err != nil || n != 1 {
		t.Fatalf("removed %d, %v; want the dead batch's one", n, err)
	}
	if err := mine.Flush(ctx); err != nil {
		t.Fatalf("the live batch lost its put: %v", err)
	}
	if _, err := st.Stat(ctx, "volumes/v/chunks/ab/live"); err != nil {
		t.Fatal(err)
	}
	if left := temps(t, root); len(left) != 0 {
		t.Fatalf("left %v", left)
	}
}

// TestBatchConcurrentPutsAndFlushes: a backup's workers put while its collector flushes; every put ends up
// visible after the last Flush, and nothing temporary is left.
func TestBatchConcurrentPutsAndFlushes(t *testing.T) {
	ctx := context.Background()
	root, st := newStore(t)
	b := st.Batch("b1")
	const workers, each = 8, 50
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if err := b.Put(ctx, fmt.Sprintf("volumes/v/chunks/%02d/%04d", w, i), []byte{byte(i)}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	stop := make(chan struct{})
	flushed := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				flushed <- nil
				return
			default:
				if err := b.Flush(ctx); err != nil {
					flushed <- err
					return
				}
			}
		}
	}()
	wg.Wait()
	close(stop)
	if err := <-flushed; err != nil {
		t.Fatal(err)
	}
	if err := b.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	n := 0
	if err := st.List(ctx, "volumes/", func(backup.ObjectInfo) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	if n != workers*each {
		t.Fatalf("%d objects visible, want %d", n, workers*each)
	}
	if left := temps(t, root); len(left) != 0 {
		t.Fatalf("left %d temporary files", len(left))
	}
}

// TestRemoveTempByTag removes what a batch with the tag left, whatever its age, and nothing of another tag
// (IDs may hold '-': "b1" is not "b1-2") or of a live batch.
func TestRemoveTempByTag(t *testing.T) {
	ctx := context.Background()
	root, st := newStore(t)
	dead := openStore(t, root) // another process's view of the same directory
	for _, tag := range []string{"b1", "b1", "b1-2", "b10"} {
		if err := dead.Batch(tag).Put(ctx, "volumes/v/chunks/ab/"+tag, []byte(tag)); err != nil {
			t.Fatal(err)
		}
	}
	live := st.Batch("b1")
	if err := live.Put(ctx, "volumes/v/chunks/cd/live", []byte("y")); err != nil {
		t.Fatal(err)
	}
	if n, err := st.RemoveTemp(ctx, "volumes/v/", "b1"); err != nil || n != 2 {
		t.Fatalf("removed %d, %v; want the dead b1 batch's 2", n, err)
	}
	if left := temps(t, root); len(left) != 3 {
		t.Fatalf("left %v; want b1-2's, b10's and the live batch's", left)
	}
	if err := live.Flush(ctx); err != nil {
		t.Fatalf("the live batch lost its put: %v", err)
	}
}

// newStore opens a store on a fresh directory.
func newStore(t *testing.T) (string, *fs.Store) {
	t.Helper()
	root := t.TempDir()
	return root, openStore(t, root)
}

// openStore opens a store on root.
func openStore(t *testing.T, root string) *fs.Store {
	t.Helper()
	st, err := fs.New(fs.Config{Path: root})
	if err != nil {
		t.Fatal(err)
	}
	return st
}
