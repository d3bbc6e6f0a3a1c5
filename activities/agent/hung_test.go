package agent_test

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/activities/agent"
	"github.com/holdfast/holdfast/activities/volume"
)

// hungDriver is a hypervisor whose every call hangs: it ignores ctx and returns only when the test ends,
// as a libvirt call on a wedged daemon or a read from a dead NFS server would.
type hungDriver struct {
	volume.Driver // nil: a method not overridden here is never called by the activities under test
	entered       chan string
	release       chan struct{}
}

func newHungDriver(t *testing.T) *hungDriver {
	d := &hungDriver{entered: make(chan string, 16), release: make(chan struct{})}
	t.Cleanup(func() { close(d.release) })
	return d
}

func (d *hungDriver) hang(method string) error {
	d.entered <- method
	<-d.release
	return errors.New("released at the end of the test")
}

func (d *hungDriver) Type() volume.Type { return volume.TypeFile }
func (d *hungDriver) Size(context.Context, volume.Ref) (int64, error) {
	return 0, d.hang("Size")
}
func (d *hungDriver) CreateSnapshot(context.Context, volume.Ref, string) (volume.Snapshot, error) {
	return volume.Snapshot{}, d.hang("CreateSnapshot")
}
func (d *hungDriver) DeleteSnapshot(context.Context, volume.Ref, string) error {
	return d.hang("DeleteSnapshot")
}
func (d *hungDriver) RollbackSnapshot(context.Context, volume.Ref, string) error {
	return d.hang("RollbackSnapshot")
}
func (d *hungDriver) CreateVolumeFromSnapshot(context.Context, volume.Ref, string, volume.Ref) error {
	return d.hang("CreateVolumeFromSnapshot")
}
func (d *hungDriver) DeleteVolume(context.Context, volume.Ref) error { return d.hang("DeleteVolume") }
func (d *hungDriver) Attachment(context.Context, volume.Ref) (volume.Attachment, error) {
	return volume.Attachment{}, d.hang("Attachment")
}

// TestHungHypervisorCallEndsOnCancellation: every hypervisor activity whose driver call hangs (ignoring ctx)
// heartbeats while it waits and returns a cancellation promptly when the operation is aborted, leaving the
// stuck call behind (logged). Without this an abort or deadline waits for the activity's StartToClose.
func TestHungHypervisorCallEndsOnCancellation(t *testing.T) {
	defer agent.SetCallHeartbeatEvery(20 * time.Millisecond)()
	dir := t.TempDir()
	vol := activities.VolumeRef{Type: "file", Path: filepath.Join(dir, "vol.raw")}
	target := activities.VolumeRef{Type: "file", Path: filepath.Join(dir, "new.raw"), CreatedBy: "op-1"}
	snap := activities.SnapshotRef{VolumeID: "vol1", Volume: vol, SnapshotID: "s1"}
	for _, c := range []struct {
		activity, method string
		in               any
	}{
		{activities.CreateSnapshotName, "CreateSnapshot", activities.SnapshotInput{VolumeID: "vol1", Volume: vol, SnapshotID: "s1"}},
		{activities.DeleteSnapshotName, "DeleteSnapshot", snap},
		{activities.RollbackSnapshotName, "RollbackSnapshot", snap},
		{activities.CloneSnapshotName, "CreateVolumeFromSnapshot", activities.CloneSnapshotInput{SourceVolumeID: "vol1",
			Source: vol, SnapshotID: "s1", TargetVolumeID: "vol2", Target: target}},
		{activities.DeleteVolumeName, "DeleteVolume", activities.DeleteVolumeInput{VolumeID: "vol2", Volume: target}},
		{activities.InspectVolumeName, "Size", activities.AttachmentInput{VolumeID: "vol1", Volume: vol}},
		{activities.AttachmentName, "Attachment", activities.AttachmentInput{VolumeID: "vol1", Volume: vol}},
	} {
		t.Run(c.activity, func(t *testing.T) {
			drv := newHungDriver(t)
			logs := &syncBuffer{}
			acts := agent.New(agent.Config{HypervisorID: "hv1", VolumeRoots: []string{dir},
				Logger:  slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
				Drivers: map[string]volume.Driver{"file": drv}})
			hb := &heartbeatRecorder{}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- runActivity(ctx, acts, hb, c.activity, c.in, nil, nil) }()

			select {
			case m := <-drv.entered:
				require.Equal(t, c.method, m)
			case err := <-done:
				t.Fatalf("returned before calling the driver: %v", err)
			case <-time.After(5 * time.Second):
				t.Fatal("the driver was never called")
			}
			time.Sleep(200 * time.Millisecond) // blocked: the activity must show it is alive meanwhile
			cancel()
			cancelled := time.Now()
			var err error
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("the activity did not return within 10 s of its cancellation: it waits for the hung call")
			}
			took := time.Since(cancelled)
			t.Logf("returned %v after the cancellation: %v", took.Round(time.Millisecond), err)
			require.Less(t, took, 2*time.Second, "an abort must end a hung call promptly")
			requireCancellation(t, err)

			hbs := hb.take()
			require.GreaterOrEqual(t, len(hbs), 3, "heartbeats while the call hangs")
			for _, p := range hbs {
				require.NotEmpty(t, p.Phase, "a heartbeat names what the activity is doing")
			}
			require.Contains(t, logs.String(), "abandoned", "the call left running is logged")
			require.Contains(t, logs.String(), `"volume_id":"vol`)
		})
	}
}

// requireCancellation checks that err reports a cancellation: not a typed failure, nothing the workflow
// could mistake for a verdict on the volume.
func requireCancellation(t *testing.T, err error) {
	t.Helper()
	require.Error(t, err)
	var canceled *temporal.CanceledError
	if errors.As(err, &canceled) || errors.Is(err, context.Canceled) {
		return
	}
	var appErr *temporal.ApplicationError
	if errors.As(err, &appErr) {
		require.False(t, appErr.NonRetryable(), "a cancellation is not classified as a typed failure: %v", err)
	}
	require.Contains(t, err.Error(), "context canceled")
}
