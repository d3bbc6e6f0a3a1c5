package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"time"

	"go.temporal.io/sdk/client"

	"github.com/holdfast/holdfast/starter"
	"github.com/holdfast/holdfast/workers"
	"github.com/holdfast/holdfast/workers/config"
)

// Operator commands: they talk to Temporal with the config's credentials (not to the HTTP API, which a fresh
// control plane may not run yet) and wait for the workflow they start.

// adminCommands are the operator commands, by name.
var adminCommands = map[string]func(ctx context.Context, args []string, stdout io.Writer, log *slog.Logger) error{
	"recover": runRecover,
	"scrub":   runScrub,
	"gc":      runGC,
}

const adminUsage = `Disaster recovery and storage upkeep (talk to Temporal; --config FILE or HOLDFAST_CONFIG):
  holdfast recover --store NAME [--hypervisor ID] [--json]   rebuild the catalog from a backup storage
  holdfast scrub --store NAME [--volume ID] [--json]         verify every chunk of every backup (exit 1 on damage)
  holdfast gc --store NAME [--volume ID] [--grace D] [--json] remove chunks no backup references
`

// adminFlags are the flags every operator command shares.
type adminFlags struct {
	store    *string
	jsonOut  *bool
	volumeID *string
}

func newAdminFlags(fs *flag.FlagSet, withVolume bool) adminFlags {
	f := adminFlags{store: fs.String("store", "", "backup storage name (from the config)"),
		jsonOut: fs.Bool("json", false, "print the report as JSON")}
	if withVolume {
		f.volumeID = fs.String("volume", "", "only this volume")
	}
	return f
}

// adminClient loads the config, checks --store and connects.
func adminClient(fs *flag.FlagSet, args []string, f adminFlags, log *slog.Logger) (*starter.Client, func(), error) {
	cfg, err := loadConfig(fs, args)
	if err != nil {
		return nil, nil, err
	}
	if *f.store == "" {
		return nil, nil, usageError{errors.New("--store is required")}
	}
	return dialStarter(cfg, log)
}

func dialStarter(cfg *config.Config, log *slog.Logger) (*starter.Client, func(), error) {
	c, err := workers.Dial(cfg, client.Options{Logger: log})
	if err != nil {
		return nil, nil, err
	}
	return starter.New(c, cfg), c.Close, nil
}

func runRecover(ctx context.Context, args []string, stdout io.Writer, log *slog.Logger) error {
	fs := flag.NewFlagSet("recover", flag.ContinueOnError)
	f := newAdminFlags(fs, false)
	fallback := fs.String("hypervisor", "", "register volumes whose hypervisor is no longer configured on this one")
	hf, closeFn, err := adminClient(fs, args, f, log)
	if err != nil {
		return err
	}
	defer closeFn()
	start := time.Now()
	res, err := hf.Recover(ctx, starter.RecoverOptions{Storage: *f.store, FallbackHypervisor: *fallback})
	if err != nil {
		return err
	}
	if *f.jsonOut {
		return printJSON(stdout, res)
	}
	fmt.Fprintf(stdout, "Recovered the catalog of %s in %s: %d manifests, %d volumes (%d registered), %d backups imported, %d already known.\n",
		res.Storage, time.Since(start).Round(time.Millisecond), res.Manifests, res.Volumes, res.Registered, res.Imported, res.Known)
	for _, p := range res.Problems {
		what := "volume " + p.VolumeID
		if p.BackupID != "" {
			what += " backup " + p.BackupID
		}
		fmt.Fprintf(stdout, "  not recovered: %s: %s\n", what, p.Error)
	}
	if res.ProblemsOmitted > 0 {
		fmt.Fprintf(stdout, "  … and %d more problems (see the workflow %s in the Web UI)\n", res.ProblemsOmitted, "recover/"+res.Storage)
	}
	return nil
}

func runScrub(ctx context.Context, args []string, stdout io.Writer, log *slog.Logger) error {
	fs := flag.NewFlagSet("scrub", flag.ContinueOnError)
	f := newAdminFlags(fs, true)
	hf, closeFn, err := adminClient(fs, args, f, log)
	if err != nil {
		return err
	}
	defer closeFn()
	res, err := hf.Scrub(ctx, *f.store, *f.volumeID)
	if err != nil {
		return err
	}
	if *f.jsonOut {
		if err := printJSON(stdout, res); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(stdout, "Scrubbed %s: %d backups, %d chunks, %d bytes read, %d damaged.\n", *f.store, res.Backups,
			res.Chunks, res.BytesRead, len(res.Damaged))
		for _, d := range res.Damaged {
			fmt.Fprintf(stdout, "  DAMAGED volume %s backup %s: %d missing, %d corrupt chunks %s\n", d.VolumeID, d.BackupID,
				len(d.Missing), len(d.Corrupt), d.Error)
		}
	}
	if len(res.Damaged) > 0 {
		return fmt.Errorf("%d damaged backups in %s", len(res.Damaged), *f.store)
	}
	return nil
}

func runGC(ctx context.Context, args []string, stdout io.Writer, log *slog.Logger) error {
	fs := flag.NewFlagSet("gc", flag.ContinueOnError)
	f := newAdminFlags(fs, true)
	grace := fs.Duration("grace", 24*time.Hour, "keep unreferenced chunks younger than this (in-flight backups)")
	hf, closeFn, err := adminClient(fs, args, f, log)
	if err != nil {
		return err
	}
	defer closeFn()
	res, err := hf.CollectGarbage(ctx, *f.store, *f.volumeID, *grace)
	if err != nil {
		return err
	}
	if *f.jsonOut {
		return printJSON(stdout, res)
	}
	fmt.Fprintf(stdout, "Collected %s: %d chunks deleted (%d bytes freed), %d kept.\n", *f.store, res.ChunksDeleted,
		res.BytesFreed, res.ChunksKept)
	return nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
