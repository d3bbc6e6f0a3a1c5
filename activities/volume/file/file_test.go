package file_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/holdfast/holdfast/activities/volume"
	"github.com/holdfast/holdfast/activities/volume/file"
	"github.com/holdfast/holdfast/activities/volume/volumetest"
)

func harness(t *testing.T, format volume.Format) volumetest.Harness {
	uri := os.Getenv("HOLDFAST_LIBVIRT_URI")
	volumetest.RequireLibvirt(t, uri)
	dir := t.TempDir()
	n := 0
	return volumetest.Harness{
		Driver:     file.New(uri),
		LibvirtURI: uri,
		NewRef: func(t *testing.T) volume.Ref {
			n++
			return volume.Ref{Type: volume.TypeFile, Format: format,
				Path: filepath.Join(dir, fmt.Sprintf("vol%d.%s", n, format))}
		},
		DiskXML: func(vol volume.Ref, dev string) string {
			return fmt.Sprintf(`<disk type='file' device='disk'><driver name='qemu' type='%s'/>
      <source file='%s'/><target dev='%s' bus='virtio'/></disk>`, format, vol.Path, dev)
		},
	}
}

func TestConformanceQCOW2(t *testing.T) { volumetest.Run(t, harness(t, volume.FormatQCOW2)) }
func TestConformanceRaw(t *testing.T)   { volumetest.Run(t, harness(t, volume.FormatRaw)) }
