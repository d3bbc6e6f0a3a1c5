package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/zeebo/blake3"
	"golang.org/x/sync/errgroup"

	"github.com/holdfast/holdfast/activities/backup"
	s3store "github.com/holdfast/holdfast/activities/backup/s3"
)

// plainRestore measures the store's read rate on the restores' own objects: for each big backup, every chunk
// object its manifest lists is fetched with a plain GET (aws-sdk-go-v2, engineConcurrency at a time) and
// written at its offset into a sparse file of the volume's size, which is then synced; parallel volumes at a
// time, as hv2 runs the restores. Nothing is decrypted, decompressed or verified (the engine's work, which
// the ratio charges to it), and the manifests are read before the clock starts.
func plainRestore(ctx context.Context, st *s3store.Store, eng *backup.Engine, big []bigVolume, dir string,
	parallel int) (time.Duration, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	ms := make([]*backup.Manifest, len(big))
	for i, b := range big {
		var err error
		if ms[i], err = eng.Manifest(ctx, b.volumeID, b.backupID); err != nil {
			return 0, err
		}
	}
	start := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(parallel)
	for _, m := range ms {
		g.Go(func() error { return plainGetChunks(gctx, st, m, filepath.Join(dir, m.VolumeID+".raw")) })
	}
	err := g.Wait()
	return time.Since(start), err
}

func plainGetChunks(ctx context.Context, st *s3store.Store, m *backup.Manifest, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(m.Size); err != nil {
		return err
	}
	var next atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	for range engineConcurrency {
		g.Go(func() error {
			var buf bytes.Buffer
			for i := next.Add(1) - 1; i < int64(len(m.Chunks)); i = next.Add(1) - 1 {
				c := m.Chunks[i]
				out, err := st.Client().GetObject(gctx, &s3.GetObjectInput{Bucket: aws.String(st.Bucket()),
					Key: aws.String(chunkObject(m.VolumeID, c.ID))})
				if err != nil {
					return fmt.Errorf("get chunk %s: %w", c.ID, err)
				}
				buf.Reset()
				_, err = buf.ReadFrom(out.Body)
				out.Body.Close()
				if err != nil {
					return err
				}
				// The stored object is the chunk plus a few bytes of framing; the file gets the chunk's length.
				if _, err := f.WriteAt(buf.Bytes()[:min(int64(buf.Len()), c.Length)], c.Offset); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	return f.Sync()
}

// chunkObject is a chunk's object name in a store without a prefix, as the format lays it out
// (activities/backup/layout.go): volumes/{volume_id}/chunks/{id[0:2]}/{id}.
func chunkObject(volumeID, id string) string {
	return "volumes/" + volumeID + "/chunks/" + id[:2] + "/" + id
}

// sameContent fails unless the two files have the same length and bytes (compared by BLAKE3 digest).
func sameContent(a, b string) error {
	da, err := digest(a)
	if err != nil {
		return err
	}
	db, err := digest(b)
	if err != nil {
		return err
	}
	if !bytes.Equal(da, db) {
		return fmt.Errorf("%s and %s differ", a, b)
	}
	return nil
}

func digest(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := blake3.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}

// engineRestore runs the same restores through the engine alone, in this process (the agent's engine
// settings, no control plane, no agent), into sparse files that are then synced; parallel at a time.
func engineRestore(ctx context.Context, eng *backup.Engine, big []bigVolume, dir string,
	parallel int) (time.Duration, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	start := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(parallel)
	for _, b := range big {
		g.Go(func() error {
			f, err := os.Create(filepath.Join(dir, b.volumeID+".raw"))
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = eng.Restore(gctx, backup.RestoreRequest{VolumeID: b.volumeID, BackupID: b.backupID, Target: f,
				TargetZeroed: true})
			if err == nil {
				err = f.Sync()
			}
			return err
		})
	}
	err := g.Wait()
	return time.Since(start), err
}
