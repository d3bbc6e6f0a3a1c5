package agent

import (
	"context"
	"fmt"
	"sort"

	"golang.org/x/time/rate"

	"github.com/holdfast/holdfast/activities/backup"
	"github.com/holdfast/holdfast/activities/backup/stores"
)

// NewEngines opens one backup engine per storage (by storage name) for one hypervisor. All of them share a
// single token bucket of bytesPerSecond (<= 0: unlimited), so the bound is per hypervisor, whichever
// storages its concurrent backups and restores go to. opts applies to every engine; its Key is replaced (the
// key comes from each storage's own configuration), and so is its Limiter unless one is given (the
// hypervisor's, shared with its volume driver's copies).
func NewEngines(ctx context.Context, storages map[string]stores.Config, bytesPerSecond float64, opts backup.Options) (map[string]*backup.Engine, error) {
	if opts.Limiter == nil {
		opts.Limiter = SharedLimiter(bytesPerSecond)
	}
	names := make([]string, 0, len(storages))
	for name := range storages {
		names = append(names, name)
	}
	sort.Strings(names) // the first error is the same on every start
	engines := make(map[string]*backup.Engine, len(storages))
	for _, name := range names {
		e, err := stores.OpenEngine(ctx, storages[name], opts)
		if err != nil {
			return nil, fmt.Errorf("backup storage %q: %w", name, err)
		}
		engines[name] = e
	}
	return engines, nil
}

// SharedLimiter returns the hypervisor's bandwidth limiter, or nil (no limit) for bytesPerSecond <= 0.
func SharedLimiter(bytesPerSecond float64) *rate.Limiter {
	if bytesPerSecond <= 0 {
		return nil
	}
	return backup.NewLimiter(bytesPerSecond)
}
