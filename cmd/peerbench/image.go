package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// image is an ext4 file-system image and the files it was filled with (paths inside it).
type image struct {
	path  string
	size  int64
	files []string
	used  int64 // bytes of the copied files
}

// buildImage copies up to fill bytes of regular files from the data directories into a staging directory
// under dir, then makes a size-byte ext4 image of it with `mke2fs -d`. The staging copy goes away after.
func buildImage(dir string, size, fill int64, data []string) (*image, error) {
	img := &image{path: filepath.Join(dir, "volume.img"), size: size}
	stage := filepath.Join(dir, "stage")
	defer os.RemoveAll(stage)
	for _, root := range data {
		if img.used >= fill {
			break
		}
		if err := img.stage(root, filepath.Join(stage, filepath.Base(root)), fill); err != nil {
			return nil, err
		}
	}
	if len(img.files) < 2 {
		return nil, fmt.Errorf("no files to fill the image with under %s", strings.Join(data, ", "))
	}
	f, err := os.Create(img.path)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	if out, err := exec.Command("mke2fs", "-q", "-F", "-t", "ext4", "-d", stage, img.path).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("mke2fs: %w: %s", err, out)
	}
	return img, nil
}

// stage copies regular files of root to dst, walking in lexical order, until img.used reaches fill.
func (img *image) stage(root, dst string, fill int64) error {
	return filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil // unreadable: skip, the data is only filler
		}
		if img.used >= fill {
			return filepath.SkipAll
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		n, err := copyFile(path, filepath.Join(dst, rel))
		if err != nil {
			return err
		}
		img.used += n
		img.files = append(img.files, "/"+filepath.ToSlash(filepath.Join(filepath.Base(root), rel)))
		return nil
	})
}

func copyFile(src, dst string) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return n, err
}

// copyTo copies the image to path (a fresh volume for one run).
func (img *image) copyTo(path string) (*image, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	if _, err := copyFile(img.path, path); err != nil {
		return nil, err
	}
	c := *img
	c.path = path
	return &c, nil
}

// changeFiles is a small file-level change made through debugfs, without mounting: four new files of
// 256 KiB random bytes in a new directory, and two of the copied files removed. Seeded by the run.
func (img *image) changeFiles(dir string, run int) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	rng := rand.New(rand.NewPCG(uint64(run), 1))
	cmds := []string{"mkdir /peerbench-change"}
	buf := make([]byte, 256<<10)
	for i := range 4 {
		for j := range buf {
			buf[j] = byte(rng.Uint32())
		}
		src := filepath.Join(dir, fmt.Sprintf("new%d", i))
		if err := os.WriteFile(src, buf, 0o644); err != nil {
			return err
		}
		cmds = append(cmds, fmt.Sprintf("write %s /peerbench-change/new%d", src, i))
	}
	for _, f := range img.files[len(img.files)/3:][:2] {
		cmds = append(cmds, "rm "+f)
	}
	script := filepath.Join(dir, "debugfs.cmds")
	if err := os.WriteFile(script, []byte(strings.Join(cmds, "\n")+"\n"), 0o644); err != nil {
		return err
	}
	out, err := exec.Command("debugfs", "-w", "-f", script, img.path).CombinedOutput()
	if err != nil {
		return fmt.Errorf("debugfs: %w: %s", err, out)
	}
	// debugfs exits 0 whatever its commands did; each failure is a line that is not an echoed command.
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line != "" && !strings.HasPrefix(line, "debugfs") && !strings.HasPrefix(line, "Allocated inode") {
			return fmt.Errorf("debugfs: %s", out)
		}
	}
	return nil
}

// scatterWrites writes n blocks of 4 KiB random bytes at random 4 KiB-aligned offsets. Seeded by the run.
func (img *image) scatterWrites(n, run int) error {
	f, err := os.OpenFile(img.path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	rng := rand.New(rand.NewPCG(uint64(run), 2))
	block := make([]byte, 4096)
	for range n {
		for j := range block {
			block[j] = byte(rng.Uint32())
		}
		if _, err := f.WriteAt(block, rng.Int64N(img.size/4096)*4096); err != nil {
			return err
		}
	}
	return f.Close()
}

func sha256File(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
