// Command peerbench compares Holdfast's backup engine with two peers, restic and kopia, on the same ext4
// image of real files, in one run, and prints medians and ratios. It is `make bench-peers`; it never runs
// under `go test`.
//
// Each run copies a fresh image, then every tool on every repository (a local directory, and a MinIO bucket
// of its own), encryption on for all, goes through the same steps in lockstep: a first backup, a second
// after a few files changed inside the file system (debugfs, no mount), a third after scattered 4 KiB
// writes, and a restore of the third to a new file that must be byte-identical, or the run fails. Every
// step is one child process — Holdfast's too (this command re-executed, see child.go) — so wall time and
// peak RSS (the child's rusage) are measured the same way for all. Timings are printed, never asserted.
//
// It owns nothing but its scratch directory and the buckets it creates; it removes both unless -keep.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
)

// password encrypts every repository (Holdfast derives its key from it, see child.go).
const password = "peerbench-not-a-secret"

func main() {
	if len(os.Args) > 1 && os.Args[1] == childCommand {
		if err := runChild(context.Background(), os.Args[2:]); err != nil {
			log.Fatalf("holdfast child: %v", err)
		}
		return
	}
	var cfg config
	flag.StringVar(&cfg.dir, "dir", ".run/bench-peers", "scratch directory (images, local repositories, tool state)")
	flag.StringVar(&cfg.endpoint, "endpoint", "http://127.0.0.1:9000", "S3 endpoint (local MinIO)")
	flag.StringVar(&cfg.binDir, "bin", "bin", "directory holding the restic and kopia binaries")
	size := flag.String("size", "512MiB", "ext4 image size (KiB, MiB or GiB suffix)")
	flag.Float64Var(&cfg.fill, "fill", 0.5, "fraction of the image filled with copied files")
	data := flag.String("data", "/usr/share/doc,/usr/local/go", "comma-separated directories whose files fill the image")
	peers := flag.String("peers", "restic,kopia", "comma-separated peers to compare with")
	flag.IntVar(&cfg.runs, "runs", 3, "runs; the medians are printed")
	flag.IntVar(&cfg.writes, "writes", 200, "scattered 4 KiB writes before the third backup")
	flag.IntVar(&cfg.concurrency, "concurrency", 0, "Holdfast engine chunks in flight (0: the engine's default)")
	flag.StringVar(&cfg.kopiaCompression, "kopia-compression", "", "kopia compression policy, e.g. zstd (empty: kopia's default, none)")
	flag.BoolVar(&cfg.keep, "keep", false, "keep the scratch directory and the buckets")
	flag.Parse()
	var err error
	if cfg.size, err = parseSize(*size); err != nil {
		log.Fatalf("-size: %v", err)
	}
	cfg.data, cfg.peers = strings.Split(*data, ","), strings.Split(*peers, ",")
	// Interrupted, the children are killed and the run still removes its buckets and scratch directory.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err = run(ctx, cfg)
	stop()
	if err != nil {
		log.Fatal(err)
	}
}

type config struct {
	dir, endpoint, binDir string
	size                  int64
	fill                  float64
	data, peers           []string
	runs, writes          int
	concurrency           int
	kopiaCompression      string
	keep                  bool
}

func run(ctx context.Context, cfg config) (err error) {
	for _, p := range []string{"mke2fs", "debugfs"} {
		if _, err := exec.LookPath(p); err != nil {
			return fmt.Errorf("%s not found (Debian package e2fsprogs): %w", p, err)
		}
	}
	// A directory of its own inside -dir: removing it never touches what was there before.
	if err := os.MkdirAll(cfg.dir, 0o755); err != nil {
		return err
	}
	if cfg.dir, err = os.MkdirTemp(cfg.dir, "peerbench-"); err != nil {
		return err
	}
	if cfg.dir, err = filepath.Abs(cfg.dir); err != nil {
		return err
	}
	if cfg.keep {
		log.Printf("keeping %s and the buckets (-keep)", cfg.dir)
	} else {
		defer func() { _ = os.RemoveAll(cfg.dir) }()
	}
	tools, err := newTools(cfg)
	if err != nil {
		return err
	}
	log.Printf("building a %s ext4 image from %s", formatMiB(cfg.size), strings.Join(cfg.data, ", "))
	pristine, err := buildImage(filepath.Join(cfg.dir, "pristine"), cfg.size, int64(float64(cfg.size)*cfg.fill), cfg.data)
	if err != nil {
		return err
	}
	res := newResults(tools)
	for r := range cfg.runs {
		if err := runOnce(ctx, cfg, tools, pristine, r, res); err != nil {
			return fmt.Errorf("run %d: %w", r+1, err)
		}
	}
	res.print(os.Stdout, cfg, pristine)
	return nil
}

// trial is one tool on one of its repositories, for one run.
type trial struct {
	tool tool
	repo *repo
}

// runOnce takes every tool on every repository kind through the steps on one fresh copy of the image.
func runOnce(ctx context.Context, cfg config, tools []tool, pristine *image, r int, res *results) error {
	runDir := filepath.Join(cfg.dir, fmt.Sprintf("run%d", r+1))
	img, err := pristine.copyTo(filepath.Join(runDir, "volume.img"))
	if err != nil {
		return err
	}
	trials, err := openTrials(ctx, cfg, runDir, tools, r)
	defer func() {
		if !cfg.keep {
			for _, tr := range trials {
				tr.repo.remove()
			}
			_ = os.RemoveAll(runDir)
		}
	}()
	if err != nil {
		return err
	}
	for step := range steps {
		switch step {
		case stepFileChange:
			err = img.changeFiles(filepath.Join(runDir, "change"), r)
		case stepScattered:
			err = img.scatterWrites(cfg.writes, r)
		}
		if err != nil {
			return err
		}
		want := ""
		if step == stepRestore {
			if want, err = sha256File(img.path); err != nil {
				return err
			}
		}
		for _, tr := range trials {
			name, kind := tr.tool.name(), tr.repo.kind
			s, err := runStep(ctx, tr.tool, tr.repo, step, img.path, want)
			if err != nil {
				return fmt.Errorf("%s %s, %s: %w", name, kind, steps[step], err)
			}
			log.Printf("run %d %-8s %-5s %-28s %6.1f s %8s added, peak RSS %s", r+1, name, kind, steps[step],
				s.wall.Seconds(), formatMiB(s.added), formatMiB(s.rss))
			res.add(name, kind, step, s)
		}
	}
	return nil
}

// openTrials makes and initialises a repository of every kind for every tool. On error it still returns
// the trials made so far, for their buckets to be removed.
func openTrials(ctx context.Context, cfg config, runDir string, tools []tool, r int) ([]trial, error) {
	var trials []trial
	for _, t := range tools {
		for _, kind := range repoKinds {
			rp, err := newRepo(ctx, cfg, runDir, t.name(), kind, r)
			if err != nil {
				return trials, err
			}
			trials = append(trials, trial{tool: t, repo: rp})
			if err := t.init(ctx, rp); err != nil {
				return trials, fmt.Errorf("%s %s: init: %w", t.name(), kind, err)
			}
		}
	}
	return trials, nil
}
