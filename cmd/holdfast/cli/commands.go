package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/starter/api/apiv1"
)

func runSnapshot(ctx context.Context, inv *invocation, args []string) error {
	return inv.createItem(ctx, args[0], "snapshots")
}

func runBackup(ctx context.Context, inv *invocation, args []string) error {
	return inv.createItem(ctx, args[0], "backups")
}

func (inv *invocation) createItem(ctx context.Context, volumeID, collection string) error {
	if err := checkID("VOLUME", volumeID); err != nil {
		return err
	}
	return inv.start(ctx, http.MethodPost, volumePath(volumeID)+"/"+collection, nil,
		apiv1.CreateItemRequest{Name: inv.opts.name})
}

func runRestore(ctx context.Context, inv *invocation, args []string) error {
	o := inv.opts
	volumeID := args[0]
	if err := checkID("VOLUME", volumeID); err != nil {
		return err
	}
	if o.latestBackup {
		if o.snapshotID != "" || o.backupID != "" {
			return usagef("restore: --latest-backup excludes --snapshot and --backup")
		}
		id, err := inv.latestBackup(ctx, volumeID)
		if err != nil {
			return err
		}
		o.backupID = id
	}
	req := apiv1.RestoreRequest{SnapshotID: o.snapshotID, BackupID: o.backupID}
	if err := checkSource(o); err != nil {
		return err
	}
	switch {
	case o.inPlace && o.newVolume != "":
		return usagef("restore: --in-place and --new-volume exclude each other")
	case o.inPlace:
		if o.instant {
			return usagef("restore: --instant applies only to --new-volume")
		}
		if o.newName != "" || o.plan != "" || o.hypervisor != "" || o.path != "" || o.pool != "" {
			return usagef("restore: --new-name, --plan, --hypervisor, --path and --pool apply only to --new-volume")
		}
		// The API checks the name; requiring the flag here only saves a round trip for the common slip.
		if o.confirm == "" {
			return usagef("restore: --in-place overwrites %s: confirm with --confirm <its name>", volumeID)
		}
		req.Mode, req.Confirm = apiv1.ModeInPlace, o.confirm
	case o.newVolume != "":
		if o.confirm != "" {
			return usagef("restore: --confirm applies only to --in-place")
		}
		if err := checkID("--new-volume", o.newVolume); err != nil {
			return err
		}
		name := o.newName
		if name == "" {
			name = o.newVolume
		}
		req.Mode, req.NewVolumeID, req.NewVolumeName = apiv1.ModeNewVolume, o.newVolume, name
		req.Plan, req.HypervisorID, req.Instant = o.plan, o.hypervisor, o.instant
		switch {
		case o.path != "" && o.pool != "":
			return usagef("restore: --path and --pool exclude each other")
		case o.path != "":
			req.Storage = &apiv1.Storage{Type: activities.VolumeFile, Path: o.path}
		case o.pool != "":
			req.Storage = &apiv1.Storage{Type: activities.VolumeRBD, Pool: o.pool, Image: o.newVolume}
		}
	default:
		return usagef("restore: say where to: --in-place --confirm <volume name>, or --new-volume NEW_ID")
	}
	return inv.start(ctx, http.MethodPost, volumePath(volumeID)+"/restore", nil, req)
}

// latestBackup is the ID of volumeID's newest backup whose status is "available" (api.md's item status).
func (inv *invocation) latestBackup(ctx context.Context, volumeID string) (string, error) {
	var v apiv1.Volume
	if _, err := inv.api.getJSON(ctx, volumePath(volumeID), &v); err != nil {
		return "", err
	}
	var latest *apiv1.Backup
	for i, b := range v.Backups {
		if b.Status == "available" && (latest == nil || b.CreatedAt.After(latest.CreatedAt)) {
			latest = &v.Backups[i]
		}
	}
	if latest == nil {
		return "", fmt.Errorf("volume %s has no available backup", volumeID)
	}
	return latest.BackupID, nil
}

// checkSource insists on exactly one of --snapshot and --backup.
func checkSource(o options) error {
	switch {
	case o.snapshotID != "" && o.backupID != "":
		return usagef("--snapshot and --backup exclude each other")
	case o.snapshotID != "":
		return checkID("--snapshot", o.snapshotID)
	case o.backupID != "":
		return checkID("--backup", o.backupID)
	}
	return usagef("say which item: --snapshot ID or --backup ID")
}

func runDelete(ctx context.Context, inv *invocation, args []string) error {
	o := inv.opts
	volumeID := args[0]
	if err := checkID("VOLUME", volumeID); err != nil {
		return err
	}
	if err := checkSource(o); err != nil {
		return err
	}
	if o.confirm == "" {
		return usagef("delete: confirm with --confirm <the snapshot's or backup's name>")
	}
	path := volumePath(volumeID) + "/snapshots/" + url.PathEscape(o.snapshotID)
	if o.backupID != "" {
		path = volumePath(volumeID) + "/backups/" + url.PathEscape(o.backupID)
	}
	return inv.start(ctx, http.MethodDelete, path, url.Values{"confirm": {o.confirm}}, nil)
}

func runAbort(ctx context.Context, inv *invocation, args []string) error {
	if err := checkID("VOLUME", args[0]); err != nil {
		return err
	}
	return inv.start(ctx, http.MethodPost, volumePath(args[0])+"/abort", nil, nil)
}

// start sends a request that starts an operation (202) and reports it, or watches it with --wait.
func (inv *invocation) start(ctx context.Context, method, path string, query url.Values, body any) error {
	data, err := inv.api.do(ctx, method, path, query, body)
	if err != nil {
		return err
	}
	var op apiv1.Accepted
	if err := decode(data, &op); err != nil {
		return err
	}
	if op.OperationID == "" {
		return fmt.Errorf("unexpected response from the API: no operation_id in %s", firstLine(string(data)))
	}
	aborting := inv.cmd == "abort"
	if !inv.opts.wait && inv.opts.json {
		writeJSON(inv.stdout, data)
		return nil
	}
	if !inv.opts.json {
		if aborting {
			fmt.Fprintf(inv.stdout, "abort requested for %s operation %s on %s\n", op.Kind, op.OperationID, op.VolumeID)
		} else {
			fmt.Fprintf(inv.stdout, "%s of %s accepted: operation %s%s\n", op.Kind, op.VolumeID, op.OperationID, itemSuffix(&op))
		}
	}
	if !inv.opts.wait {
		fmt.Fprintf(inv.stdout, "follow it with: holdfast watch %s\n", op.OperationID)
		return nil
	}
	final, raw, err := inv.watch(ctx, op.OperationID)
	if err != nil {
		return err
	}
	if inv.opts.json {
		writeJSON(inv.stdout, raw)
	}
	// What abort asked for is that the operation stop; however it ended, it has. The progress view leaves
	// failed and aborted endings to the caller, so say how this one ended.
	if aborting {
		if !inv.opts.json && outcome(final) != nil {
			fmt.Fprintf(inv.stdout, "%s operation %s on %s %s\n", final.Kind, final.OperationID, final.VolumeID, final.Status)
		}
		return nil
	}
	return outcome(final)
}

func itemSuffix(op *apiv1.Accepted) string {
	if op.ItemID == "" {
		return ""
	}
	return fmt.Sprintf(" (%s %s)", op.Kind, op.ItemID)
}

// outcome is nil for an operation that succeeded and an exit-4 error for one that failed or was aborted.
func outcome(op *apiv1.Operation) error {
	if op.Status == "failed" || op.Status == "aborted" {
		return &operationEndedError{op: op}
	}
	return nil
}

func runWatch(ctx context.Context, inv *invocation, args []string) error {
	if err := checkID("OPERATION_ID", args[0]); err != nil {
		return err
	}
	final, raw, err := inv.watch(ctx, args[0])
	if err != nil {
		return err
	}
	if inv.opts.json {
		writeJSON(inv.stdout, raw)
	}
	return outcome(final)
}

func runStatus(ctx context.Context, inv *invocation, args []string) error {
	if err := checkID("VOLUME", args[0]); err != nil {
		return err
	}
	var v apiv1.Volume
	raw, err := inv.api.getJSON(ctx, volumePath(args[0]), &v)
	if err != nil {
		return err
	}
	if inv.opts.json {
		writeJSON(inv.stdout, raw)
		return nil
	}
	writeStatus(inv.stdout, &v)
	return nil
}

func runList(ctx context.Context, inv *invocation, args []string) error {
	for _, id := range args {
		if err := checkID("VOLUME", id); err != nil {
			return err
		}
	}
	// Fetch everything before printing anything, so a missing volume does not leave half a listing.
	vols := make([]apiv1.Volume, len(args))
	raws := make([]json.RawMessage, len(args))
	for i, id := range args {
		raw, err := inv.api.getJSON(ctx, volumePath(id), &vols[i])
		if err != nil {
			return err
		}
		raws[i] = raw
	}
	if inv.opts.json {
		doc, err := json.Marshal(raws)
		if err != nil {
			return err
		}
		writeJSON(inv.stdout, doc)
		return nil
	}
	writeList(inv.stdout, vols)
	return nil
}

// writeJSON prints an API document on one line, so that stdout is exactly one JSON document (and jq,
// line-oriented tools and `read` all cope).
func writeJSON(w io.Writer, doc []byte) {
	var b bytes.Buffer
	if err := json.Compact(&b, doc); err != nil {
		b.Reset()
		b.Write(bytes.TrimSpace(doc))
	}
	b.WriteByte('\n')
	w.Write(b.Bytes())
}
