// Package workers builds Holdfast's Temporal workers: the control-plane worker (every workflow plus the
// control activities, task queue workflows.TaskQueue) and, elsewhere, one hypervisor agent per host. It owns
// registration and the wiring between layers (such as how billing reads a volume's usage, QueryVolumeUsage):
// what runs is in workflows/ and activities/.
package workers

import (
	"context"
	"fmt"
	"os"

	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"

	"github.com/holdfast/holdfast/activities/billing"
	"github.com/holdfast/holdfast/workers/config"
	"github.com/holdfast/holdfast/workflows"
)

// RegisterControl registers every workflow and the control activities on a registry (a worker, or a
// replayer for the workflows alone when control is nil). The control activities start and update workflows
// through the Go client (starter.ControlActivities); the command that builds the process passes them in, so
// this layer never imports the one above it.
func RegisterControl(r worker.Registry, control any) {
	RegisterWorkflows(r)
	if control != nil {
		r.RegisterActivity(control)
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
	r.RegisterWorkflow(workflows.BillingWorkflow)
	r.RegisterWorkflow(workflows.ReplicateWorkflow)
	r.RegisterWorkflow(workflows.RecoverWorkflow)
	r.RegisterWorkflow(workflows.ScrubWorkflow)
	r.RegisterWorkflow(workflows.CollectGarbageWorkflow)
	r.RegisterWorkflow(workflows.LocationWorkflow)
	r.RegisterWorkflow(workflows.DeregisterWorkflow)
	r.RegisterWorkflow(workflows.InspectWorkflow)
	r.RegisterWorkflow(workflows.CleanupWorkflow)
}

// StartBilling registers the billing activities (reading usage with QueryVolumeUsage) on the control worker
// and makes sure the hourly billing schedule exists. It does nothing when no sink is configured. The
// returned close releases the ledger.
func StartBilling(ctx context.Context, w worker.Registry, c client.Client, cfg config.Billing) (func(), error) {
	if !cfg.Enabled() {
		return func() {}, nil
	}
	sink := billing.SinkConfig{LedgerPath: cfg.LedgerPath, WebhookURL: cfg.WebhookURL}
	if cfg.WebhookTokenEnv != "" {
		sink.WebhookToken = os.Getenv(cfg.WebhookTokenEnv)
	}
	acts, err := billing.New(c, QueryVolumeUsage(c), sink)
	if err != nil {
		return nil, err
	}
	w.RegisterActivity(acts)
	if err := EnsureBillingSchedule(ctx, c, BillingScheduleOptions{}); err != nil {
		acts.Close()
		return nil, fmt.Errorf("billing schedule: %w", err)
	}
	return func() { acts.Close() }, nil
}

// ControlOptions are the control worker's options for the config's pollers (config.Control): autoscaling
// pollers for workflow and activity tasks, up to the configured maximum each.
func ControlOptions(cfg config.Control) worker.Options {
	scale := func(max int) worker.PollerBehavior {
		return worker.NewPollerBehaviorAutoscaling(worker.PollerBehaviorAutoscalingOptions{
			InitialNumberOfPollers: min(4, max), MinimumNumberOfPollers: 1, MaximumNumberOfPollers: max})
	}
	return worker.Options{WorkflowTaskPollerBehavior: scale(cfg.WorkflowPollers),
		ActivityTaskPollerBehavior: scale(cfg.ActivityPollers)}
}

// NewControl returns the control-plane worker (not started), hosting every workflow and the given control
// activities (see RegisterControl).
func NewControl(c client.Client, control any, opts worker.Options) worker.Worker {
	w := worker.New(c, workflows.TaskQueue, opts)
	RegisterControl(w, control)
	return w
}
