package rbd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"syscall"

	"github.com/ceph/go-ceph/rados"
	librbd "github.com/ceph/go-ceph/rbd"

	"github.com/holdfast/holdfast/activities/volume"
)

// Ownership. An image records the operation that created it (Ref.CreatedBy) in its metadata under
// createdByKey. CreateVolume and CreateVolumeFromSnapshot reuse an existing image only when that record
// names their own operation (a retry), and DeleteVolume with CreatedBy deletes only such an image: a restore
// aimed at a neighbour's image neither overwrites, adopts nor, in its compensation, deletes it.
//
// librbd creates an image (or a clone) only under a name that is free, atomically, so whoever creates it
// knows it did; the record is written right after. It names the image's id as well as the operation,
// because librbd copies a parent's metadata into a clone: a record copied from the source names the source's
// id and counts for nothing. An image without a valid record is nobody's, so a crash between creating an
// image and recording its creator never lets any operation claim it; the price is that this one image is
// then refused to the retry too (ErrExists) and left for an operator. (Building under a temporary name and
// renaming is no way out: librbd's rename is not exclusive when two run at once.)
const (
	createdByKey = "holdfast.created_by"
	recordPrefix = "holdfast." // every record this driver keeps in an image's metadata
)

// creation is the value recorded under createdByKey.
type creation struct {
	CreatedBy string `json:"created_by"`
	ImageID   string `json:"image_id"`
}

// isErrno says whether err carries the (negative) errno code from librbd.
func isErrno(err error, code int) bool {
	var c interface{ ErrorCode() int }
	return errors.As(err, &c) && c.ErrorCode() == code
}

// isENOENT reports librbd's "does not exist" in either of the forms go-ceph returns it.
func isENOENT(err error) bool {
	return errors.Is(err, librbd.ErrNotFound) || errors.Is(err, librbd.ErrNotExist)
}

// creator returns the operation recorded as img's creator, "" when no valid record names one.
func creator(img *librbd.Image) (string, error) {
	raw, err := img.GetMetadata(createdByKey)
	if isENOENT(err) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	id, err := img.GetId()
	if err != nil {
		return "", err
	}
	var c creation
	if json.Unmarshal([]byte(raw), &c) != nil || c.ImageID != id {
		return "", nil // not written for this image: copied from a clone's parent, or not ours at all
	}
	return c.CreatedBy, nil
}

// reusable says whether this call may take vol's existing image: nil when vol.CreatedBy created it and it
// has size bytes; an error wrapping ErrNotFound when there is no image; ErrExists for any other image.
func (d *Driver) reusable(vol volume.Ref, size int64) error {
	img, cur, err := d.openSized(vol, "", true)
	if err != nil {
		return err
	}
	defer img.Close()
	by, err := creator(img)
	switch {
	case err != nil:
		return fmt.Errorf("read the creator of %s: %w", vol, err)
	case vol.CreatedBy == "" || by != vol.CreatedBy:
		return fmt.Errorf("%s exists and was not created by this operation: %w", vol, volume.ErrExists)
	case cur != size:
		return fmt.Errorf("%s is %d bytes, not %d: %w", vol, cur, size, volume.ErrExists)
	}
	return nil
}

// createExclusive makes vol's image of size bytes with build (CreateImage or a clone under vol.Image, which
// librbd refuses when the name is taken) and records its creator, unless this operation already did (see
// reusable). Any other image under the name is ErrExists and left untouched.
func (d *Driver) createExclusive(vol volume.Ref, size int64, build func(io *rados.IOContext) error) error {
	io, err := d.ioctx(vol)
	if err != nil {
		return err
	}
	if err := d.reusable(vol, size); !errors.Is(err, volume.ErrNotFound) {
		return err // nil: this operation's image, reused
	}
	if err := build(io); err != nil {
		if !errors.Is(err, librbd.ErrExist) {
			return fmt.Errorf("create %s: %w", vol, err)
		}
		// Created since the check: by a concurrent attempt of this operation that recorded it, or not ours.
		if d.reusable(vol, size) == nil {
			return nil
		}
		return fmt.Errorf("create %s: %w", vol, volume.ErrExists)
	}
	if err := d.record(vol); err != nil {
		// This call created it: remove it rather than leave an image no one may claim.
		if rmErr := removeImage(io, vol.Image); rmErr != nil {
			err = errors.Join(err, rmErr)
		}
		return err
	}
	return nil
}

// record writes vol's creator into the image this call just created, and removes every other record of
// Holdfast's a clone inherited from its parent (its creator, its snapshots' records).
func (d *Driver) record(vol volume.Ref) error {
	img, err := d.open(vol, "", false)
	if err != nil {
		return fmt.Errorf("create %s: %w", vol, err)
	}
	defer img.Close()
	if vol.CreatedBy != "" {
		id, err := img.GetId()
		if err != nil {
			return fmt.Errorf("create %s: %w", vol, err)
		}
		rec, _ := json.Marshal(creation{CreatedBy: vol.CreatedBy, ImageID: id})
		if err := img.SetMetadata(createdByKey, string(rec)); err != nil {
			return fmt.Errorf("create %s: record its creator: %w", vol, err)
		}
	}
	md, err := img.ListMetadata()
	if err != nil {
		return fmt.Errorf("create %s: %w", vol, err)
	}
	for k := range md {
		if strings.HasPrefix(k, recordPrefix) && (k != createdByKey || vol.CreatedBy == "") {
			if err := img.RemoveMetadata(k); err != nil && !isENOENT(err) {
				return fmt.Errorf("create %s: drop inherited %s: %w", vol, k, err)
			}
		}
	}
	return nil
}

// removeImage removes an image that has no snapshots; a missing one is a success.
func removeImage(io *rados.IOContext, name string) error {
	if err := librbd.RemoveImage(io, name); err != nil && !isENOENT(err) {
		return fmt.Errorf("remove %s: %w", name, err)
	}
	return nil
}

// CreateVolume creates vol's image exclusively (see createExclusive) and opens it for writing.
func (d *Driver) CreateVolume(ctx context.Context, vol volume.Ref, size int64) (volume.Writer, error) {
	if size <= 0 {
		return nil, fmt.Errorf("create %s: size %d", vol, size)
	}
	if err := d.createExclusive(vol, size, func(io *rados.IOContext) error {
		opts := librbd.NewRbdImageOptions()
		defer opts.Destroy()
		return librbd.CreateImage(io, vol.Image, uint64(size), opts)
	}); err != nil {
		return nil, err
	}
	return d.OpenWriter(ctx, vol)
}

// CreateVolumeFromSnapshot clones the snapshot inside the cluster, exclusively (see createExclusive), and
// flattens the clone, so the new volume shares nothing with its source (the snapshot can be deleted later)
// and no byte crosses the network to us.
func (d *Driver) CreateVolumeFromSnapshot(ctx context.Context, src volume.Ref, snapshot string, dst volume.Ref) error {
	r, err := d.OpenSnapshot(ctx, src, snapshot)
	if err != nil {
		return err
	}
	size := r.Size()
	r.Close()
	srcIO, err := d.ioctx(src)
	if err != nil {
		return err
	}
	name := fmt.Sprintf("%s@%s", src, snapshot)
	err = d.createExclusive(dst, size, func(dstIO *rados.IOContext) error {
		return d.withSnapshot(src, snapshot, func(snap *librbd.Snapshot) error {
			return cloneProtected(snap, name, func() error {
				opts := librbd.NewRbdImageOptions()
				defer opts.Destroy()
				return librbd.CloneImage(srcIO, src.Image, snapshot, dstIO, dst.Image, opts)
			})
		})
	})
	if err != nil {
		// A loser of a race for dst may have protected the snapshot after the winner unprotected it.
		_ = d.withSnapshot(src, snapshot, unprotect)
		return err
	}
	clone, err := d.open(dst, "", false)
	if err != nil {
		return err
	}
	// Flatten of an image without a parent (a retry after it completed) is a no-op error: ignore that case.
	if _, perr := clone.GetParent(); perr == nil {
		if err := clone.Flatten(); err != nil {
			clone.Close()
			return fmt.Errorf("flatten %s: %w", dst, err)
		}
	}
	clone.Close()
	return d.withSnapshot(src, snapshot, unprotect)
}

// withSnapshot runs fn on snapshot of src through a read-write handle of src that is open only meanwhile,
// holding d.protection: this agent never has two handles of a restore's source open at once, nor protects,
// clones or unprotects concurrently. (Restores racing on one source, each holding its own read-write handle
// while protecting, cloning and flattening, aborted the process inside librbd now and then:
// std::system_error, EINVAL, on a librados thread.) The flatten, the long part, runs outside it.
func (d *Driver) withSnapshot(src volume.Ref, snapshot string, fn func(*librbd.Snapshot) error) error {
	d.protection.Lock()
	defer d.protection.Unlock()
	img, err := d.open(src, "", false)
	if err != nil {
		return err
	}
	defer img.Close()
	return fn(img.GetSnapshot(snapshot))
}

// protection is what cloneProtected needs of a *librbd.Snapshot.
type protection interface {
	IsProtected() (bool, error)
	Protect() error
}

// cloneAttempts bounds how often a clone is retried after its parent snapshot was unprotected between
// protecting it and cloning it (by another host's restore from the same snapshot finishing then).
const cloneAttempts = 5

// cloneProtected protects snap (clone format 1 needs a protected parent) and runs clone. Protecting races
// with other restores from the same snapshot: librbd answers EBUSY to a second protect, and an unprotect can
// slip in before the clone (EINVAL); both are taken as "try again", a bounded number of times.
func cloneProtected(snap protection, name string, clone func() error) error {
	var err error
	for range cloneAttempts {
		if p, perr := snap.IsProtected(); perr != nil {
			return fmt.Errorf("protect %s: %w", name, perr)
		} else if !p {
			if perr := snap.Protect(); perr != nil {
				if p, _ := snap.IsProtected(); !p {
					return fmt.Errorf("protect %s: %w", name, perr)
				}
			}
		}
		err = clone()
		if !isErrno(err, -int(syscall.EINVAL)) {
			return err
		}
		if p, _ := snap.IsProtected(); p {
			return err // invalid for another reason than a lost protection
		}
	}
	return err
}

// unprotect lifts the protection of a snapshot a restore-to-new protected, once its clone is flattened.
// Other clones may still depend on it (EBUSY): then it stays protected until they are flattened and their
// restores unprotect it. Run through withSnapshot, so that this agent never unprotects between another
// restore's protect and clone.
func unprotect(snap *librbd.Snapshot) error {
	if p, err := snap.IsProtected(); err == nil && p {
		_ = snap.Unprotect()
	}
	return nil
}

// DeleteVolume removes the image and its snapshots. With vol.CreatedBy set (the compensation of the
// operation that created it) it removes only an image that operation created, else fails with ErrNotOwned.
//
// The creator is checked on an open handle that stays open until the snapshots are gone; the image is then
// removed by name, as librbd only can, so an image removed and recreated by someone else in that instant
// could be taken for it. Operations on one volume are serialised above the driver, which rules that out.
func (d *Driver) DeleteVolume(ctx context.Context, vol volume.Ref) error {
	io, err := d.ioctx(vol)
	if err != nil {
		return err
	}
	img, err := d.open(vol, "", false)
	if errors.Is(err, volume.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	err = d.deletable(img, vol)
	if err == nil {
		err = d.deleteSnapshots(img, vol)
	}
	img.Close()
	if err != nil {
		return err
	}
	// An instant restore's image still importing is removed by aborting the import (librbd refuses to
	// remove an image being migrated).
	if aborted, err := d.abortImport(vol); aborted || err != nil {
		return err
	}
	return removeImage(io, vol.Image)
}

// deletable refuses an image vol.CreatedBy (when set) did not create, or that a running domain or another
// client uses.
func (d *Driver) deletable(img *librbd.Image, vol volume.Ref) error {
	if vol.CreatedBy != "" {
		by, err := creator(img)
		if err != nil {
			return fmt.Errorf("read the creator of %s: %w", vol, err)
		}
		if by != vol.CreatedBy {
			return fmt.Errorf("delete %s: %w", vol, volume.ErrNotOwned)
		}
	}
	return d.refuseRunning(vol)
}

func (d *Driver) deleteSnapshots(img *librbd.Image, vol volume.Ref) error {
	snaps, err := d.list(img)
	if err != nil {
		return fmt.Errorf("delete snapshots of %s: %w", vol, err)
	}
	for _, s := range snaps {
		sn := img.GetSnapshot(s.Name)
		if p, _ := sn.IsProtected(); p {
			_ = sn.Unprotect()
		}
		if err := sn.Remove(); err != nil {
			return fmt.Errorf("delete snapshots of %s: %w", vol, err)
		}
	}
	return nil
}
