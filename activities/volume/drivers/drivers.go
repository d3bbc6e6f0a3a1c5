// Package drivers lists every volume driver once, by the volume type it serves, and builds a hypervisor's
// drivers from its configuration. Adding a driver is adding its package, with an Open of the host's
// configuration (volume.HostConfig), and its line in registry; the type's name is the activities contract's
// (activities.VolumeTypes), which the configuration checks a hypervisor's drivers against.
//
// It links every driver (cgo: libvirt, Ceph), so only the agent may import it: never workflows, the API or
// the configuration. It keeps nothing: the caller closes what Open built.
package drivers

import (
	"context"
	"fmt"
	"sort"

	"github.com/holdfast/holdfast/activities/volume"
	"github.com/holdfast/holdfast/activities/volume/file"
	"github.com/holdfast/holdfast/activities/volume/rbd"
)

// registry is every driver, by the volume type it serves.
var registry = map[volume.Type]func(ctx context.Context, host volume.HostConfig) (volume.Driver, error){
	volume.TypeFile: file.Open,
	volume.TypeRBD:  rbd.Open,
}

// Types returns the volume types there is a driver for, sorted.
func Types() []string {
	types := make([]string, 0, len(registry))
	for t := range registry {
		types = append(types, string(t))
	}
	sort.Strings(types)
	return types
}

// Open builds one hypervisor's drivers of the given volume types, by type. closeAll releases what they hold
// (Ceph connections: a driver holding any has a Close method); when Open fails it has released them itself.
func Open(ctx context.Context, types []string, host volume.HostConfig) (drivers map[string]volume.Driver,
	closeAll func(), err error) {
	drivers = make(map[string]volume.Driver, len(types))
	var closers []func()
	closeAll = func() {
		for _, c := range closers {
			c()
		}
	}
	for _, t := range types {
		open, ok := registry[volume.Type(t)]
		if !ok {
			closeAll()
			return nil, nil, fmt.Errorf("%s driver: unknown volume type (drivers: %v)", t, Types())
		}
		d, err := open(ctx, host)
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("%s driver: %w", t, err)
		}
		drivers[t] = d
		if c, ok := d.(interface{ Close() }); ok {
			closers = append(closers, c.Close)
		}
	}
	return drivers, closeAll, nil
}
