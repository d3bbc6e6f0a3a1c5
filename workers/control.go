// Package workers builds Holdfast's Temporal workers: the control-plane worker (every workflow plus the
// control activities, task queue workflows.TaskQueue) and, elsewhere, one hypervisor agent per host. It owns
// registration only: what runs is in workflows/ and activities/.
package workers

import (
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"

	"github.com/holdfast/holdfast/starter"
	"github.com/holdfast/holdfast/workflows"
)

// RegisterControl registers every workflow and the control activities on a registry (a worker, or a
// replayer for the workflows alone when hf is nil).
func RegisterControl(r worker.Registry, hf *starter.Client) {
	RegisterWorkflows(r)
	if hf != nil {
		r.RegisterActivity(&starter.ControlActivities{Client: hf})
	}
}

// RegisterWorkflows registers every Holdfast workflow.
func RegisterWorkflows(r worker.WorkflowRegistry) {
	r.RegisterWorkflow(workflows.VolumeWorkflow)
	r.RegisterWorkflow(workflows.OwnerWorkflow)
	r.RegisterWorkflow(workflows.SnapshotWorkflow)
	r.RegisterWorkflow(workflows.BackupWorkflow)
	r.RegisterWorkflow(workflows.RestoreWorkflow)
	r.RegisterWorkflow(workflows.DeleteWorkflow)
	r.RegisterWorkflow(workflows.PolicyWorkflow)
	r.RegisterWorkflow(workflows.ScheduledRunWorkflow)
}

// NewControl returns the control-plane worker (not started).
func NewControl(c client.Client, hf *starter.Client, opts worker.Options) worker.Worker {
	w := worker.New(c, workflows.TaskQueue, opts)
	RegisterControl(w, hf)
	return w
}
