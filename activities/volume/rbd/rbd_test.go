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

// cluster is the test Ceph cluster (make services-up-ceph) and a driver connected to it.
type cluster struct {
	driver *rbd.Driver
	conf   string // ceph.conf path
	pool   string
	uri    string // libvirt URI the driver asks; rbd.NoLibvirt for none
	prefix string // of this test's image names
	n      int
}

// connect returns a driver on the test cluster, skipping the test locally (failing it under CI=true) when
// the cluster is not running.
func connect(t *testing.T) *cluster {
	t.Helper()
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
				t.Cleanup(d.Close)
				return &cluster{driver: d, conf: conf, pool: pool, uri: uri,
					prefix: fmt.Sprintf("test-%d-%d", os.Getpid(), rand.Uint32())}
			}
			d.Close()
		}
	}
	volumetest.RequireService(t, err, "ceph", "services-up-ceph")
	return nil
}

// ref names a new image of this test.
func (c *cluster) ref() volume.Ref {
	c.n++
	return volume.Ref{Type: volume.TypeRBD, Pool: c.pool, Image: fmt.Sprintf("%s-%d", c.prefix, c.n)}
}

func TestConformance(t *testing.T) {
	c := connect(t)
	volumetest.Run(t, volumetest.Harness{
		Driver:     c.driver,
		LibvirtURI: c.uri,
		NoLibvirt:  c.uri == rbd.NoLibvirt,
		NewRef:     func(t *testing.T) volume.Ref { return c.ref() },
		DiskXML: func(vol volume.Ref, dev string) string {
			return fmt.Sprintf(`<disk type='network' device='disk'><driver name='qemu' type='raw' cache='none'/>
      <source protocol='rbd' name='%s/%s'><host name='127.0.0.1' port='6789'/><config file='%s'/></source>
      <target dev='%s' bus='virtio'/></disk>`, vol.Pool, vol.Image, c.conf, dev)
		},
	})
}
