package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// newTools returns the tools under test, Holdfast first; the peers' binaries must be in cfg.binDir.
func newTools(cfg config) ([]tool, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	tools := []tool{holdfast{self: self, concurrency: cfg.concurrency}}
	for _, name := range cfg.peers {
		if name != "restic" && name != "kopia" {
			return nil, fmt.Errorf("-peers: unknown peer %q", name)
		}
		bin, err := filepath.Abs(filepath.Join(cfg.binDir, name))
		if err != nil {
			return nil, err
		}
		if _, err := os.Stat(bin); err != nil {
			return nil, fmt.Errorf("%s: %w (make bin/%s)", name, err, name)
		}
		switch name {
		case "restic":
			tools = append(tools, restic{bin: bin})
		case "kopia":
			tools = append(tools, kopia{bin: bin, compression: cfg.kopiaCompression})
		}
	}
	return tools, nil
}

// peerCommand is a peer's command with env and the bucket credentials added to this environment.
func peerCommand(ctx context.Context, bin string, env []string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Env = append(cmd.Env, "AWS_ACCESS_KEY_ID="+accessKey(), "AWS_SECRET_ACCESS_KEY="+secretKey())
	return cmd
}

// restic keeps its cache in the repo's state directory, so that every run starts cold and cleans up.
type restic struct{ bin string }

func (restic) name() string { return "restic" }

func (t restic) command(ctx context.Context, r *repo, args ...string) *exec.Cmd {
	repository := r.data
	if r.s3 != nil {
		repository = "s3:" + r.endpoint + "/" + r.bucket
	}
	return peerCommand(ctx, t.bin, []string{"RESTIC_REPOSITORY=" + repository, "RESTIC_PASSWORD=" + password,
		"RESTIC_CACHE_DIR=" + filepath.Join(r.dir, "cache")}, args...)
}

func (t restic) init(ctx context.Context, r *repo) error {
	_, _, err := runChildProcess(t.command(ctx, r, "init", "--quiet"))
	return err
}

func (t restic) backup(ctx context.Context, r *repo, image string, _ int) (*exec.Cmd, error) {
	return t.command(ctx, r, "backup", "--quiet", image), nil
}

// restore puts the file at its absolute path below dir, as restic does.
func (t restic) restore(ctx context.Context, r *repo, image, dir string) (*exec.Cmd, string, error) {
	return t.command(ctx, r, "restore", "latest", "--quiet", "--target", dir), filepath.Join(dir, image), nil
}

// kopia keeps its configuration, cache and logs in the repo's state directory.
type kopia struct {
	bin         string
	compression string // the repository's global compression policy; empty: kopia's default (none)
}

func (kopia) name() string { return "kopia" }

func (t kopia) command(ctx context.Context, r *repo, args ...string) *exec.Cmd {
	args = append([]string{"--config-file", filepath.Join(r.dir, "kopia.config"), "--log-dir", filepath.Join(r.dir, "logs"),
		"--no-progress"}, args...)
	return peerCommand(ctx, t.bin, []string{"KOPIA_PASSWORD=" + password, "KOPIA_CHECK_FOR_UPDATES=false",
		"KOPIA_CACHE_DIRECTORY=" + filepath.Join(r.dir, "cache")}, args...)
}

func (t kopia) init(ctx context.Context, r *repo) error {
	args := []string{"repository", "create", "filesystem", "--path", r.data}
	if r.s3 != nil {
		args = []string{"repository", "create", "s3", "--bucket", r.bucket, "--endpoint", r.endpointHost(), "--disable-tls"}
	}
	if _, _, err := runChildProcess(t.command(ctx, r, args...)); err != nil || t.compression == "" {
		return err
	}
	_, _, err := runChildProcess(t.command(ctx, r, "policy", "set", "--global", "--compression", t.compression))
	return err
}

func (t kopia) backup(ctx context.Context, r *repo, image string, _ int) (*exec.Cmd, error) {
	return t.command(ctx, r, "snapshot", "create", image), nil
}

// restore looks up the image's latest snapshot (not timed) and restores it to a file in dir.
func (t kopia) restore(ctx context.Context, r *repo, image, dir string) (*exec.Cmd, string, error) {
	list := t.command(ctx, r, "snapshot", "list", "--json", image)
	out, err := list.Output()
	if err != nil {
		return nil, "", fmt.Errorf("kopia snapshot list: %w", err)
	}
	var snaps []struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(out, &snaps); err != nil {
		return nil, "", fmt.Errorf("kopia snapshot list: %w", err)
	}
	if len(snaps) == 0 {
		return nil, "", errors.New("kopia snapshot list: no snapshot of the image")
	}
	target := filepath.Join(dir, "volume.img")
	return t.command(ctx, r, "snapshot", "restore", snaps[len(snaps)-1].ID, target), target, nil
}
