package backup

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// manifestConcurrency is how many manifests (or chunk Stats) are in flight at once. These are small requests
// whose latency, not bandwidth, bounds them: a thousand manifests from S3 at ~20 ms each take 20 s one by
// one and about 1.3 s sixteen at a time.
const manifestConcurrency = 16

// ErrInvalidCursor wraps the refusal of a catalog cursor that is not "volume_id/backup_id".
var ErrInvalidCursor = errors.New("invalid catalog cursor")

// backupKey names one backup. Catalogs are ordered by it, (volume_id, backup_id) as a pair: comparing the
// strings "volume_id/backup_id" would sort "vol/b" after "vol-1/b", since '/' > '-'.
type backupKey struct{ volumeID, backupID string }

// String is the key as a catalog cursor.
func (k backupKey) String() string { return k.volumeID + "/" + k.backupID }

func (k backupKey) less(o backupKey) bool {
	if k.volumeID != o.volumeID {
		return k.volumeID < o.volumeID
	}
	return k.backupID < o.backupID
}

func parseCursor(s string) (backupKey, error) {
	vol, b, ok := strings.Cut(s, "/")
	if !ok || checkIDs(vol, b) != nil {
		return backupKey{}, fmt.Errorf("%w %q: want volume_id/backup_id", ErrInvalidCursor, s)
	}
	return backupKey{vol, b}, nil
}

// CatalogProblem is a backup whose manifest exists but cannot be used: damaged (fails to decode or its hash
// does not match), or written with an encryption key this engine does not have.
type CatalogProblem struct {
	VolumeID string
	BackupID string
	Err      error
}

// CatalogPage is one page of a store's catalog, in (volume_id, backup_id) order.
type CatalogPage struct {
	// Manifests come without their chunk lists (Chunks is nil): a catalog does not need them, and a page of
	// large volumes would otherwise weigh hundreds of megabytes.
	Manifests []*Manifest
	Problems  []CatalogProblem
	// Next is the cursor of the following page, "" when this page is the last.
	Next string
}

// Catalog returns the backups of the whole store whose key sorts after the cursor after ("volume_id/backup_id",
// "" from the start), at most limit of them (manifests and problems together). Manifests are fetched and
// decoded manifestConcurrency at a time; one that cannot be used is a problem in the page, never an error,
// so a damaged backup does not hide the others. The error is for a store that cannot be listed or read
// (retry), or a malformed cursor (ErrInvalidCursor).
//
// Every page lists the store's object names once (the Store contract has no ordered or delimited listing),
// then reads only its own manifests.
func (e *Engine) Catalog(ctx context.Context, after string, limit int) (*CatalogPage, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("backup: catalog page limit %d must be positive", limit)
	}
	keys, err := e.backupKeys(ctx, volumesDir)
	if err != nil {
		return nil, err
	}
	if after != "" {
		from, err := parseCursor(after)
		if err != nil {
			return nil, err
		}
		keys = keys[sort.Search(len(keys), func(i int) bool { return from.less(keys[i]) }):]
	}
	page := &CatalogPage{}
	if len(keys) > limit {
		keys = keys[:limit]
		page.Next = keys[limit-1].String()
	}
	page.Manifests, page.Problems, err = e.readManifests(ctx, keys)
	if err != nil {
		return nil, err
	}
	return page, nil
}

// backupKeys lists the backups whose manifests are under prefix, sorted. Names that cannot be a backup
// Holdfast wrote (an id the format refuses) are not backups and are left out.
func (e *Engine) backupKeys(ctx context.Context, prefix string) ([]backupKey, error) {
	var keys []backupKey
	err := e.store.List(ctx, prefix, func(oi ObjectInfo) error {
		if vol, b, ok := parseManifestName(oi.Name); ok && checkIDs(vol, b) == nil {
			keys = append(keys, backupKey{vol, b})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list backups in %s: %w", e.store, err)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].less(keys[j]) })
	return keys, nil
}

// readManifests fetches the manifests of keys in parallel and returns them in keys' order, without their
// chunk lists. A manifest that is damaged or needs another key is a problem; one deleted since the listing
// is left out (the backup no longer exists); anything else (the store failing, ctx) is the error.
func (e *Engine) readManifests(ctx context.Context, keys []backupKey) ([]*Manifest, []CatalogProblem, error) {
	ms := make([]*Manifest, len(keys))
	errs := make([]error, len(keys))
	err := parallel(ctx, manifestConcurrency, len(keys), func(ctx context.Context, _, i int) error {
		m, err := e.Manifest(ctx, keys[i].volumeID, keys[i].backupID)
		if err == nil {
			err = e.checkKey(m)
		}
		switch {
		case err == nil:
			m.Chunks = nil
			ms[i] = m
		case errors.Is(err, ErrInvalidManifest), errors.Is(err, ErrWrongKey):
			errs[i] = err
		case errors.Is(err, ErrNotExist):
		default:
			return err
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	var out []*Manifest
	var problems []CatalogProblem
	for i, k := range keys {
		switch {
		case ms[i] != nil:
			out = append(out, ms[i])
		case errs[i] != nil:
			problems = append(problems, CatalogProblem{VolumeID: k.volumeID, BackupID: k.backupID, Err: errs[i]})
		}
	}
	return out, problems, nil
}
