package workers

import (
	"context"
	"log/slog"
	"os"
	"strings"

	"github.com/holdfast/holdfast/activities/volume"
)

// HangEnv names the environment variable that makes an agent's volume drivers hang on purpose, for the
// fault-injection suite (cmd/holdfast TestFault*): a comma-separated list of driver methods (CreateSnapshot,
// DeleteSnapshot, RollbackSnapshot, OpenSnapshot, CreateVolume, …) that block forever and ignore their
// context, as a call into a wedged hypervisor does. Never set it in production; the agent says so when it is.
const HangEnv = "HOLDFAST_FAULT_HANG"

// hangFaults wraps every driver whose calls HangEnv names.
func hangFaults(drivers map[string]volume.Driver, log *slog.Logger) {
	spec := os.Getenv(HangEnv)
	if spec == "" {
		return
	}
	hang := map[string]bool{}
	for _, m := range strings.Split(spec, ",") {
		hang[strings.TrimSpace(m)] = true
	}
	log.Warn("fault injection: these driver calls hang forever (test only)", "env", HangEnv, "calls", spec)
	for t, d := range drivers {
		drivers[t] = &hangingDriver{Driver: d, hang: hang}
	}
}

// hangingDriver blocks forever in the calls it names, whatever their context says.
type hangingDriver struct {
	volume.Driver
	hang map[string]bool
}

func (h *hangingDriver) wedge(call string) {
	if h.hang[call] {
		select {} // a hypervisor call that never returns
	}
}

func (h *hangingDriver) CreateSnapshot(ctx context.Context, vol volume.Ref, name string) (volume.Snapshot, error) {
	h.wedge("CreateSnapshot")
	return h.Driver.CreateSnapshot(ctx, vol, name)
}

func (h *hangingDriver) DeleteSnapshot(ctx context.Context, vol volume.Ref, name string) error {
	h.wedge("DeleteSnapshot")
	return h.Driver.DeleteSnapshot(ctx, vol, name)
}

func (h *hangingDriver) RollbackSnapshot(ctx context.Context, vol volume.Ref, name string) error {
	h.wedge("RollbackSnapshot")
	return h.Driver.RollbackSnapshot(ctx, vol, name)
}

func (h *hangingDriver) OpenSnapshot(ctx context.Context, vol volume.Ref, name string) (volume.Reader, error) {
	h.wedge("OpenSnapshot")
	return h.Driver.OpenSnapshot(ctx, vol, name)
}

func (h *hangingDriver) CreateVolume(ctx context.Context, vol volume.Ref, size int64) (volume.Writer, error) {
	h.wedge("CreateVolume")
	return h.Driver.CreateVolume(ctx, vol, size)
}

func (h *hangingDriver) Attachment(ctx context.Context, vol volume.Ref) (volume.Attachment, error) {
	h.wedge("Attachment")
	return h.Driver.Attachment(ctx, vol)
}
