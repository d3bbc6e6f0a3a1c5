package config

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/holdfast/holdfast/activities"
)

const placementYAML = `
hypervisors:
  hv1: {volume_roots: [/srv/volumes, /mnt/nfs/vols], rbd_pools: [rbd]}
  bare: {}
`

func TestPlacementKeepsVolumesInsideTheRoots(t *testing.T) {
	c, err := Parse(strings.NewReader(placementYAML))
	require.NoError(t, err)
	file := func(path string) activities.VolumeRef { return activities.VolumeRef{Type: "file", Path: path} }
	for _, ok := range []activities.VolumeRef{file("/srv/volumes/web.qcow2"), file("/mnt/nfs/vols/a/b.img"),
		{Type: "file", Path: "/srv/volumes/disk", Format: "raw"}, {Type: "rbd", Pool: "rbd", Image: "web"}} {
		_, err := c.Placement("hv1", ok)
		assert.NoError(t, err, "%+v", ok)
	}
	for ref, field := range map[activities.VolumeRef]string{
		file("/etc/shadow"):                                                 "storage.path: must be inside one of the hypervisor's volume roots",
		file("/dev/null"):                                                   "storage.path: must be inside one of the hypervisor's volume roots",
		file("/srv/volumes"):                                                "storage.path: must be inside one of the hypervisor's volume roots",
		file("/srv/volumes-evil/x.img"):                                     "storage.path: must be inside one of the hypervisor's volume roots",
		file("/srv/volumes/../../etc/x.img"):                                "storage.path: must be clean",
		file("/srv/volumes//x.img"):                                         "storage.path: must be clean",
		file("srv/volumes/x.img"):                                           "storage.path: must be an absolute path",
		file("/srv/volumes/a\x00.img"):                                      "storage.path: must not contain control characters",
		file("/srv/volumes/a\n.img"):                                        "storage.path: must not contain control characters",
		file("/srv/volumes/.x.img.holdfast/y.img"):                          "storage.path: no name below the volume root may start with '.'",
		file("/srv/volumes/.hidden.img"):                                    "storage.path: no name below the volume root may start with '.'",
		file("/srv/volumes/disk"):                                           "storage.format: is required",
		file(""):                                                            "storage.path: is required",
		{Type: "file", Path: "/srv/volumes/x.img", Format: "vmdk"}:          "storage.format: must be raw or qcow2",
		{Type: "file", Path: "/srv/volumes/x.img", CreatedBy: "op-1"}:       "storage.created_by: is set by Holdfast",
		{Type: "rbd", Pool: "../x", Image: "a"}:                             "storage.pool: must match",
		{Type: "rbd", Pool: "other", Image: "a"}:                            "storage.pool: not one of the pools",
		{Type: "rbd", Pool: "rbd", Image: "a/b"}:                            "storage.image: must match",
		{Type: "nbd", Path: "/srv/volumes/x.img"}:                           "storage.type: must be file or rbd",
		{Type: "rbd", Pool: "rbd", Image: "a", Path: "/srv/volumes/x.img"}:  "storage: an rbd volume has no path",
		{Type: "file", Path: "/srv/volumes/x.img", Pool: "rbd", Image: "x"}: "storage: a file volume has no pool",
	} {
		_, err := c.Placement("hv1", ref)
		if assert.Error(t, err, "%+v", ref) {
			assert.Contains(t, err.Error(), field)
			assert.NotContains(t, err.Error(), "/srv", "errors never echo host paths")
		}
	}
	_, err = c.Placement("bare", file("/srv/volumes/web.qcow2"))
	assert.ErrorContains(t, err, "must be inside one of the hypervisor's volume roots", "no roots: no file volumes")
}

func TestPlacementStatesTheFormatFromTheExtensionNeverTheBytes(t *testing.T) {
	c, err := Parse(strings.NewReader(placementYAML))
	require.NoError(t, err)
	for path, want := range map[string]string{"/srv/volumes/a.qcow2": "qcow2", "/srv/volumes/a.raw": "raw",
		"/srv/volumes/a.img": "raw"} {
		ref, err := c.Placement("hv1", activities.VolumeRef{Type: "file", Path: path})
		require.NoError(t, err)
		assert.Equal(t, want, ref.Format, path)
	}
	ref, err := c.Placement("hv1", activities.VolumeRef{Type: "file", Path: "/srv/volumes/a.qcow2", Format: "raw"})
	require.NoError(t, err)
	assert.Equal(t, "raw", ref.Format, "a stated format wins over the extension")
}

func TestNewVolumeRefIsHoldfastsChoice(t *testing.T) {
	c, err := Parse(strings.NewReader(placementYAML))
	require.NoError(t, err)
	ref, err := c.NewVolumeRef("hv1", "file", "raw", "op-123")
	require.NoError(t, err)
	assert.Equal(t, activities.VolumeRef{Type: "file", Path: "/srv/volumes/holdfast-op-123.raw", Format: "raw",
		CreatedBy: "op-123"}, ref)
	ref, err = c.NewVolumeRef("hv1", "file", "", "op-123")
	require.NoError(t, err)
	assert.Equal(t, "/srv/volumes/holdfast-op-123.qcow2", ref.Path, "a volume of unknown format becomes qcow2")
	ref, err = c.NewVolumeRef("hv1", "rbd", "", "op-9")
	require.NoError(t, err)
	assert.Equal(t, activities.VolumeRef{Type: "rbd", Pool: "rbd", Image: "holdfast-op-9", CreatedBy: "op-9"}, ref)
	_, err = c.NewVolumeRef("bare", "file", "raw", "op-1")
	assert.ErrorContains(t, err, "hypervisor_id: hypervisor bare has no volume_roots")
}

func TestVolumeRootsAndPoolsAreValidated(t *testing.T) {
	for yaml, want := range map[string]string{
		"hypervisors: {hv1: {volume_roots: [relative]}}":  "hypervisors.hv1.volume_roots[0]: must be a clean absolute directory",
		"hypervisors: {hv1: {volume_roots: [/]}}":         "hypervisors.hv1.volume_roots[0]: must be a clean absolute directory other than /",
		"hypervisors: {hv1: {volume_roots: [/a/../b]}}":   "hypervisors.hv1.volume_roots[0]",
		"hypervisors: {hv1: {export_dir: run/x}}":         "hypervisors.hv1.export_dir: must be a clean absolute directory",
		"hypervisors: {hv1: {export_http: 0.0.0.0:9470}}": "hypervisors.hv1.export_http: must be a loopback host:port",
		"hypervisors: {hv1: {volume_roots: [/a, /b/]}}":   "hypervisors.hv1.volume_roots[1]",
		"hypervisors: {hv1: {rbd_pools: [\"../x\"]}}":     "hypervisors.hv1.rbd_pools[0]: must match",
	} {
		_, err := Parse(strings.NewReader(yaml))
		assert.ErrorContains(t, err, want, yaml)
	}
}
