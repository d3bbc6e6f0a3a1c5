package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// The steps, in the order every run takes them.
const (
	stepFirst = iota
	stepFileChange
	stepScattered
	stepRestore
)

var steps = []string{"1 first backup", "2 after file change", "3 after scattered writes", "4 restore + verify"}

// tool is one backup program under test. Its commands are run, timed and measured by runStep; init is not
// timed. Backups always take the same image path; restore writes into the empty directory dir and says
// where the restored image will be.
type tool interface {
	name() string
	init(ctx context.Context, r *repo) error
	backup(ctx context.Context, r *repo, image string, step int) (*exec.Cmd, error)
	restore(ctx context.Context, r *repo, image, dir string) (*exec.Cmd, string, error)
}

// sample is what one step of one tool measured.
type sample struct {
	wall  time.Duration
	added int64 // bytes the repository grew by
	rss   int64 // the child's peak resident set
}

// runStep runs one step of t on r as a child process. A restore is checked against want (the image's
// sha256) and its output removed.
func runStep(ctx context.Context, t tool, r *repo, step int, image, want string) (sample, error) {
	var s sample
	before, err := r.size(ctx)
	if err != nil {
		return s, err
	}
	restoreDir, out := filepath.Join(r.dir, "restore"), ""
	var cmd *exec.Cmd
	if step == stepRestore {
		if err := os.MkdirAll(restoreDir, 0o755); err != nil {
			return s, err
		}
		cmd, out, err = t.restore(ctx, r, image, restoreDir)
	} else {
		cmd, err = t.backup(ctx, r, image, step)
	}
	if err != nil {
		return s, err
	}
	if s.wall, s.rss, err = runChildProcess(cmd); err != nil {
		return s, err
	}
	after, err := r.size(ctx)
	if err != nil {
		return s, err
	}
	s.added = after - before
	if step == stepRestore {
		got, err := sha256File(out)
		if err != nil {
			return s, err
		}
		if got != want {
			return s, fmt.Errorf("restored image differs from the source: sha256 %s, want %s", got, want)
		}
		return s, os.RemoveAll(restoreDir)
	}
	return s, nil
}

// runChildProcess runs cmd to its end and returns its wall time and peak RSS; on failure its error carries
// the end of the child's output.
func runChildProcess(cmd *exec.Cmd) (time.Duration, int64, error) {
	var out bytes.Buffer
	if cmd.Stdout == nil {
		cmd.Stdout = &out
	}
	cmd.Stderr = &out
	t0 := time.Now()
	err := cmd.Run()
	wall := time.Since(t0)
	if err != nil {
		tail := out.Bytes()
		if len(tail) > 2000 {
			tail = tail[len(tail)-2000:]
		}
		return 0, 0, fmt.Errorf("%s: %w\n%s", filepath.Base(cmd.Path), err, tail)
	}
	ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if !ok {
		return 0, 0, errors.New("no rusage for the child (Linux only)")
	}
	return wall, ru.Maxrss << 10, nil // Maxrss is in KiB on Linux
}
