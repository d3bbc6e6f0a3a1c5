package backup

import (
	"fmt"
	"strings"
)

// Object layout — everything a volume has lives under volumes/{volume_id}/ (the spec):
//
//	volumes/{volume_id}/chunks/{id[0:2]}/{id}                 content-addressed chunks, shared by the volume's backups
//	volumes/{volume_id}/manifests/{backup_id}.json            one per completed backup; written last
//	volumes/{volume_id}/inprogress/{backup_id}/{seq}.json     resume journal of a running backup; removed on completion
//	volumes/{volume_id}/locks/shared/{backup_id}/{holder}.json a running backup's lock: its in-progress marker (lock.go)
//	volumes/{volume_id}/locks/exclusive/{holder}.json          a running GC's or abandon's lock (lock.go)
const volumesDir = "volumes/"

func volumePrefix(volumeID string) string    { return volumesDir + volumeID + "/" }
func chunksPrefix(volumeID string) string    { return volumePrefix(volumeID) + "chunks/" }
func manifestsPrefix(volumeID string) string { return volumePrefix(volumeID) + "manifests/" }
func journalPrefix(volumeID, backupID string) string {
	return volumePrefix(volumeID) + "inprogress/" + backupID + "/"
}

func locksPrefix(volumeID string) string { return volumePrefix(volumeID) + "locks/" }
func sharedLocksPrefix(volumeID, backupID string) string {
	return locksPrefix(volumeID) + "shared/" + backupID + "/"
}

func chunkName(volumeID, id string) string { return chunksPrefix(volumeID) + id[:2] + "/" + id }

func manifestName(volumeID, backupID string) string {
	return manifestsPrefix(volumeID) + backupID + ".json"
}

func journalName(volumeID, backupID string, seq int) string {
	return fmt.Sprintf("%s%08d.json", journalPrefix(volumeID, backupID), seq)
}

// parseManifestName returns (volume_id, backup_id) for a manifest object name.
func parseManifestName(name string) (volumeID, backupID string, ok bool) {
	rest, found := strings.CutPrefix(name, volumesDir)
	if !found {
		return "", "", false
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 3 || parts[1] != "manifests" || !strings.HasSuffix(parts[2], ".json") {
		return "", "", false
	}
	return parts[0], strings.TrimSuffix(parts[2], ".json"), true
}

// volumeOf returns the volume_id of any object under volumes/ (chunk, manifest or journal).
func volumeOf(name string) (volumeID string, ok bool) {
	rest, found := strings.CutPrefix(name, volumesDir)
	if !found {
		return "", false
	}
	volumeID, _, found = strings.Cut(rest, "/")
	return volumeID, found && validComponent(volumeID) == nil
}

func checkIDs(volumeID, backupID string) error {
	if err := validComponent(volumeID); err != nil {
		return fmt.Errorf("backup: volume_id: %w", err)
	}
	if err := validComponent(backupID); err != nil {
		return fmt.Errorf("backup: backup_id: %w", err)
	}
	return nil
}
