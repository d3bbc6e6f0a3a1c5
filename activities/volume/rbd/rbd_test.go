package rbd_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/holdfast/holdfast/activities/volume"
	"github.com/holdfast/holdfast/activities/volume/rbd"
	"github.com/holdfast/holdfast/activities/volume/volumetest"
)

func TestConformance(t *testing.T) {
	conf := os.Getenv("HOLDFAST_CEPH_CONF")
	pool := os.Getenv("HOLDFAST_CEPH_POOL")
	if pool == "" {
		pool = "holdfast"
	}
	uri := os.Getenv("HOLDFAST_LIBVIRT_URI")
	var err error
	if conf == "" {
		err = errors.New("HOLDFAST_CEPH_CONF unset")
	} else if _, err = os.Stat(conf); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var d *rbd.Driver
		if d, err = rbd.New(ctx, rbd.Config{CephConf: conf, LibvirtURI: uri}); err == nil {
			_, err = d.Size(ctx, volume.Ref{Type: volume.TypeRBD, Pool: pool, Image: "holdfast-probe-none"})
			if err == nil || errors.Is(err, volume.ErrNotFound) {
				err = nil
				t.Cleanup(d.Close)
				run(t, d, conf, pool, uri)
				return
			}
			d.Close()
		}
	}
	volumetest.RequireService(t, err, "ceph", "services-up-ceph")
}

func run(t *testing.T, d *rbd.Driver, conf, pool, uri string) {
	prefix := fmt.Sprintf("test-%d-%d", os.Getpid(), rand.Uint32())
	n := 0
	volumetest.Run(t, volumetest.Harness{
		Driver:     d,
		LibvirtURI: uri,
		NewRef: func(t *testing.T) volume.Ref {
			n++
			return volume.Ref{Type: volume.TypeRBD, Pool: pool, Image: fmt.Sprintf("%s-%d", prefix, n)}
		},
		DiskXML: func(vol volume.Ref, dev string) string {
			return fmt.Sprintf(`<disk type='network' device='disk'><driver name='qemu' type='raw' cache='none'/>
      <source protocol='rbd' name='%s/%s'><host name='127.0.0.1' port='6789'/><config file='%s'/></source>
      <target dev='%s' bus='virtio'/></disk>`, vol.Pool, vol.Image, conf, dev)
		},
	})
}
