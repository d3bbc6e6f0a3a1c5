// Package volumetest is the conformance suite every volume.Driver must pass, run against real services (a
// real libvirtd with a QEMU TCG domain, a real Ceph cluster). It owns only test fixtures it creates (volumes
// and transient domains named holdfast-test-*), and removes them when each test ends.
package volumetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"libvirt.org/go/libvirt"

	"github.com/holdfast/holdfast/activities/volume"
	"github.com/holdfast/holdfast/activities/volume/domains"
)

const (
	MiB = int64(1) << 20
	// Size of every test volume: small enough for 2 cores, big enough to span several qcow2 L2 tables and
	// many RBD objects.
	Size = 64 * MiB
)

// Harness adapts one driver (and one flavour of volume, e.g. qcow2 or raw) to the suite.
type Harness struct {
	Driver volume.Driver
	// NewRef returns a Ref for a volume that does not exist yet, unique to the test.
	NewRef func(t *testing.T) volume.Ref
	// DiskXML returns the libvirt <disk> element that attaches vol to a domain as target dev (e.g. "vda").
	DiskXML func(vol volume.Ref, dev string) string
	// LibvirtURI is the libvirt the driver consults (empty: the system daemon).
	LibvirtURI string
	// NoLibvirt says the driver was built without libvirt (every volume detached): the running-domain
	// checks are skipped, even under CI, because a harness with libvirt runs them.
	NoLibvirt bool
}

// RequireService skips the test locally when a service is unavailable, naming the make target that starts
// it, and fails it under CI=true: CI must never pass by skipping.
func RequireService(t testing.TB, err error, service, target string) {
	t.Helper()
	if err == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s unavailable (CI=true): %v", service, err)
	}
	t.Skipf("%s not running: make %s (%v)", service, target, err)
}

// RequireLibvirt checks that libvirtd answers at uri.
func RequireLibvirt(t testing.TB, uri string) {
	t.Helper()
	RequireService(t, LibvirtAnswers(uri), "libvirtd", "services-up-libvirt")
}

// LibvirtAnswers is nil when libvirtd answers at uri.
func LibvirtAnswers(uri string) error {
	conn, err := domains.Open(uri)
	if err == nil {
		_, err = conn.GetLibVersion()
		conn.Close()
	}
	return err
}

// Run runs the whole suite against h.
func Run(t *testing.T, h Harness) {
	t.Run("SnapshotIsPointInTime", func(t *testing.T) { testPointInTime(t, h) })
	t.Run("Rollback", func(t *testing.T) { testRollback(t, h) })
	t.Run("RestoreToNew", func(t *testing.T) { testRestoreToNew(t, h) })
	t.Run("ChangedExtents", func(t *testing.T) { testChanged(t, h) })
	t.Run("InPlaceRestore", func(t *testing.T) { testInPlace(t, h) })
	t.Run("Idempotence", func(t *testing.T) { testIdempotence(t, h) })
	t.Run("RunningDomain", func(t *testing.T) { testRunning(t, h) })
	t.Run("CreateIsExclusive", func(t *testing.T) { testCreateExclusive(t, h) })
	t.Run("DeleteOnlyOwnVolume", func(t *testing.T) { testDeleteOwn(t, h) })
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// model is the expected content of a volume, kept in memory.
type model []byte

// fill writes a pseudo-random pattern to [off, off+n) of both the volume and the model.
func (m model) fill(t *testing.T, w volume.Writer, off, n int64, seed uint64) {
	t.Helper()
	b := pattern(n, seed)
	_, err := w.WriteAt(b, off)
	require.NoError(t, err)
	copy(m[off:], b)
}

func pattern(n int64, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= len(b); i += 8 {
		v := r.Uint64() | 1 // never a zero word: zeros are what "unwritten" looks like
		for k := 0; k < 8; k++ {
			b[i+k] = byte(v >> (8 * k))
		}
	}
	return b
}

func (m model) clone() model { return append(model(nil), m...) }

// create makes a fresh volume holding a few written regions and returns its model. No operation owns it
// (CreatedBy is empty), like a volume registered by the control plane.
func create(t *testing.T, h Harness) (volume.Ref, model) {
	t.Helper()
	return createBy(t, h, "")
}

// createBy is create by operation op (Ref.CreatedBy), which then owns the volume.
func createBy(t *testing.T, h Harness, op string) (volume.Ref, model) {
	t.Helper()
	ctx := ctxFor(t)
	vol := h.NewRef(t)
	vol.CreatedBy = op
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := h.Driver.DeleteVolume(ctx, vol); err != nil {
			t.Logf("cleanup: delete %s: %v", vol, err)
		}
	})
	w, err := h.Driver.CreateVolume(ctx, vol, Size)
	require.NoError(t, err)
	require.Equal(t, Size, w.Size())
	m := make(model, Size)
	m.fill(t, w, 0, 1*MiB, 1)
	m.fill(t, w, 10*MiB+4096, 3*MiB, 2)
	m.fill(t, w, Size-2*MiB, 2*MiB, 3)
	require.NoError(t, w.Close())
	return vol, m
}

func write(t *testing.T, h Harness, vol volume.Ref, m model, off, n int64, seed uint64) {
	t.Helper()
	w, err := h.Driver.OpenWriter(ctxFor(t), vol)
	require.NoError(t, err)
	m.fill(t, w, off, n, seed)
	require.NoError(t, w.Close())
}

// readAll reads a snapshot in odd-sized pieces (to cross cluster/object boundaries) and checks it equals want,
// that bytes outside Allocated are zero, and that reads past the end return io.EOF.
func readAll(t *testing.T, h Harness, vol volume.Ref, snap string, want model) {
	t.Helper()
	ctx := ctxFor(t)
	r, err := h.Driver.OpenSnapshot(ctx, vol, snap)
	require.NoError(t, err)
	defer r.Close()
	require.Equal(t, int64(len(want)), r.Size())
	got := make([]byte, r.Size())
	const piece = 3*MiB + 4097
	for off := int64(0); off < r.Size(); off += piece {
		end := min(off+piece, r.Size())
		n, err := r.ReadAt(got[off:end], off)
		require.Equal(t, int(end-off), n, "read at %d: %v", off, err)
	}
	if !bytes.Equal(want, got) {
		t.Fatalf("snapshot %s of %s differs from the expected contents at byte %d", snap, vol, firstDiff(want, got))
	}
	_, err = r.ReadAt(make([]byte, 1), r.Size())
	require.Error(t, err, "read at the end")

	alloc, err := r.Allocated(ctx)
	require.NoError(t, err)
	checkSorted(t, alloc)
	if uncovered := firstUncovered(want, alloc); uncovered >= 0 {
		t.Fatalf("allocated extents miss non-zero byte %d", uncovered)
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// firstUncovered returns the first non-zero byte of b outside exts, or -1.
func firstUncovered(b []byte, exts []volume.Extent) int64 {
	pos := int64(0)
	check := func(from, to int64) int64 {
		for i := from; i < to; i++ {
			if b[i] != 0 {
				return i
			}
		}
		return -1
	}
	for _, e := range exts {
		if i := check(pos, min(e.Offset, int64(len(b)))); i >= 0 {
			return i
		}
		pos = max(pos, e.End())
	}
	return check(min(pos, int64(len(b))), int64(len(b)))
}

func checkSorted(t *testing.T, exts []volume.Extent) {
	t.Helper()
	for i, e := range exts {
		require.Positive(t, e.Length, "extent %d", i)
		if i > 0 {
			require.GreaterOrEqual(t, e.Offset, exts[i-1].End(), "extents %d and %d overlap or are unsorted", i-1, i)
		}
	}
}

func snapshot(t *testing.T, h Harness, vol volume.Ref, name string) volume.Snapshot {
	t.Helper()
	s, err := h.Driver.CreateSnapshot(ctxFor(t), vol, name)
	require.NoError(t, err)
	require.Equal(t, name, s.Name)
	return s
}

func testPointInTime(t *testing.T, h Harness) {
	vol, m := create(t, h)
	s := snapshot(t, h, vol, "s1")
	require.Equal(t, volume.ConsistencyOffline, s.Consistency)
	require.Equal(t, Size, s.Size)
	before := m.clone()
	write(t, h, vol, m, 512*1024, 2*MiB, 10)
	write(t, h, vol, m, 20*MiB, 1*MiB, 11)
	readAll(t, h, vol, "s1", before)

	list, err := h.Driver.ListSnapshots(ctxFor(t), vol)
	require.NoError(t, err)
	require.Len(t, list, 1)
	require.Equal(t, "s1", list[0].Name)
	require.Equal(t, volume.ConsistencyOffline, list[0].Consistency)
	require.False(t, list[0].CreatedAt.IsZero())
}

func testRollback(t *testing.T, h Harness) {
	vol, m := create(t, h)
	snapshot(t, h, vol, "s1")
	before := m.clone()
	write(t, h, vol, m, 0, 5*MiB, 20)
	snapshot(t, h, vol, "s2")
	require.NoError(t, h.Driver.RollbackSnapshot(ctxFor(t), vol, "s1"))
	snapshot(t, h, vol, "after")
	readAll(t, h, vol, "after", before)
	readAll(t, h, vol, "s2", m) // later snapshots survive a rollback
	err := h.Driver.RollbackSnapshot(ctxFor(t), vol, "missing")
	require.ErrorIs(t, err, volume.ErrNotFound)
}

func testRestoreToNew(t *testing.T, h Harness) {
	vol, m := create(t, h)
	snapshot(t, h, vol, "s1")
	want := m.clone()
	write(t, h, vol, m, 0, 1*MiB, 30)
	dst := h.NewRef(t)
	dst.CreatedBy = "op-restore-1"
	t.Cleanup(func() { _ = h.Driver.DeleteVolume(context.Background(), dst) })
	require.NoError(t, h.Driver.CreateVolumeFromSnapshot(ctxFor(t), vol, "s1", dst))
	// Idempotent: a retry of the operation that created it reuses its volume.
	require.NoError(t, h.Driver.CreateVolumeFromSnapshot(ctxFor(t), vol, "s1", dst))
	snapshot(t, h, dst, "check")
	readAll(t, h, dst, "check", want)

	// Restore-to-new from a stream (a backup): CreateVolume + WriteAt.
	dst2 := h.NewRef(t)
	dst2.CreatedBy = "op-restore-2"
	t.Cleanup(func() { _ = h.Driver.DeleteVolume(context.Background(), dst2) })
	w, err := h.Driver.CreateVolume(ctxFor(t), dst2, Size)
	require.NoError(t, err)
	fresh := make(model, Size)
	fresh.fill(t, w, 7*MiB, 9*MiB+512, 31)
	require.NoError(t, w.Close())
	snapshot(t, h, dst2, "check")
	readAll(t, h, dst2, "check", fresh)

	// Even its creator cannot take it at another size.
	_, err = h.Driver.CreateVolume(ctxFor(t), dst2, Size*2)
	require.ErrorIs(t, err, volume.ErrExists)
}

// testCreateExclusive: a volume is created only where nothing exists, and an existing one is reused only by
// a retry of the operation that created it (the same Ref.CreatedBy). A restore aimed at a neighbour's volume
// must neither overwrite nor adopt it, whatever its size.
func testCreateExclusive(t *testing.T, h Harness) {
	ctx := ctxFor(t)
	vol, m := createBy(t, h, "op-neighbour")
	registered, mr := create(t, h) // created by no operation, as a registered volume is
	src, _ := create(t, h)
	snapshot(t, h, src, "s1")

	for _, target := range []volume.Ref{vol, registered} {
		for _, by := range []string{"op-intruder", ""} {
			intruder := target
			intruder.CreatedBy = by
			for _, size := range []int64{Size, 2 * Size} {
				w, err := h.Driver.CreateVolume(ctx, intruder, size)
				if err == nil {
					w.Close()
				}
				require.ErrorIs(t, err, volume.ErrExists, "CreateVolume(%s by %q, %d) over an existing volume", target, by, size)
			}
			err := h.Driver.CreateVolumeFromSnapshot(ctx, src, "s1", intruder)
			require.ErrorIs(t, err, volume.ErrExists, "CreateVolumeFromSnapshot onto %s by %q", target, by)
		}
	}
	// Nothing was written to either.
	snapshot(t, h, vol, "check")
	readAll(t, h, vol, "check", m)
	snapshot(t, h, registered, "check")
	readAll(t, h, registered, "check", mr)

	// The creating operation's retry reuses its volume, at the size it created.
	w, err := h.Driver.CreateVolume(ctx, vol, Size)
	require.NoError(t, err, "a retry of the creating operation")
	require.Equal(t, Size, w.Size())
	require.NoError(t, w.Close())
	_, err = h.Driver.CreateVolume(ctx, vol, 2*Size)
	require.ErrorIs(t, err, volume.ErrExists)
}

// testDeleteOwn: DeleteVolume with Ref.CreatedBy deletes only a volume that operation created (the
// compensation of a failed restore); anything else is left alone with ErrNotOwned. Without CreatedBy it
// deletes whatever volume is there.
func testDeleteOwn(t *testing.T, h Harness) {
	ctx := ctxFor(t)
	vol, m := createBy(t, h, "op-a")
	registered, _ := create(t, h)
	for _, target := range []volume.Ref{vol, registered} {
		other := target
		other.CreatedBy = "op-b"
		err := h.Driver.DeleteVolume(ctx, other)
		require.ErrorIs(t, err, volume.ErrNotOwned, "DeleteVolume(%s) by an operation that did not create it", target)
		size, err := h.Driver.Size(ctx, target)
		require.NoError(t, err, "the volume survives a refused delete")
		require.Equal(t, Size, size)
	}
	snapshot(t, h, vol, "check")
	readAll(t, h, vol, "check", m)

	// Its creator deletes it (idempotently), snapshots included.
	require.NoError(t, h.Driver.DeleteVolume(ctx, vol))
	require.NoError(t, h.Driver.DeleteVolume(ctx, vol))
	_, err := h.Driver.Size(ctx, vol)
	require.ErrorIs(t, err, volume.ErrNotFound)

	// Another operation then creates a volume at the same place: a late compensation of the first one (a
	// retried delete) must not take it.
	again := vol
	again.CreatedBy = "op-c"
	w, err := h.Driver.CreateVolume(ctx, again, Size)
	require.NoError(t, err)
	require.NoError(t, w.Close())
	t.Cleanup(func() { _ = h.Driver.DeleteVolume(context.Background(), again) })
	list, err := h.Driver.ListSnapshots(ctx, again)
	require.NoError(t, err)
	require.Empty(t, list, "a new volume at a deleted volume's place starts without its snapshots")
	require.ErrorIs(t, h.Driver.DeleteVolume(ctx, vol), volume.ErrNotOwned)
	_, err = h.Driver.Size(ctx, again)
	require.NoError(t, err)
	require.NoError(t, h.Driver.DeleteVolume(ctx, again))
}

func testChanged(t *testing.T, h Harness) {
	ctx := ctxFor(t)
	vol, m := create(t, h)
	snapshot(t, h, vol, "s1")
	old := m.clone()
	write(t, h, vol, m, 33*MiB+100, 300*1024, 40)
	write(t, h, vol, m, 50*MiB, 4096, 41)
	snapshot(t, h, vol, "s2")
	r, err := h.Driver.OpenSnapshot(ctx, vol, "s2")
	require.NoError(t, err)
	defer r.Close()
	changed, err := r.Changed(ctx, "s1")
	require.NoError(t, err)
	checkSorted(t, changed)
	var total int64
	for _, e := range changed {
		total += e.Length
	}
	// Every differing byte is covered...
	diff := make([]byte, Size)
	for i := range diff {
		if old[i] != m[i] {
			diff[i] = 1
		}
	}
	if i := firstUncovered(diff, changed); i >= 0 {
		t.Fatalf("changed extents %v miss changed byte %d", changed, i)
	}
	// ...and little change gives few extents (the granularity is a cluster or an object, at most 4 MiB).
	require.LessOrEqual(t, total, 12*MiB, "changed extents %v", changed)

	_, err = r.Changed(ctx, "no-such-parent")
	require.ErrorIs(t, err, volume.ErrChangesUnavailable)
}

func testInPlace(t *testing.T, h Harness) {
	vol, m := create(t, h)
	write(t, h, vol, m, 0, Size, 50)
	snapshot(t, h, vol, "s1")
	readAll(t, h, vol, "s1", m)
	w, err := h.Driver.OpenWriter(ctxFor(t), vol)
	require.NoError(t, err)
	_, err = w.WriteAt([]byte{1}, Size)
	require.Error(t, err, "a write past the end must fail")
	require.NoError(t, w.Close())
}

func testIdempotence(t *testing.T, h Harness) {
	ctx := ctxFor(t)
	vol, _ := create(t, h)
	a := snapshot(t, h, vol, "s1")
	b := snapshot(t, h, vol, "s1")
	require.Equal(t, a.Consistency, b.Consistency)
	list, err := h.Driver.ListSnapshots(ctx, vol)
	require.NoError(t, err)
	require.Len(t, list, 1)
	require.NoError(t, h.Driver.DeleteSnapshot(ctx, vol, "s1"))
	require.NoError(t, h.Driver.DeleteSnapshot(ctx, vol, "s1"))
	list, err = h.Driver.ListSnapshots(ctx, vol)
	require.NoError(t, err)
	require.Empty(t, list)
	_, err = h.Driver.OpenSnapshot(ctx, vol, "s1")
	require.ErrorIs(t, err, volume.ErrNotFound)

	size, err := h.Driver.Size(ctx, vol)
	require.NoError(t, err)
	require.Equal(t, Size, size)
	require.NoError(t, h.Driver.DeleteVolume(ctx, vol))
	require.NoError(t, h.Driver.DeleteVolume(ctx, vol))
	_, err = h.Driver.Size(ctx, vol)
	require.ErrorIs(t, err, volume.ErrNotFound)
	_, err = h.Driver.ListSnapshots(ctx, vol)
	require.ErrorIs(t, err, volume.ErrNotFound)
	require.NoError(t, h.Driver.DeleteSnapshot(ctx, vol, "s1"), "deleting a snapshot of a missing volume")
}

func testRunning(t *testing.T, h Harness) {
	if h.NoLibvirt {
		t.Skip("driver without libvirt: the libvirt harness runs the running-domain checks")
	}
	RequireLibvirt(t, h.LibvirtURI)
	ctx := ctxFor(t)
	vol, m := create(t, h)
	att, err := h.Driver.Attachment(ctx, vol)
	require.NoError(t, err)
	require.Equal(t, volume.Attachment{}, att)

	dom := StartDomain(t, h.LibvirtURI, h.DiskXML(vol, "vda"))
	att, err = h.Driver.Attachment(ctx, vol)
	require.NoError(t, err)
	require.Equal(t, volume.Attachment{Attached: true, Domain: dom.Name, Running: true}, att)

	_, err = h.Driver.OpenWriter(ctx, vol)
	require.ErrorIs(t, err, volume.ErrAttachedRunning)
	var are *volume.AttachedRunningError
	require.ErrorAs(t, err, &are)
	require.Equal(t, dom.Name, are.Domain)
	require.ErrorIs(t, h.Driver.RollbackSnapshot(ctx, vol, "none"), volume.ErrNotFound)
	require.ErrorIs(t, h.Driver.DeleteVolume(ctx, vol), volume.ErrAttachedRunning)

	// No guest agent: the snapshot is taken, recorded crash-consistent with libvirt's reason.
	s := snapshot(t, h, vol, "live1")
	require.Equal(t, volume.ConsistencyCrash, s.Consistency)
	require.Contains(t, strings.ToLower(s.FreezeError), "agent")
	require.ErrorIs(t, h.Driver.RollbackSnapshot(ctx, vol, "live1"), volume.ErrAttachedRunning)

	// The guest writes after the snapshot: the snapshot keeps the old bytes, a new one sees the new.
	old := m.clone()
	dom.Write(t, "vda", 8*MiB, 2*MiB, 0x77)
	for i := 8 * MiB; i < 10*MiB; i++ {
		m[i] = 0x77
	}
	readAll(t, h, vol, "live1", old)
	snapshot(t, h, vol, "live2")
	readAll(t, h, vol, "live2", m)
	require.NoError(t, h.Driver.DeleteSnapshot(ctx, vol, "live1"))
	list, err := h.Driver.ListSnapshots(ctx, vol)
	require.NoError(t, err)
	require.Len(t, list, 1)

	dom.Stop(t)
	att, err = h.Driver.Attachment(ctx, vol)
	require.NoError(t, err)
	require.False(t, att.Running, "attachment after the domain stopped: %+v", att)
	w, err := h.Driver.OpenWriter(ctx, vol)
	require.NoError(t, err)
	require.NoError(t, w.Close())
}

// Domain is a transient QEMU (TCG) domain that boots nothing and stays running with the test disk attached.
type Domain struct {
	Name string
	uri  string
	dom  *libvirt.Domain
	conn *libvirt.Connect
}

// StartDomain starts a transient domain with disk (a <disk> element) and stops it when the test ends.
func StartDomain(t *testing.T, uri, disk string) *Domain {
	t.Helper()
	conn, err := domains.Open(uri)
	RequireService(t, err, "libvirtd", "services-up-libvirt")
	name, xml := domainXML(disk)
	dom, err := conn.DomainCreateXML(xml, 0)
	require.NoError(t, err, "start domain:\n%s", xml)
	d := &Domain{Name: name, uri: uri, dom: dom, conn: conn}
	t.Cleanup(func() { d.Stop(t); conn.Close() })
	return d
}

// DefineDomain defines (without starting) a persistent domain with disk, as a panel attaching a volume to a
// stopped VM does; Start starts it. It is stopped and undefined when the test ends.
func DefineDomain(t *testing.T, uri, disk string) *Domain {
	t.Helper()
	conn, err := domains.Open(uri)
	RequireService(t, err, "libvirtd", "services-up-libvirt")
	name, xml := domainXML(disk)
	dom, err := conn.DomainDefineXML(xml)
	require.NoError(t, err, "define domain:\n%s", xml)
	d := &Domain{Name: name, uri: uri, dom: dom, conn: conn}
	t.Cleanup(func() {
		d.Stop(t)
		if def, err := conn.LookupDomainByName(name); err == nil {
			_ = def.Undefine()
			def.Free()
		}
		conn.Close()
	})
	return d
}

// Start starts a defined domain.
func (d *Domain) Start(t *testing.T) {
	t.Helper()
	require.NoError(t, d.dom.Create(), "start domain %s", d.Name)
}

func domainXML(disk string) (name, xml string) {
	name = fmt.Sprintf("holdfast-test-%d-%d", os.Getpid(), rand.Uint32())
	return name, fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    %s
    <controller type='usb' model='none'/><memballoon model='none'/>
  </devices>
</domain>`, name, disk)
}

// Write makes the running guest's disk dev (target name) see len bytes of value at off, through QEMU's own
// block layer (qemu-io in the monitor): the way a guest would, without needing a guest OS.
func (d *Domain) Write(t *testing.T, dev string, off, n int64, value byte) {
	t.Helper()
	alias := map[string]string{"vda": "virtio-disk0", "vdb": "virtio-disk1"}[dev]
	cmd := fmt.Sprintf(`qemu-io -d /machine/peripheral/%s/virtio-backend "write -P 0x%x %d %d"`, alias, value, off, n)
	out, err := d.dom.QemuMonitorCommand(cmd, libvirt.DOMAIN_QEMU_MONITOR_COMMAND_HMP)
	require.NoError(t, err)
	require.NotContains(t, out, "rror", "qemu-io: %s", out)
	cmd = fmt.Sprintf(`qemu-io -d /machine/peripheral/%s/virtio-backend "flush"`, alias)
	_, err = d.dom.QemuMonitorCommand(cmd, libvirt.DOMAIN_QEMU_MONITOR_COMMAND_HMP)
	require.NoError(t, err)
}

// Checkpoint asks libvirt for a checkpoint (a dirty bitmap per disk) named name of the running domain.
func (d *Domain) Checkpoint(name string) error {
	cp, err := d.dom.CreateCheckpointXML(fmt.Sprintf("<domaincheckpoint><name>%s</name></domaincheckpoint>", name), 0)
	if err == nil {
		_ = cp.Free()
	}
	return err
}

// Stop destroys the domain (idempotent).
func (d *Domain) Stop(t *testing.T) {
	if d.dom == nil {
		return
	}
	if err := d.dom.Destroy(); err != nil {
		var lerr libvirt.Error
		if !errors.As(err, &lerr) || lerr.Code != libvirt.ERR_NO_DOMAIN {
			t.Logf("destroy %s: %v", d.Name, err)
		}
	}
	d.dom.Free()
	d.dom = nil
}
