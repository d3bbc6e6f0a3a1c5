package cli

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/starter/api/apiv1"
)

// writeStatus prints a volume for people; scripts use --json, so this layout may change.
func writeStatus(w io.Writer, v *apiv1.Volume) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, val string) { fmt.Fprintf(tw, "%s\t%s\n", k, val) }
	row("Volume", v.VolumeID)
	row("Name", orDash(v.Name))
	row("Owner", orDash(v.OwnerID))
	row("Hypervisor", orDash(v.HypervisorID))
	row("Plan", orDash(v.Plan))
	row("Storage", storageText(v))
	row("Size", humanBytes(v.SizeBytes))
	if op := v.ActiveOperation; op != nil {
		row("Active", plainLine(&apiv1.Operation{OperationID: op.OperationID, Kind: op.Kind, ItemID: op.ItemID,
			Status: op.Status, Progress: op.Progress}))
	} else {
		row("Active", "none")
	}
	if v.CooldownRemainingSeconds > 0 {
		row("Cooldown", formatSeconds(float64(v.CooldownRemainingSeconds))+" remaining before the next operation")
	} else {
		row("Cooldown", "none")
	}
	tw.Flush()

	fmt.Fprintln(w)
	var rows [][]string
	for _, it := range v.Snapshots {
		rows = append(rows, []string{it.SnapshotID, orDash(it.Name), it.Status, when(it.CreatedAt), humanBytes(it.SizeBytes)})
	}
	writeTable(w, "Snapshots", []string{"ID", "NAME", "STATUS", "CREATED", "SIZE"}, rows)
	rows = nil
	for _, it := range v.Backups {
		rows = append(rows, []string{it.BackupID, orDash(it.Name), it.Status, when(it.CreatedAt), humanBytes(it.SizeBytes),
			humanBytes(it.StoredBytes), orDash(it.Storage)})
	}
	writeTable(w, "Backups", []string{"ID", "NAME", "STATUS", "CREATED", "SIZE", "STORED", "STORAGE"}, rows)
}

// writeTable prints an indented table under its title, or one "none" line rather than a bare header.
func writeTable(w io.Writer, title string, header []string, rows [][]string) {
	if len(rows) == 0 {
		fmt.Fprintf(w, "%s: none\n", title)
		return
	}
	fmt.Fprintf(w, "%s (%d):\n", title, len(rows))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, cells := range append([][]string{header}, rows...) {
		fmt.Fprintf(tw, "  %s\n", strings.Join(cells, "\t"))
	}
	tw.Flush()
}

// writeList prints one line per snapshot and backup of the given volumes, under one header, so that
// `holdfast list a b c` reads as one table (and `grep`/`awk` work on it).
func writeList(w io.Writer, vols []apiv1.Volume) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "VOLUME\tKIND\tID\tNAME\tSTATUS\tCREATED\tSIZE\tSTORED\tSTORAGE")
	for _, v := range vols {
		for _, s := range v.Snapshots {
			fmt.Fprintf(tw, "%s\tsnapshot\t%s\t%s\t%s\t%s\t%s\t-\t-\n", v.VolumeID, s.SnapshotID, orDash(s.Name), s.Status,
				when(s.CreatedAt), humanBytes(s.SizeBytes))
		}
		for _, b := range v.Backups {
			fmt.Fprintf(tw, "%s\tbackup\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.VolumeID, b.BackupID, orDash(b.Name), b.Status,
				when(b.CreatedAt), humanBytes(b.SizeBytes), humanBytes(b.StoredBytes), orDash(b.Storage))
		}
	}
	tw.Flush()
}

func storageText(v *apiv1.Volume) string {
	switch v.Storage.Type {
	case activities.VolumeRBD:
		return fmt.Sprintf("rbd %s/%s", v.Storage.Pool, v.Storage.Image)
	case "":
		return "-"
	default:
		return v.Storage.Type + " " + v.Storage.Path
	}
}

// when shortens the API's timestamps (nanoseconds, any zone) to seconds in UTC, which is what a person
// comparing items needs.
func when(t time.Time) string {
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

// orDash keeps empty cells from collapsing a tabwriter column.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
