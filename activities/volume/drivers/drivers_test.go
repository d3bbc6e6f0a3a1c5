package drivers_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/activities/volume"
	"github.com/holdfast/holdfast/activities/volume/drivers"
	"github.com/holdfast/holdfast/activities/volume/file"
)

// The configuration accepts a hypervisor's drivers by the contract's volume types: each must have a driver
// here, and each driver here a type there.
func TestEveryVolumeTypeHasADriver(t *testing.T) {
	assert.ElementsMatch(t, activities.VolumeTypes(), drivers.Types())
}

func TestOpenBuildsTheFileDriverFromTheHost(t *testing.T) {
	host := volume.HostConfig{LibvirtURI: file.NoLibvirt}
	ds, closeAll, err := drivers.Open(context.Background(), []string{activities.VolumeFile}, host)
	require.NoError(t, err)
	defer closeAll()
	require.Contains(t, ds, activities.VolumeFile)
	assert.Equal(t, volume.TypeFile, ds[activities.VolumeFile].Type())
	assert.Equal(t, file.NoLibvirt, ds[activities.VolumeFile].(*file.Driver).LibvirtURI)

	_, _, err = drivers.Open(context.Background(), []string{"nbd"}, host)
	assert.ErrorContains(t, err, "nbd driver")
}
