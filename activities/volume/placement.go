package volume

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// maxPath bounds a volume path (PATH_MAX less room for the driver's metadata beside it).
const maxPath = 1024

// InsideRoots checks, lexically, that path may name a file volume kept in one of roots: absolute, clean,
// free of control characters, strictly below a root, and with no name below the root starting with '.'
// (drivers keep a volume's metadata in .<name>.holdfast beside it). It returns the root. Its errors never
// repeat the path.
func InsideRoots(path string, roots []string) (string, error) {
	switch {
	case path == "":
		return "", errors.New("is required for type file")
	case len(path) > maxPath:
		return "", fmt.Errorf("longer than %d bytes", maxPath)
	case strings.IndexFunc(path, isControl) >= 0:
		return "", errors.New("must not contain control characters")
	case !filepath.IsAbs(path):
		return "", errors.New("must be an absolute path")
	case filepath.Clean(path) != path:
		return "", errors.New("must be clean (no '..', '.', '//' or trailing '/')")
	}
	for _, root := range roots {
		rel, ok := strings.CutPrefix(path, root+"/")
		if !ok {
			continue
		}
		for _, part := range strings.Split(rel, "/") {
			if strings.HasPrefix(part, ".") {
				return "", errors.New("no name below the volume root may start with '.'")
			}
		}
		return root, nil
	}
	return "", errors.New("must be inside one of the hypervisor's volume roots")
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == 0xfffd }

// NoSymlinkBelow checks, on this host, that no directory between root and path's file is a symbolic link
// (or anything but a directory), so a path inside a root cannot lead outside it. Directories not created
// yet are fine. The file itself is the driver's to check (it refuses links and devices when it opens it).
func NoSymlinkBelow(root, path string) error {
	rel, err := filepath.Rel(root, filepath.Dir(path))
	if err != nil {
		return err
	}
	dir := root
	if rel == "." {
		return nil
	}
	for _, part := range strings.Split(rel, "/") {
		dir = filepath.Join(dir, part)
		st, err := os.Lstat(dir)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if !st.IsDir() {
			return fmt.Errorf("a directory on the volume's path is a link or not a directory: %w", ErrUnsupported)
		}
	}
	return nil
}
