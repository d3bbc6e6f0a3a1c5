// Package domains answers the volume drivers' questions to libvirt: which domain uses a volume and whether it
// runs, guest freeze/thaw through the QEMU guest agent, and QMP commands on a domain's block nodes.
//
// It owns the libvirt connections it opens (one per call, so that answers are always live and a restarted
// libvirtd never leaves a stale handle behind) and must never change a domain's definition.
package domains

import (
	"encoding/json"
	"fmt"
	"path/filepath"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/holdfast/holdfast/activities/volume"
)

// DefaultURI is the libvirt connection of a hypervisor agent: the local system daemon.
const DefaultURI = "qemu:///system"

// Disk is one disk of a domain, as far as volume matching needs it.
type Disk struct {
	Target string // guest device name, e.g. "vdb"
	File   string // file source (type='file'), cleaned; includes backing-chain files
	RBD    string // "pool/image" of an rbd network source
}

// Match reports whether a disk is the volume's.
type Match func(Disk) bool

// Found is a domain using a volume.
type Found struct {
	volume.Attachment
	Target string // the disk's target device in that domain
}

// Open connects to libvirt at uri (DefaultURI when empty).
func Open(uri string) (*libvirt.Connect, error) {
	if uri == "" {
		uri = DefaultURI
	}
	c, err := libvirt.NewConnect(uri)
	if err != nil {
		return nil, fmt.Errorf("connect to libvirt %s: %w", uri, err)
	}
	return c, nil
}

// Find looks through every domain (running and defined) for a disk that matches. A running domain wins over
// a defined one, because that is the one that can write to the volume now.
func Find(conn *libvirt.Connect, match Match) (Found, error) {
	doms, err := conn.ListAllDomains(0)
	if err != nil {
		return Found{}, fmt.Errorf("list domains: %w", err)
	}
	var found Found
	for i := range doms {
		d := &doms[i]
		f, ok, err := inspect(d, match)
		d.Free()
		if err != nil {
			// A transient domain may vanish between list and inspection; it then uses nothing.
			if isNoDomain(err) {
				continue
			}
			return Found{}, err
		}
		if ok && (!found.Attached || (f.Running && !found.Running)) {
			found = f
		}
	}
	return found, nil
}

func inspect(d *libvirt.Domain, match Match) (Found, bool, error) {
	name, err := d.GetName()
	if err != nil {
		return Found{}, false, err
	}
	state, _, err := d.GetState()
	if err != nil {
		return Found{}, false, err
	}
	// The live XML of a running domain shows its current backing chain (after external snapshots).
	raw, err := d.GetXMLDesc(0)
	if err != nil {
		return Found{}, false, err
	}
	var dx libvirtxml.Domain
	if err := dx.Unmarshal(raw); err != nil {
		return Found{}, false, fmt.Errorf("parse domain %s XML: %w", name, err)
	}
	if dx.Devices == nil {
		return Found{}, false, nil
	}
	for _, disk := range dx.Devices.Disks {
		target := ""
		if disk.Target != nil {
			target = disk.Target.Dev
		}
		for _, dk := range diskSources(disk.Source, disk.BackingStore, target) {
			if match(dk) {
				running := state == libvirt.DOMAIN_RUNNING || state == libvirt.DOMAIN_PAUSED ||
					state == libvirt.DOMAIN_BLOCKED || state == libvirt.DOMAIN_PMSUSPENDED
				return Found{Attachment: volume.Attachment{Attached: true, Domain: name, Running: running}, Target: target}, true, nil
			}
		}
	}
	return Found{}, false, nil
}

func diskSources(src *libvirtxml.DomainDiskSource, backing *libvirtxml.DomainDiskBackingStore, target string) []Disk {
	var out []Disk
	for src != nil {
		d := Disk{Target: target}
		if src.File != nil && src.File.File != "" {
			d.File = filepath.Clean(src.File.File)
		}
		if src.Block != nil && src.Block.Dev != "" {
			d.File = filepath.Clean(src.Block.Dev)
		}
		if src.Network != nil && src.Network.Protocol == "rbd" {
			d.RBD = src.Network.Name
		}
		out = append(out, d)
		if backing == nil {
			break
		}
		src, backing = backing.Source, backing.BackingStore
	}
	return out
}

func isNoDomain(err error) bool {
	lerr, ok := err.(libvirt.Error)
	return ok && lerr.Code == libvirt.ERR_NO_DOMAIN
}

// Freeze asks the guest agent of the named domain to freeze its filesystems. It returns a thaw function
// (always non-nil, safe to call once) and, when freezing was impossible, libvirt's message. The snapshot is
// taken either way; the message goes into the record so that nobody claims consistency that was not had.
func Freeze(conn *libvirt.Connect, domain string) (thaw func(), freezeErr string) {
	noop := func() {}
	d, err := conn.LookupDomainByName(domain)
	if err != nil {
		return noop, err.Error()
	}
	if err := d.FSFreeze(nil, 0); err != nil {
		d.Free()
		return noop, err.Error()
	}
	return func() {
		// Thaw errors cannot be fixed here; the guest agent thaws on its own after its timeout.
		_ = d.FSThaw(nil, 0)
		d.Free()
	}, ""
}

// QMP runs a QMP command on the named domain's QEMU and returns its "return" member. It is used only for
// block-node operations libvirt has no API for (internal snapshots of one disk of a running domain).
func QMP(conn *libvirt.Connect, domain, command string, args any) (json.RawMessage, error) {
	d, err := conn.LookupDomainByName(domain)
	if err != nil {
		return nil, fmt.Errorf("domain %s: %w", domain, err)
	}
	defer d.Free()
	req := map[string]any{"execute": command}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	out, err := d.QemuMonitorCommand(string(b), libvirt.DOMAIN_QEMU_MONITOR_COMMAND_DEFAULT)
	if err != nil {
		return nil, fmt.Errorf("qmp %s on %s: %w", command, domain, err)
	}
	var resp struct {
		Return json.RawMessage `json:"return"`
		Error  *struct {
			Class string `json:"class"`
			Desc  string `json:"desc"`
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(out), &resp); err != nil {
		return nil, fmt.Errorf("qmp %s on %s: %w", command, domain, err)
	}
	if resp.Error != nil {
		return nil, fmt.Errorf("qmp %s on %s: %s: %s", command, domain, resp.Error.Class, resp.Error.Desc)
	}
	return resp.Return, nil
}

// Suspend pauses the named domain's vCPUs and returns the function that resumes them. Used to take a
// point-in-time copy of a raw image that has no snapshot mechanism of its own.
func Suspend(conn *libvirt.Connect, domain string) (resume func() error, err error) {
	d, err := conn.LookupDomainByName(domain)
	if err != nil {
		return nil, fmt.Errorf("domain %s: %w", domain, err)
	}
	if err := d.Suspend(); err != nil {
		d.Free()
		return nil, fmt.Errorf("suspend %s: %w", domain, err)
	}
	return func() error {
		defer d.Free()
		return d.Resume()
	}, nil
}
