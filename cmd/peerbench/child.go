package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"

	"github.com/holdfast/holdfast/activities/backup"
	fsstore "github.com/holdfast/holdfast/activities/backup/fs"
	s3store "github.com/holdfast/holdfast/activities/backup/s3"
)

// childCommand is the hidden first argument that makes this command one Holdfast engine operation, so that
// Holdfast runs as a child process measured like restic and kopia.
const childCommand = "holdfast-child"

// volumeID is the volume every Holdfast backup in the bench belongs to.
const volumeID = "peerbench"

// holdfast is the Holdfast engine, run as a child of this command (runChild).
type holdfast struct {
	self        string // this executable
	concurrency int
}

func (holdfast) name() string { return "holdfast" }

func (holdfast) init(context.Context, *repo) error { return nil } // the engine needs no repository setup

func (h holdfast) backup(ctx context.Context, r *repo, image string, step int) (*exec.Cmd, error) {
	args := []string{"-op", "backup", "-image", image, "-backup", backupID(step)}
	if step > stepFirst {
		args = append(args, "-parent", backupID(step-1))
	}
	return h.command(ctx, r, args), nil
}

func (h holdfast) restore(ctx context.Context, r *repo, _, dir string) (*exec.Cmd, string, error) {
	out := filepath.Join(dir, "volume.img")
	return h.command(ctx, r, []string{"-op", "restore", "-out", out, "-backup", backupID(stepScattered)}), out, nil
}

func (h holdfast) command(ctx context.Context, r *repo, args []string) *exec.Cmd {
	args = append([]string{childCommand, "-concurrency", strconv.Itoa(h.concurrency)}, args...)
	if r.s3 != nil {
		args = append(args, "-endpoint", r.endpoint, "-bucket", r.bucket)
	} else {
		args = append(args, "-store", r.data)
	}
	return exec.CommandContext(ctx, h.self, args...)
}

func backupID(step int) string { return "b" + strconv.Itoa(step+1) }

// runChild runs one engine backup or restore, as told by args, against an encrypted fs or S3 store.
func runChild(ctx context.Context, args []string) error {
	fl := flag.NewFlagSet(childCommand, flag.ContinueOnError)
	op := fl.String("op", "", "backup or restore")
	storeDir := fl.String("store", "", "fs store root")
	endpoint := fl.String("endpoint", "", "S3 endpoint")
	bucket := fl.String("bucket", "", "S3 bucket")
	imagePath := fl.String("image", "", "backup: the image to read")
	out := fl.String("out", "", "restore: the file to create")
	backupIDFlag := fl.String("backup", "", "backup ID")
	parent := fl.String("parent", "", "backup: the parent backup ID")
	concurrency := fl.Int("concurrency", 0, "chunks in flight")
	if err := fl.Parse(args); err != nil {
		return err
	}
	var st backup.Store
	var err error
	if *bucket != "" {
		st, err = s3store.New(ctx, s3store.Config{Endpoint: *endpoint, Bucket: *bucket, PathStyle: true,
			AccessKey: accessKey(), SecretKey: secretKey()})
	} else {
		st, err = fsstore.New(fsstore.Config{Path: *storeDir})
	}
	if err != nil {
		return err
	}
	key := sha256.Sum256([]byte(password))
	eng, err := backup.New(st, backup.Options{Concurrency: *concurrency, Key: key[:], Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	switch *op {
	case "backup":
		return childBackup(ctx, eng, *imagePath, *backupIDFlag, *parent)
	case "restore":
		return childRestore(ctx, eng, *out, *backupIDFlag)
	}
	return fmt.Errorf("unknown -op %q", *op)
}

func childBackup(ctx context.Context, eng *backup.Engine, imagePath, backupID, parent string) error {
	src, err := os.Open(imagePath)
	if err != nil {
		return err
	}
	defer src.Close()
	size, err := src.Seek(0, io.SeekEnd) // the engine reads at offsets (ReaderAt): the position does not matter
	if err != nil {
		return err
	}
	_, err = eng.Backup(ctx, backup.BackupRequest{VolumeID: volumeID, BackupID: backupID, Source: src,
		Size: size, Parent: parent})
	return err
}

func childRestore(ctx context.Context, eng *backup.Engine, out, backupID string) error {
	f, err := os.OpenFile(out, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	// No fsync: neither restic nor kopia syncs what it restores, and the bench times the same work for all.
	_, err = eng.Restore(ctx, backup.RestoreRequest{VolumeID: volumeID, BackupID: backupID, Target: f, TargetZeroed: true})
	return errors.Join(err, f.Close())
}
