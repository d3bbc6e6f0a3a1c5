package rbd

import (
	"context"
	"errors"
	"fmt"

	"github.com/holdfast/holdfast/activities/volume"
	"github.com/holdfast/holdfast/activities/volume/domains"
)

// usage is who uses an image now.
type usage struct {
	// local is the local libvirt's answer: the domain of this host that has the image as a disk (zero
	// without libvirt). It is the only one whose guest can be frozen.
	local domains.Found
	// remote describes a client of the cluster, other than this driver, that has the image open for writing
	// or holds a lock on it; "" when there is none. A VM on another hypervisor is seen only here.
	remote string
}

// attachment is what Attachment reports: the local domain when it runs, else any other client of the
// cluster as a running user (Domain then describes the client, there is no domain name to give).
func (u usage) attachment() volume.Attachment {
	if u.local.Running || u.remote == "" {
		return u.local.Attachment
	}
	return volume.Attachment{Attached: true, Running: true, Domain: u.remote}
}

// usage asks, live, the local libvirt and then the cluster who uses vol.
func (d *Driver) usage(vol volume.Ref) (usage, error) {
	var u usage
	if d.cfg.LibvirtURI != NoLibvirt {
		conn, err := domains.Open(d.cfg.LibvirtURI)
		if err != nil {
			return usage{}, err
		}
		name := vol.Pool + "/" + vol.Image
		u.local, err = domains.Find(conn, func(dk domains.Disk) bool { return dk.RBD == name })
		conn.Close()
		if err != nil {
			return usage{}, err
		}
		if u.local.Running {
			return u, nil // its QEMU is a cluster client too: asking the cluster would say the same
		}
	}
	users, err := d.clusterUsers(vol)
	if err != nil {
		return usage{}, err
	}
	if len(users) > 0 {
		u.remote = users[0]
	}
	return u, nil
}

// clusterUsers describes the clients of the cluster that use vol's image, other than this driver: every
// client watching the image header (librbd registers a watch when it opens an image read-write, as QEMU does
// for a disk, and krbd when it maps one) and every holder of a lock on it (the exclusive lock a writer takes,
// or an advisory lock). A lock counts without a watch: its owner may be a writer whose session lapsed, and
// the driver never guesses that a silent client is gone. Read-only users hold neither and do not count.
//
// The driver's own connection is left out, by its instance id: the inspection opens the image read-only,
// which registers no watch, and a handle the driver itself holds (the head a rollback or a snapshot opened
// read-write, a restore's writer) is not another user. Operations on one volume are serialised above the
// driver, so no other operation of this driver can be writing to it meanwhile. A missing image has no users.
func (d *Driver) clusterUsers(vol volume.Ref) ([]string, error) {
	img, err := d.open(vol, "", true)
	if errors.Is(err, volume.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer img.Close()
	self := d.conn.GetInstanceID()
	watchers, err := img.ListWatchers()
	if err != nil {
		return nil, fmt.Errorf("list watchers of %s: %w", vol, err)
	}
	var users []string
	for _, w := range watchers {
		if uint64(w.Id) != self {
			users = append(users, fmt.Sprintf("rbd client client.%d at %s", w.Id, w.Addr))
		}
	}
	// A fresh handle: librbd answers lockers from what it read when the image was opened.
	_, lockers, err := img.ListLockers()
	if err != nil {
		return nil, fmt.Errorf("list lockers of %s: %w", vol, err)
	}
	me := fmt.Sprintf("client.%d", self)
	for _, l := range lockers {
		if l.Client != me {
			users = append(users, fmt.Sprintf("rbd client %s at %s (holds a lock)", l.Client, l.Addr))
		}
	}
	return users, nil
}

// Attachment reports the local domain that has the image as a disk or, when none runs, any other client of
// the cluster using it (a VM on another host) as a running user.
func (d *Driver) Attachment(ctx context.Context, vol volume.Ref) (volume.Attachment, error) {
	if _, err := d.ioctx(vol); err != nil {
		return volume.Attachment{}, err
	}
	u, err := d.usage(vol)
	return u.attachment(), err
}

// refuseRunning refuses, with ErrAttachedRunning, a volume that a running domain of this host or any other
// client of the cluster uses.
func (d *Driver) refuseRunning(vol volume.Ref) error {
	u, err := d.usage(vol)
	if err != nil {
		return err
	}
	if a := u.attachment(); a.Running {
		return &volume.AttachedRunningError{Volume: vol, Domain: a.Domain}
	}
	return nil
}
