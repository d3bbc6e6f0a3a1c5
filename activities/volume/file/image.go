package file

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/holdfast/holdfast/activities/volume"
)

// An image's format is recorded, never guessed. The first bytes of a raw volume are its guest's to write, and
// a guest that writes a qcow2 header naming a backing file (/etc/shadow, a neighbour's disk) would have any
// reader that trusts the magic read that host file into a backup. So the format comes from the volume's Ref
// (stated at registration) or, for volumes registered before formats were recorded, from the path's
// extension; the bytes only ever confirm it. Every qemu tool is told the format explicitly.

// image is a file volume as found on disk.
type image struct {
	path   string
	format volume.Format
	size   int64
}

// formatOf is the volume's recorded format; when none was recorded, ".qcow2" names a qcow2 image and every
// other name a raw one. The file's contents never decide.
func formatOf(vol volume.Ref) (volume.Format, error) {
	switch vol.Format {
	case volume.FormatRaw, volume.FormatQCOW2:
		return vol.Format, nil
	case "":
		if filepath.Ext(vol.Path) == ".qcow2" {
			return volume.FormatQCOW2, nil
		}
		return volume.FormatRaw, nil
	}
	return "", fmt.Errorf("file driver: format %q: %w", vol.Format, volume.ErrUnsupported)
}

// checkRef validates a Ref without touching the disk and returns its clean path and format.
func checkRef(vol volume.Ref) (string, volume.Format, error) {
	if vol.Type != volume.TypeFile {
		return "", "", fmt.Errorf("file driver: volume type %q: %w", vol.Type, volume.ErrUnsupported)
	}
	if !filepath.IsAbs(vol.Path) {
		return "", "", fmt.Errorf("file driver: path %q is not absolute", vol.Path)
	}
	format, err := formatOf(vol)
	if err != nil {
		return "", "", err
	}
	return filepath.Clean(vol.Path), format, nil
}

// lstat returns what is at the volume's path, which must be a regular file: never a symlink (whose target
// could be any host file), a device (/dev/null, a host disk), a FIFO or a directory. It follows no link.
func lstat(vol volume.Ref, path string) (fs.FileInfo, error) {
	st, err := os.Lstat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, volume.NotFound(vol.String())
		}
		return nil, err
	}
	if err := regular(vol, st); err != nil {
		return nil, err
	}
	return st, nil
}

func regular(vol volume.Ref, st fs.FileInfo) error {
	if st.Mode().IsRegular() {
		return nil
	}
	kind := "not a regular file"
	switch {
	case st.Mode()&fs.ModeSymlink != 0:
		kind = "a symbolic link"
	case st.Mode()&fs.ModeDevice != 0:
		kind = "a device"
	case st.IsDir():
		kind = "a directory"
	}
	return fmt.Errorf("%s is %s, not an image file: %w", vol, kind, volume.ErrUnsupported)
}

// openImage opens the volume's image read-only, refusing anything but a regular file. O_NOFOLLOW and the
// check on the open descriptor close the window in which the path could become a symlink after lstat.
func openImage(vol volume.Ref, path string) (*os.File, error) {
	if _, err := lstat(vol, path); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return nil, volume.NotFound(vol.String())
		case errors.Is(err, syscall.ELOOP):
			return nil, fmt.Errorf("%s is a symbolic link, not an image file: %w", vol, volume.ErrUnsupported)
		}
		return nil, err
	}
	st, err := f.Stat()
	if err == nil {
		err = regular(vol, st)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// openNoFollow opens a file the driver found (or made) regular, read-only, without following a symlink put
// in its place since.
func openNoFollow(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
}

// probe opens the volume as its recorded format says and checks that the driver may serve it. A qcow2 image
// must carry the qcow2 magic and stand alone: a backing file or an external data file would make QEMU (and
// this driver) open another host file, so such an image is refused, without naming that file.
func (d *Driver) probe(vol volume.Ref) (image, error) {
	path, format, err := checkRef(vol)
	if err != nil {
		return image{}, err
	}
	f, err := openImage(vol, path)
	if err != nil {
		return image{}, err
	}
	defer f.Close()
	if format == volume.FormatQCOW2 {
		h, err := readHeader(f)
		if err != nil {
			return image{}, fmt.Errorf("%s: %w", vol, err)
		}
		if err := h.standalone(); err != nil {
			return image{}, fmt.Errorf("%s: %w", vol, err)
		}
		return image{path: path, format: format, size: int64(h.size)}, nil
	}
	st, err := f.Stat()
	if err != nil {
		return image{}, err
	}
	return image{path: path, format: format, size: st.Size()}, nil
}

// imageOpts names an image for a qemu tool's --image-opts: its format and the file, as options rather than
// a file name that QEMU would parse (a "json:" or protocol prefix) or probe (a missing format).
func imageOpts(img image) string {
	return fmt.Sprintf("driver=%s,file.driver=file,file.filename=%s", img.format,
		strings.ReplaceAll(img.path, ",", ",,"))
}
