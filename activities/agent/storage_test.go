package agent_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/activities/agent"
	"github.com/holdfast/holdfast/activities/backup"
	"github.com/holdfast/holdfast/activities/backup/fs"
	"github.com/holdfast/holdfast/activities/backup/s3/s3test"
	"github.com/holdfast/holdfast/activities/metrics"
)

const storageChunk = 64 << 10 // small chunks: many of them in a small image

// storageFixture is an agent's storage activities over real stores, without any volume driver: the
// storage queue needs none. "local" and "offsite" are unencrypted fs stores, "sealed" an encrypted one.
type storageFixture struct {
	t       *testing.T
	stores  map[string]backup.Store
	engines map[string]*backup.Engine
	acts    *agent.Storage
	hb      *heartbeatRecorder
	reg     *prometheus.Registry
}

func newStorageFixture(t *testing.T, extra map[string]backup.Store) *storageFixture {
	f := &storageFixture{t: t, stores: map[string]backup.Store{}, engines: map[string]*backup.Engine{},
		hb: &heartbeatRecorder{}, reg: prometheus.NewRegistry()}
	logger := slog.New(slog.DiscardHandler)
	for _, name := range []string{"local", "offsite", "sealed"} {
		st, err := fs.New(fs.Config{Path: filepath.Join(t.TempDir(), name)})
		require.NoError(t, err)
		f.stores[name] = st
	}
	for name, st := range extra {
		f.stores[name] = st
	}
	for name, st := range f.stores {
		opts := backup.Options{ChunkSize: storageChunk, Concurrency: 2, Logger: logger}
		if name == "sealed" {
			opts.Key = bytes.Repeat([]byte{4}, 32)
		}
		e, err := backup.New(st, opts)
		require.NoError(t, err)
		f.engines[name] = e
	}
	f.acts = agent.NewStorage(agent.Config{HypervisorID: "hv1", Engines: f.engines, Logger: logger,
		Metrics: metrics.New(f.reg)})
	return f
}

// run executes one storage activity as a worker would; ctx (nil: background) is the activity's context.
func (f *storageFixture) run(ctx context.Context, name string, in, out any) error {
	return runActivity(ctx, f.acts, f.hb, name, in, out, nil)
}

// backup stores a random image (every fourth chunk zero) as backup id of vol in storage and returns it.
func (f *storageFixture) backup(storage, vol, id string, chunks int, seed uint64) []byte {
	f.t.Helper()
	img := make([]byte, chunks*storageChunk)
	rng := rand.New(rand.NewPCG(seed, 7))
	for i := range img {
		if (i/storageChunk)%4 != 3 {
			img[i] = byte(rng.Uint32())
		}
	}
	_, err := f.engines[storage].Backup(context.Background(), backup.BackupRequest{VolumeID: vol, BackupID: id,
		Source: bytes.NewReader(img), Size: int64(len(img)), SourceType: "raw",
		Labels: map[string]string{activities.LabelOwnerID: "owner-1"}})
	require.NoError(f.t, err)
	return img
}

// restore reads a backup back from storage alone.
func (f *storageFixture) restore(storage, vol, id string) []byte {
	f.t.Helper()
	path := filepath.Join(f.t.TempDir(), "restored.img")
	out, err := os.Create(path)
	require.NoError(f.t, err)
	defer out.Close()
	_, err = f.engines[storage].Restore(context.Background(), backup.RestoreRequest{VolumeID: vol, BackupID: id, Target: out})
	require.NoError(f.t, err)
	b, err := os.ReadFile(path)
	require.NoError(f.t, err)
	return b
}

func (f *storageFixture) manifest(storage, vol, id string) *backup.Manifest {
	f.t.Helper()
	m, err := f.engines[storage].Manifest(context.Background(), vol, id)
	require.NoError(f.t, err)
	return m
}

func chunkName(vol, id string) string { return "volumes/" + vol + "/chunks/" + id[:2] + "/" + id }

func TestStorageListCatalog(t *testing.T) {
	f := newStorageFixture(t, nil)
	for i, k := range []string{"vol-a/b1", "vol-a/b2", "vol-b/b1", "vol-c/b1", "vol-c/b2"} {
		vol, id, _ := strings.Cut(k, "/")
		f.backup("local", vol, id, 2, uint64(i))
	}
	require.NoError(t, backup.PutBytes(context.Background(), f.stores["local"], "volumes/vol-b/manifests/torn.json", []byte("{")))

	var got, problems []string
	after := ""
	for pages := 0; ; pages++ {
		require.Less(t, pages, 10, "the catalog must end")
		var page activities.CatalogPage
		require.NoError(t, f.run(nil, activities.ListCatalogName, activities.CatalogInput{Storage: "local", After: after, Limit: 2}, &page))
		require.LessOrEqual(t, len(page.Entries)+len(page.Problems), 2)
		for _, e := range page.Entries {
			got = append(got, e.VolumeID+"/"+e.BackupID)
			require.Equal(t, int64(2*storageChunk), e.SizeBytes)
			require.Positive(t, e.StoredBytes)
			require.Equal(t, "raw", e.SourceType)
			require.Equal(t, "owner-1", e.Labels[activities.LabelOwnerID])
			require.False(t, e.CreatedAt.IsZero() || e.CompletedAt.Before(e.CreatedAt), "%+v", e)
		}
		for _, p := range page.Problems {
			problems = append(problems, p.VolumeID+"/"+p.BackupID)
			require.Contains(t, p.Error, "invalid manifest")
		}
		if page.Next == "" {
			break
		}
		after = page.Next
	}
	require.Equal(t, []string{"vol-a/b1", "vol-a/b2", "vol-b/b1", "vol-c/b1", "vol-c/b2"}, got)
	require.Equal(t, []string{"vol-b/torn"}, problems)

	var page activities.CatalogPage
	require.NoError(t, f.run(nil, activities.ListCatalogName, activities.CatalogInput{Storage: "local"}, &page))
	require.Len(t, page.Entries, 5, "Limit 0 is the default page")
	require.Empty(t, page.Next)
	require.NoError(t, f.run(nil, activities.ListCatalogName, activities.CatalogInput{Storage: "offsite"}, &page))
	require.Empty(t, page.Entries, "an empty storage has an empty catalog")

	err := f.run(nil, activities.ListCatalogName, activities.CatalogInput{Storage: "local", After: "no-slash"}, nil)
	requireType(t, err, activities.ErrInvalidArgument)
	err = f.run(nil, activities.ListCatalogName, activities.CatalogInput{Storage: "elsewhere"}, nil)
	requireType(t, err, activities.ErrNoBackupStorage)
}

func TestStorageReplicateBackup(t *testing.T) {
	for _, to := range []string{"offsite", "minio"} {
		t.Run(to, func(t *testing.T) {
			extra := map[string]backup.Store{}
			if to == "minio" {
				extra[to] = s3test.NewStore(t, s3test.Servers()[0])
			}
			f := newStorageFixture(t, extra)
			img := f.backup("local", "vol-r", "b1", 12, 1)
			in := activities.ReplicateInput{VolumeID: "vol-r", BackupID: "b1", From: "local", To: to}
			var res activities.ReplicateResult
			require.NoError(t, f.run(nil, activities.ReplicateBackupName, in, &res))
			require.True(t, res.Verified)
			require.Equal(t, 9, res.ChunksCopied, "the 9 non-zero chunks")
			require.Zero(t, res.ChunksPresent)
			require.Equal(t, f.manifest("local", "vol-r", "b1").StoredBytes, res.BytesCopied)
			require.True(t, bytes.Equal(img, f.restore(to, "vol-r", "b1")), "restore from the replica in %s differs", to)
			hbs := f.hb.take()
			require.NotEmpty(t, hbs, "replication heartbeats")
			require.Equal(t, backup.PhaseDone, hbs[len(hbs)-1].Phase)

			var again activities.ReplicateResult
			require.NoError(t, f.run(nil, activities.ReplicateBackupName, in, &again))
			require.Equal(t, activities.ReplicateResult{ChunksPresent: 9, Verified: true}, again, "a second run copies nothing")
			require.Equal(t, float64(res.BytesCopied), counterValue(t, f.reg, "holdfast_replicated_bytes_total", to))
		})
	}
}

func TestStorageReplicateBackupErrors(t *testing.T) {
	f := newStorageFixture(t, nil)
	f.backup("local", "vol-r", "b1", 4, 1)
	{
		in := func(vol, id, from, to string) activities.ReplicateInput {
			return activities.ReplicateInput{VolumeID: vol, BackupID: id, From: from, To: to}
		}
		requireType(t, f.run(nil, activities.ReplicateBackupName, in("vol-r", "nope", "local", "offsite"), nil), activities.ErrNotFound)
		requireType(t, f.run(nil, activities.ReplicateBackupName, in("vol-r", "b1", "local", "sealed"), nil), activities.ErrInvalidArgument)
		requireType(t, f.run(nil, activities.ReplicateBackupName, in("vol-r", "b1", "local", "local"), nil), activities.ErrInvalidArgument)
		requireType(t, f.run(nil, activities.ReplicateBackupName, in("vol-r", "../b1", "local", "offsite"), nil), activities.ErrInvalidArgument)
		requireType(t, f.run(nil, activities.ReplicateBackupName, in("vol-r", "b1", "local", "elsewhere"), nil), activities.ErrNoBackupStorage)
		var sealed []string
		require.NoError(t, f.stores["sealed"].List(context.Background(), "", func(oi backup.ObjectInfo) error {
			sealed = append(sealed, oi.Name)
			return nil
		}))
		require.Empty(t, sealed, "a refused replication writes nothing")

		f.backup("local", "vol-d", "b1", 4, 2)
		m := f.manifest("local", "vol-d", "b1")
		st := f.stores["local"]
		garbage := bytes.Repeat([]byte{0x5a}, int(m.Chunks[1].StoredSize))
		require.NoError(t, backup.PutBytes(context.Background(), st, chunkName("vol-d", m.Chunks[1].ID), garbage))
		requireType(t, f.run(nil, activities.ReplicateBackupName, in("vol-d", "b1", "local", "offsite"), nil), activities.ErrCorrupt)
	}

	{
		f.backup("local", "vol-x", "b1", 64, 3)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		err := f.run(ctx, activities.ReplicateBackupName,
			activities.ReplicateInput{VolumeID: "vol-x", BackupID: "b1", From: "local", To: "offsite"}, nil)
		require.Error(t, err)
		var appErr *temporal.ApplicationError
		if errors.As(err, &appErr) {
			require.False(t, appErr.NonRetryable(), "a cancellation is not a typed failure: %v", err)
		}
		_, err = f.engines["offsite"].Manifest(context.Background(), "vol-x", "b1")
		require.ErrorIs(t, err, backup.ErrNotExist, "a cancelled replication leaves no replica")
	}
}

// counterValue reads the counter of one storage from a registry.
func counterValue(t *testing.T, reg *prometheus.Registry, name, storage string) float64 {
	t.Helper()
	families, err := reg.Gather()
	require.NoError(t, err)
	for _, fam := range families {
		for _, m := range fam.GetMetric() {
			for _, l := range m.GetLabel() {
				if fam.GetName() == name && l.GetName() == "storage" && l.GetValue() == storage {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no %s{storage=%q}", name, storage)
	return 0
}

func TestStorageScrub(t *testing.T) {
	f := newStorageFixture(t, nil)
	ctx := context.Background()
	f.backup("local", "vol-a", "b1", 8, 1)
	f.backup("local", "vol-b", "b1", 8, 2)
	m := f.manifest("local", "vol-a", "b1")
	st := f.stores["local"]
	gone, flipped := m.Chunks[0].ID, m.Chunks[4].ID
	require.NoError(t, st.Delete(ctx, chunkName("vol-a", gone)))
	data, err := backup.ReadAll(ctx, st, chunkName("vol-a", flipped), 1<<30)
	require.NoError(t, err)
	data[len(data)/3] ^= 0x80
	require.NoError(t, backup.PutBytes(ctx, st, chunkName("vol-a", flipped), data))

	var res activities.ScrubResult
	f.hb.take()
	require.NoError(t, f.run(nil, activities.ScrubStorageName, activities.ScrubInput{Storage: "local"}, &res))
	require.Equal(t, 2, res.Backups)
	require.Equal(t, 12, res.Chunks, "6 non-zero chunks per backup")
	require.Equal(t, []activities.ScrubFinding{{VolumeID: "vol-a", BackupID: "b1", Missing: []string{gone},
		Corrupt: []string{flipped}}}, res.Damaged, "vol-b is clean")
	require.NotEmpty(t, f.hb.take(), "scrub heartbeats")
	require.Equal(t, 1.0, counterValue(t, f.reg, "holdfast_scrub_damaged_backups_total", "local"))

	var one activities.ScrubResult
	require.NoError(t, f.run(nil, activities.ScrubStorageName, activities.ScrubInput{Storage: "local", VolumeID: "vol-b"}, &one))
	require.Equal(t, 1, one.Backups)
	require.Empty(t, one.Damaged)
	requireType(t, f.run(nil, activities.ScrubStorageName, activities.ScrubInput{Storage: "local", VolumeID: "a/b"}, nil),
		activities.ErrInvalidArgument)
	requireType(t, f.run(nil, activities.ScrubStorageName, activities.ScrubInput{Storage: "nope"}, nil),
		activities.ErrNoBackupStorage)
}

func TestStorageDeleteAndCollectGarbage(t *testing.T) {
	f := newStorageFixture(t, nil)
	f.backup("local", "vol-a", "b1", 4, 1)
	f.backup("local", "vol-b", "b1", 4, 2)
	keep := f.backup("local", "vol-b", "b2", 4, 3)
	for _, ref := range []activities.BackupRef{{VolumeID: "vol-a", BackupID: "b1", Storage: "local"},
		{VolumeID: "vol-b", BackupID: "b1", Storage: "local"}} {
		require.NoError(t, f.run(nil, activities.DeleteBackupName, ref, nil))
		require.NoError(t, f.run(nil, activities.DeleteBackupName, ref, nil), "deleting a deleted backup succeeds")
	}
	requireType(t, f.run(nil, activities.DeleteBackupName, activities.BackupRef{VolumeID: "vol-a", BackupID: "..", Storage: "local"}, nil),
		activities.ErrInvalidArgument)

	// Within the grace period nothing goes.
	var res activities.GCResult
	require.NoError(t, f.run(nil, activities.CollectGarbageName, activities.GCInput{Storage: "local", Grace: time.Hour}, &res))
	require.Equal(t, activities.GCResult{ChunksKept: 9}, res)

	// Once the chunks have aged: one volume, then the rest of the store.
	time.Sleep(20 * time.Millisecond)
	require.NoError(t, f.run(nil, activities.CollectGarbageName, activities.GCInput{Storage: "local", VolumeID: "vol-a", Grace: time.Millisecond}, &res))
	require.Equal(t, 3, res.ChunksDeleted)
	require.Positive(t, res.BytesFreed)
	require.NoError(t, f.run(nil, activities.CollectGarbageName, activities.GCInput{Storage: "local", Grace: time.Millisecond}, &res))
	require.Equal(t, 3, res.ChunksDeleted, "vol-b's b1 chunks")
	require.Equal(t, 3, res.ChunksKept, "b2's chunks")
	require.True(t, bytes.Equal(keep, f.restore("local", "vol-b", "b2")), "a live backup survives GC")

	requireType(t, f.run(nil, activities.CollectGarbageName, activities.GCInput{Storage: "local", Grace: -time.Hour}, nil),
		activities.ErrInvalidArgument)
	require.NoError(t, backup.PutBytes(context.Background(), f.stores["local"], "volumes/vol-c/manifests/torn.json", []byte("{")))
	err := f.run(nil, activities.CollectGarbageName, activities.GCInput{Storage: "local", Grace: time.Millisecond}, nil)
	appErr := requireType(t, err, activities.ErrCorrupt)
	require.Contains(t, appErr.Error(), "vol-c")
}

// crashingSource is a backup source whose device vanishes at failAt (a crash mid-upload).
type crashingSource struct {
	img    []byte
	failAt int64
}

func (c crashingSource) ReadAt(p []byte, off int64) (int, error) {
	if off >= c.failAt {
		return 0, errors.New("simulated crash: source device vanished")
	}
	return bytes.NewReader(c.img).ReadAt(p, off)
}

// volumeObjects lists every object a volume has in a store.
func volumeObjects(t *testing.T, st backup.Store, vol string) []string {
	t.Helper()
	var names []string
	require.NoError(t, st.List(context.Background(), "volumes/"+vol+"/", func(oi backup.ObjectInfo) error {
		names = append(names, oi.Name)
		return nil
	}))
	sort.Strings(names)
	return names
}

// manifestObjects is what a volume holding exactly the given backups has in a store: their manifests and
// the chunks they reference.
func (f *storageFixture) manifestObjects(storage, vol string, ids ...string) []string {
	f.t.Helper()
	set := map[string]bool{}
	for _, id := range ids {
		set["volumes/"+vol+"/manifests/"+id+".json"] = true
		for _, c := range f.manifest(storage, vol, id).Chunks {
			set[chunkName(vol, c.ID)] = true
		}
	}
	var names []string
	for n := range set {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// AbandonBackup is a failed backup's compensation: at once (no GC grace), it removes everything the backup
// left — its manifest if it got that far, its resume journal and in-progress marker, the chunks no other
// backup references — and keeps every chunk another backup of the volume needs. It is idempotent.
func TestStorageAbandonBackup(t *testing.T) {
	for _, storage := range []string{"local", "minio"} {
		t.Run(storage, func(t *testing.T) {
			extra := map[string]backup.Store{}
			if storage == "minio" {
				extra[storage] = s3test.NewStore(t, s3test.Servers()[0])
			}
			f := newStorageFixture(t, extra)
			ctx := context.Background()
			st := f.stores[storage]
			keep := f.backup(storage, "vol-a", "b1", 8, 1)
			other := f.backup(storage, "vol-b", "b1", 4, 2)
			otherObjects := volumeObjects(t, st, "vol-b")

			// b2 shares b1's first four chunks, then has eight of its own, and crashes after ten.
			img := append(bytes.Clone(keep[:4*storageChunk]), bytes.Repeat([]byte{0}, 8*storageChunk)...)
			rng := rand.New(rand.NewPCG(9, 9))
			for i := 4 * storageChunk; i < len(img); i++ {
				img[i] = byte(rng.Uint32())
			}
			_, err := f.engines[storage].Backup(ctx, backup.BackupRequest{VolumeID: "vol-a", BackupID: "b2",
				Source: crashingSource{img: img, failAt: 10 * storageChunk}, Size: int64(len(img))})
			require.Error(t, err)
			// An earlier attempt of b2 was killed before it released its lock: its in-progress marker stays.
			require.NoError(t, backup.PutBytes(ctx, st, "volumes/vol-a/locks/shared/b2/00000000deadbeef.json", []byte("{}")))
			// b3 completed, but its operation failed afterwards (its result was lost, then it was aborted).
			f.backup(storage, "vol-a", "b3", 4, 3)
			require.NotEqual(t, f.manifestObjects(storage, "vol-a", "b1"), volumeObjects(t, st, "vol-a"),
				"the failed backups left objects to remove")

			for _, id := range []string{"b2", "b3"} {
				ref := activities.BackupRef{VolumeID: "vol-a", BackupID: id, Storage: storage}
				require.NoError(t, f.run(nil, activities.AbandonBackupName, ref, nil))
				require.NoError(t, f.run(nil, activities.AbandonBackupName, ref, nil), "abandoning twice succeeds")
			}
			require.Equal(t, f.manifestObjects(storage, "vol-a", "b1"), volumeObjects(t, st, "vol-a"),
				"the abandoned backups left objects behind")
			require.True(t, bytes.Equal(keep, f.restore(storage, "vol-a", "b1")), "the shared chunks stay")
			require.Equal(t, otherObjects, volumeObjects(t, st, "vol-b"), "another volume is untouched")
			require.True(t, bytes.Equal(other, f.restore(storage, "vol-b", "b1")))

			requireType(t, f.run(nil, activities.AbandonBackupName,
				activities.BackupRef{VolumeID: "vol-a", BackupID: "../b1", Storage: storage}, nil), activities.ErrInvalidArgument)
		})
	}
}

// downStore is a storage that cannot be reached.
type downStore struct{ backup.Store }

var errUnreachable = errors.New("simulated: storage unreachable")

func (downStore) Put(context.Context, string, io.Reader, int64) error { return errUnreachable }
func (downStore) Get(context.Context, string) (io.ReadCloser, error)  { return nil, errUnreachable }
func (downStore) Stat(context.Context, string) (backup.ObjectInfo, error) {
	return backup.ObjectInfo{}, errUnreachable
}
func (downStore) List(context.Context, string, func(backup.ObjectInfo) error) error {
	return errUnreachable
}
func (downStore) Delete(context.Context, string) error { return errUnreachable }

// requireRetryable fails unless err is an error the workflow's retry policy retries.
func requireRetryable(t *testing.T, err error) {
	t.Helper()
	require.Error(t, err)
	var appErr *temporal.ApplicationError
	if errors.As(err, &appErr) {
		require.False(t, appErr.NonRetryable(), "want a retryable failure: %v", err)
	}
}

// An abandon against a storage that is down, or while another backup of the volume runs, fails retryably
// and removes nothing; so does a GC of one volume while a backup of it runs, and a GC of the whole storage
// skips that volume and collects the others.
func TestStorageAbandonAndCollectWhileBusy(t *testing.T) {
	down, err := fs.New(fs.Config{Path: t.TempDir()})
	require.NoError(t, err)
	f := newStorageFixture(t, map[string]backup.Store{"down": downStore{down}})
	ctx := context.Background()
	requireRetryable(t, f.run(nil, activities.AbandonBackupName,
		activities.BackupRef{VolumeID: "vol-a", BackupID: "b1", Storage: "down"}, nil))

	st := f.stores["local"]
	f.backup("local", "vol-a", "b1", 4, 1)
	f.backup("local", "vol-b", "b1", 4, 2)
	for _, vol := range []string{"vol-a", "vol-b"} {
		require.NoError(t, f.run(nil, activities.DeleteBackupName, activities.BackupRef{VolumeID: vol, BackupID: "b1", Storage: "local"}, nil))
	}
	// A backup of vol-a runs on another host: its lock is fresh.
	require.NoError(t, backup.PutBytes(ctx, st, "volumes/vol-a/locks/shared/b2/00000000000000aa.json", []byte("{}")))
	before := volumeObjects(t, st, "vol-a")

	requireRetryable(t, f.run(nil, activities.AbandonBackupName,
		activities.BackupRef{VolumeID: "vol-a", BackupID: "b1", Storage: "local"}, nil))
	err = f.run(nil, activities.CollectGarbageName, activities.GCInput{Storage: "local", VolumeID: "vol-a"}, nil)
	requireRetryable(t, err)
	require.Contains(t, err.Error(), "backup b2")
	var res activities.GCResult
	require.NoError(t, f.run(nil, activities.CollectGarbageName, activities.GCInput{Storage: "local"}, &res))
	require.Equal(t, 3, res.ChunksDeleted, "vol-b's chunks, not vol-a's")
	require.Equal(t, before, volumeObjects(t, st, "vol-a"), "a busy volume is left as it was")
	require.Empty(t, volumeObjects(t, st, "vol-b"))
}
