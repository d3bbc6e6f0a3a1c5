package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"

	"golang.org/x/sync/errgroup"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/activities/backup"
	"github.com/holdfast/holdfast/starter"
)

// burnedHypervisor is where every seeded backup was taken; the recovery site's config does not know it.
const burnedHypervisor = "hv-burned"

type seedOptions struct {
	volumes, backups, big int
	bigSize               int64
}

// bigVolume is one of the volumes the bench restores: its source image on disk and its one backup.
type bigVolume struct {
	volumeID, backupID, source string
	size                       int64
}

// seeded is what the burned site left in the store.
type seeded struct {
	manifests, volumes int
	objects            int   // manifests and chunks: what every catalog page lists
	stored             int64 // bytes of all objects
	big                []bigVolume
}

// seed fills the store as nightly backups of a site would: small volumes (1–4 MiB) backed up o.backups times
// each, every backup against its parent, the image changing every fourth backup (so chunks deduplicate), and
// the big volumes once each. Volumes are backed up eight at a time.
func seed(ctx context.Context, eng *backup.Engine, dir string, o seedOptions) (*seeded, error) {
	s := &seeded{manifests: o.volumes*o.backups + o.big, volumes: o.volumes + o.big}
	for i := range o.big {
		b := bigVolume{volumeID: fmt.Sprintf("big-%02d", i), source: filepath.Join(dir, fmt.Sprintf("big-%02d.raw", i)),
			size: o.bigSize}
		if err := bigImage(b.source, b.size, uint64(i)); err != nil {
			return nil, err
		}
		f, err := os.Open(b.source)
		if err != nil {
			return nil, err
		}
		b.backupID, err = backupOnce(ctx, eng, b.volumeID, 0, "", f, b.size)
		f.Close()
		if err != nil {
			return nil, err
		}
		s.big = append(s.big, b)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for v := range o.volumes {
		g.Go(func() error {
			volumeID, size := fmt.Sprintf("vol-%03d", v), int64(1+v%4)<<20
			parent := ""
			for n := range o.backups {
				var err error
				parent, err = backupOnce(gctx, eng, volumeID, n, parent, bytes.NewReader(smallImage(v, n/4, size)), size)
				if err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	err := eng.Store().List(ctx, "", func(oi backup.ObjectInfo) error {
		s.objects++
		s.stored += oi.Size
		return nil
	})
	return s, err
}

// backupOnce writes backup n of a volume as an agent of the burned site would have: ids and labels as the
// control plane gives them (workflows.itemID, backupLabels). It returns the backup id.
func backupOnce(ctx context.Context, eng *backup.Engine, volumeID string, n int, parent string, src io.ReaderAt,
	size int64) (string, error) {
	operationID := starter.NewOperationID()
	backupID := "bk-" + operationID
	_, err := eng.Backup(ctx, backup.BackupRequest{VolumeID: volumeID, BackupID: backupID, Source: src, Size: size,
		Parent: parent, SourceType: "raw", Labels: map[string]string{
			activities.LabelItemName:     fmt.Sprintf("nightly-%03d", n),
			activities.LabelOwnerID:      "acct-" + volumeID,
			activities.LabelHypervisorID: burnedHypervisor,
			activities.LabelConsistency:  activities.ConsistencyCrash,
			activities.LabelVolumeName:   volumeID + "-disk",
			activities.LabelPlanID:       "standard",
			activities.LabelVolumeType:   activities.VolumeFile,
			activities.LabelVolumePath:   "/var/lib/holdfast/volumes/" + volumeID + ".raw",
			activities.LabelOperationID:  operationID,
		}})
	if err != nil {
		return "", fmt.Errorf("backup %d of %s: %w", n, volumeID, err)
	}
	return backupID, nil
}

// smallImage is version version of small volume v: 256 KiB of its own random bytes, then a compressible
// filler naming the volume.
func smallImage(v, version int, size int64) []byte {
	img := bytes.Repeat(fmt.Appendf(nil, "volume %03d, a quiet filesystem block. ", v), int(size)/32+1)[:size]
	_, _ = rand.NewChaCha8([32]byte{byte(v), byte(v >> 8), byte(version), 1}).Read(img[:256<<10])
	return img
}

// bigImage writes (once; kept between runs) a big volume's image: of every four 4 MiB blocks, three random
// and one a hole, so the restore moves mostly incompressible bytes and skips the zero ranges.
func bigImage(path string, size int64, seed uint64) error {
	if fi, err := os.Stat(path); err == nil && fi.Size() == size {
		return nil
	}
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	rng := rand.NewChaCha8([32]byte{byte(seed), 0xd7})
	block := make([]byte, backup.DefaultChunkSize)
	for off := int64(0); off < size && err == nil; off += int64(len(block)) {
		if (off/int64(len(block)))%4 == 3 {
			continue
		}
		_, _ = rng.Read(block)
		_, err = f.WriteAt(block[:min(int64(len(block)), size-off)], off)
	}
	if err == nil {
		err = f.Truncate(size)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
