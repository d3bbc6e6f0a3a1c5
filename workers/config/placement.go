package config

import (
	"fmt"
	"path/filepath"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/activities/volume"
)

// Volume formats of file volumes, as recorded with a volume.
const (
	FormatRaw   = "raw"
	FormatQCOW2 = "qcow2"
)

// FormatOf is a file volume's format: the one stated, or else the one its path's extension names (.qcow2;
// .raw or .img). Never the file's bytes: a raw volume's guest writes those. "" when neither says.
func FormatOf(ref activities.VolumeRef) string {
	if ref.Format != "" {
		return ref.Format
	}
	switch filepath.Ext(ref.Path) {
	case ".qcow2":
		return FormatQCOW2
	case ".raw", ".img":
		return FormatRaw
	}
	return ""
}

// Extension is the file extension Holdfast gives a new file volume of a format.
func Extension(format string) string {
	if format == FormatQCOW2 {
		return ".qcow2"
	}
	return ".raw"
}

// Placement checks that a volume's location is one hypervisorID may hold, and returns the ref as Holdfast
// records it (format stated, path clean). A file volume's path must be absolute, clean, free of control
// characters and strictly inside one of the hypervisor's volume_roots; an RBD image must be in one of its
// rbd_pools. Errors name the field (storage.path, storage.pool, …) and never echo a host path back.
// Whether the path is a regular file is the driver's to check on the hypervisor, at every use.
func (c *Config) Placement(hypervisorID string, ref activities.VolumeRef) (activities.VolumeRef, error) {
	h := c.Hypervisors[hypervisorID]
	if h == nil {
		return ref, fmt.Errorf("hypervisor_id: unknown hypervisor %q", hypervisorID)
	}
	if ref.CreatedBy != "" {
		return ref, fmt.Errorf("storage.created_by: is set by Holdfast, never by a caller")
	}
	switch ref.Type {
	case activities.VolumeFile:
		if ref.Pool != "" || ref.Image != "" {
			return ref, fmt.Errorf("storage: a file volume has no pool or image")
		}
		if _, err := volume.InsideRoots(ref.Path, h.VolumeRoots); err != nil {
			return ref, fmt.Errorf("storage.path: %w", err)
		}
		switch ref.Format = FormatOf(ref); ref.Format {
		case FormatRaw, FormatQCOW2:
		case "":
			return ref, fmt.Errorf("storage.format: is required (raw or qcow2) when the path does not end in " +
				".qcow2, .raw or .img")
		default:
			return ref, fmt.Errorf("storage.format: must be raw or qcow2")
		}
	case activities.VolumeRBD:
		if ref.Path != "" || ref.Format != "" {
			return ref, fmt.Errorf("storage: an rbd volume has no path or format")
		}
		if !activities.ValidID(ref.Pool) {
			return ref, fmt.Errorf("storage.pool: must match %s", activities.IDPattern)
		}
		if !activities.ValidID(ref.Image) {
			return ref, fmt.Errorf("storage.image: must match %s", activities.IDPattern)
		}
		if !contains(h.RBDPools, ref.Pool) {
			return ref, fmt.Errorf("storage.pool: not one of the pools hypervisor %s keeps volumes in", hypervisorID)
		}
	default:
		return ref, fmt.Errorf("storage.type: must be %s", volumeTypeChoice())
	}
	return ref, nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// NewVolumeRef is where a restore creates a new volume on hypervisorID: a name Holdfast chooses (from the
// operation creating it, never from a tenant) in the hypervisor's first volume root or RBD pool, of the given
// type and format. CreatedBy is the operation, so the driver creates it exclusively and only that operation's
// compensation may delete it.
func (c *Config) NewVolumeRef(hypervisorID, volumeType, format, operationID string) (activities.VolumeRef, error) {
	h := c.Hypervisors[hypervisorID]
	if h == nil {
		return activities.VolumeRef{}, fmt.Errorf("hypervisor_id: unknown hypervisor %q", hypervisorID)
	}
	name := "holdfast-" + operationID
	switch volumeType {
	case activities.VolumeFile:
		if len(h.VolumeRoots) == 0 {
			return activities.VolumeRef{}, fmt.Errorf("hypervisor_id: hypervisor %s has no volume_roots for file volumes", hypervisorID)
		}
		if format != FormatRaw {
			format = FormatQCOW2
		}
		return activities.VolumeRef{Type: activities.VolumeFile,
			Path: filepath.Join(h.VolumeRoots[0], name+Extension(format)), Format: format, CreatedBy: operationID}, nil
	case activities.VolumeRBD:
		if len(h.RBDPools) == 0 {
			return activities.VolumeRef{}, fmt.Errorf("hypervisor_id: hypervisor %s has no rbd_pools for RBD volumes", hypervisorID)
		}
		return activities.VolumeRef{Type: activities.VolumeRBD, Pool: h.RBDPools[0], Image: name,
			CreatedBy: operationID}, nil
	}
	return activities.VolumeRef{}, fmt.Errorf("storage.type: must be %s", volumeTypeChoice())
}
