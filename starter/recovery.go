package starter

import (
	"context"
	"fmt"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/workflows"
)

// RecoverOptions rebuilds the catalog of one backup storage.
type RecoverOptions struct {
	// Storage is the configured backup storage to read (e.g. the off-site replica).
	Storage string
	// FallbackHypervisor registers volumes whose hypervisor is no longer configured on this one instead
	// ("": such volumes are reported and skipped).
	FallbackHypervisor string
}

// Recover lists every backup in a storage and makes the control plane know them: volumes it does not know are
// registered from their manifests' labels, and every backup is listed on its volume as available (restorable
// from that storage). It waits for the rebuild and is idempotent: a second run imports nothing new, and a
// run already going is joined rather than duplicated.
func (c *Client) Recover(ctx context.Context, o RecoverOptions) (*workflows.RecoverResult, error) {
	if err := c.checkStorage(o.Storage); err != nil {
		return nil, err
	}
	if o.FallbackHypervisor != "" {
		if _, ok := c.cfg.Hypervisors[o.FallbackHypervisor]; !ok {
			return nil, invalid("hypervisor: unknown hypervisor %q", o.FallbackHypervisor)
		}
	}
	var res workflows.RecoverResult
	err := c.runJob(ctx, workflows.RecoverWorkflowID(o.Storage), workflows.RecoverWorkflow,
		workflows.RecoverInput{Storage: o.Storage, FallbackHypervisor: o.FallbackHypervisor}, &res)
	return &res, err
}

// Scrub reads and checks every chunk of every backup in a storage (of one volume when volumeID is set) and
// returns the report; damaged backups are listed in it.
func (c *Client) Scrub(ctx context.Context, storage, volumeID string) (*activities.ScrubResult, error) {
	if err := c.checkStorage(storage); err != nil {
		return nil, err
	}
	var res activities.ScrubResult
	err := c.runJob(ctx, jobID("scrub", storage, volumeID), workflows.ScrubWorkflow,
		workflows.StorageJob{Storage: storage, VolumeID: volumeID}, &res)
	return &res, err
}

// CollectGarbage removes the chunks of a storage (of one volume when volumeID is set) that no backup
// references and that are older than grace.
func (c *Client) CollectGarbage(ctx context.Context, storage, volumeID string, grace time.Duration) (*activities.GCResult, error) {
	if err := c.checkStorage(storage); err != nil {
		return nil, err
	}
	if grace < 0 {
		return nil, invalid("grace: must not be negative")
	}
	var res activities.GCResult
	err := c.runJob(ctx, jobID("gc", storage, volumeID), workflows.CollectGarbageWorkflow,
		workflows.StorageJob{Storage: storage, VolumeID: volumeID, Grace: grace}, &res)
	return &res, err
}

func (c *Client) checkStorage(storage string) error {
	if _, ok := c.cfg.Storages[storage]; !ok {
		return invalid("store: unknown backup storage %q", storage)
	}
	return nil
}

func jobID(kind, storage, volumeID string) string {
	if volumeID == "" {
		return kind + "/" + storage
	}
	return kind + "/" + storage + "/" + volumeID
}

// runJob starts a storage job's workflow (joining the one running under the same ID) and waits for its result.
func (c *Client) runJob(ctx context.Context, workflowID string, wf, input, out any) error {
	run, err := c.temporal.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: workflowID,
		TaskQueue:                workflows.TaskQueue,
		WorkflowIDConflictPolicy: enumspb.WORKFLOW_ID_CONFLICT_POLICY_USE_EXISTING,
		WorkflowIDReusePolicy:    enumspb.WORKFLOW_ID_REUSE_POLICY_ALLOW_DUPLICATE}, wf, input)
	if err != nil {
		return typed(err)
	}
	return typed(run.Get(ctx, out))
}

// RecoverVolume registers one volume found in a storage when the control plane does not know it, and imports
// its backups (activity workflows.RecoverVolumeActivity). A volume that cannot be registered (labels missing,
// hypervisor gone and no fallback, plan unknown) is reported as skipped, not failed: the rebuild goes on.
func (a *ControlActivities) RecoverVolume(ctx context.Context, in workflows.RecoverVolumeInput) (workflows.RecoverVolumeResult, error) {
	var res workflows.RecoverVolumeResult
	if len(in.Backups) == 0 {
		return res, nil
	}
	if _, err := a.Client.state(ctx, in.VolumeID); isType(err, workflows.ErrNotFound) {
		req, why := a.Client.recoveredRegistration(in)
		if why != "" {
			res.Skipped = why
			return res, nil
		}
		if _, err := a.Client.registerRecovered(ctx, req); err != nil {
			if isType(err, workflows.ErrInvalidArgument) {
				res.Skipped = "cannot register: " + err.Error()
				return res, nil
			}
			return res, err
		}
		res.Registered = true
	} else if err != nil {
		return res, err
	}
	items := make([]workflows.Item, len(in.Backups))
	for i, e := range in.Backups {
		items[i] = workflows.RecoveredItem(in.Storage, e)
	}
	var out workflows.ImportResult
	if err := a.Client.update(ctx, workflows.VolumeWorkflowID(in.VolumeID), workflows.UpdateImportBackups, "",
		workflows.ImportRequest{Backups: items}, &out); err != nil {
		return res, err
	}
	res.Imported, res.Known = out.Imported, out.Known
	return res, nil
}

// recoveredRegistration rebuilds a volume's registration from its newest backup's labels. It returns why not
// when it cannot. The labels are only as trustworthy as the store (authenticated in an encrypted store, not
// in a plain one), so the registration goes through the same placement rules as the panel's: a path outside
// the hypervisor's volume roots, or a location another volume holds, is skipped and reported.
func (c *Client) recoveredRegistration(in workflows.RecoverVolumeInput) (RegisterRequest, string) {
	newest := in.Backups[len(in.Backups)-1]
	l := newest.Labels
	req := RegisterRequest{VolumeID: in.VolumeID, Name: l[activities.LabelVolumeName], OwnerID: l[activities.LabelOwnerID],
		HypervisorID: l[activities.LabelHypervisorID], Plan: l[activities.LabelPlanID], SizeBytes: newest.SizeBytes,
		Storage: activities.VolumeRef{Type: l[activities.LabelVolumeType], Path: l[activities.LabelVolumePath],
			Format: l[activities.LabelVolumeFormat], Pool: l[activities.LabelVolumePool], Image: l[activities.LabelVolumeImage]}}
	if req.OwnerID == "" || req.Storage.Type == "" {
		return req, fmt.Sprintf("backup %s carries no volume labels (owner, storage): register the volume by hand, "+
			"then run recover again", newest.BackupID)
	}
	if req.Name == "" {
		req.Name = in.VolumeID
	}
	if _, ok := c.cfg.Hypervisors[req.HypervisorID]; !ok {
		if in.FallbackHypervisor == "" {
			return req, fmt.Sprintf("hypervisor %q is not configured; recover with a fallback hypervisor to "+
				"register its volumes elsewhere", req.HypervisorID)
		}
		req.HypervisorID = in.FallbackHypervisor
	}
	if _, ok := c.cfg.Plans[req.Plan]; !ok {
		req.Plan = "" // the default plan: the one it had is no longer offered
	}
	return req, ""
}

// registerRecovered registers a volume found in a storage: through the placement rules like any other, but
// without asking its hypervisor about the file (after a site loss there is none: its backups are what is
// left, to be restored elsewhere).
func (c *Client) registerRecovered(ctx context.Context, req RegisterRequest) (*Volume, error) {
	spec, err := c.Spec(req)
	if err != nil {
		return nil, err
	}
	return c.register(ctx, spec)
}
