package api

import (
	"math"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/starter"
	"github.com/holdfast/holdfast/starter/api/apiv1"
	"github.com/holdfast/holdfast/workflows"
)

// The API's documents (apiv1) are built here from the control plane's types, and its requests turned into
// the starter client's. Storage, replicas and errors are converted as Go conversions, which compile only
// while both sides have the same fields: a field added to the control plane's type is then a decision
// about the wire, not a silent new key.

func volumeView(v *starter.Volume) apiv1.Volume {
	spec := v.Spec
	view := apiv1.Volume{VolumeID: spec.VolumeID, Name: spec.Name, OwnerID: spec.OwnerID,
		HypervisorID: spec.HypervisorID, Plan: spec.Plan.PlanID, Storage: apiv1.Storage(spec.Storage),
		SizeBytes: spec.SizeBytes, CooldownRemainingSeconds: v.CooldownRemainingSeconds, PolicyID: v.PolicyID,
		Hydrating: spec.Hydrating != "",
		Snapshots: make([]apiv1.Snapshot, 0, len(v.Snapshots)), Backups: make([]apiv1.Backup, 0, len(v.Backups))}
	if op := v.Active; op != nil {
		view.ActiveOperation = &apiv1.ActiveOperation{OperationID: op.OperationID, Kind: string(op.Kind),
			ItemID: op.ItemID, Status: string(op.Status), Progress: progress(op.Progress)}
	}
	for _, it := range v.Snapshots {
		view.Snapshots = append(view.Snapshots, apiv1.Snapshot{SnapshotID: it.ItemID, Name: it.Name,
			Status: string(it.Status), CreatedAt: it.CreatedAt, SizeBytes: it.SizeBytes, ItemDetails: details(it)})
	}
	for _, it := range v.Backups {
		view.Backups = append(view.Backups, apiv1.Backup{BackupID: it.ItemID, Name: it.Name, Status: string(it.Status),
			CreatedAt: it.CreatedAt, SizeBytes: it.SizeBytes, StoredBytes: it.StoredBytes, Storage: it.Storage,
			ItemDetails: details(it)})
	}
	return view
}

// details are an item's fields beyond v1 (each left out when unset).
func details(it workflows.Item) apiv1.ItemDetails {
	d := apiv1.ItemDetails{Consistency: it.Consistency, Error: it.Error, Scheduled: it.Scheduled, Recovered: it.Recovered,
		ReadBytes: it.ReadBytes, Incremental: it.Incremental, FullReadReason: it.FullReadReason}
	if it.Replica != nil {
		r := apiv1.Replica(*it.Replica)
		d.Replica = &r
	}
	return d
}

// progress is what a user reads of an operation's heartbeat: the resume checkpoint stays inside, and the
// ETA is whole seconds, or unknown without a rate.
func progress(p *activities.Progress) *apiv1.Progress {
	if p == nil {
		return nil
	}
	v := &apiv1.Progress{Phase: p.Phase, BytesDone: p.BytesDone, BytesTotal: p.BytesTotal,
		BytesPerSecond: p.BytesPerSecond}
	if p.BytesPerSecond > 0 && p.BytesTotal >= p.BytesDone {
		eta := int64(math.Ceil(float64(p.BytesTotal-p.BytesDone) / p.BytesPerSecond))
		v.ETASeconds = &eta
	}
	return v
}

func acceptedView(op *workflows.Operation) apiv1.Accepted {
	return apiv1.Accepted{OperationID: op.OperationID, VolumeID: op.VolumeID, Kind: string(op.Kind),
		ItemID: op.ItemID, Status: string(op.Status), NewVolumeID: op.NewVolumeID}
}

func operationView(op *workflows.Operation) apiv1.Operation {
	view := apiv1.Operation{OperationID: op.OperationID, VolumeID: op.VolumeID, Kind: string(op.Kind),
		ItemID: op.ItemID, Status: string(op.Status), Progress: progress(op.Progress), StartedAt: op.StartedAt,
		FinishedAt: op.FinishedAt, NewVolumeID: op.NewVolumeID, InstantFallback: op.InstantFallback}
	if op.Error != nil {
		e := apiv1.Error(*op.Error)
		view.Error = &e
	}
	return view
}

func attachmentView(a *starter.PolicyAttachment) apiv1.PolicyAttachment {
	return apiv1.PolicyAttachment{VolumeID: a.VolumeID, PolicyID: nullable(a.PolicyID), ScheduleID: nullable(a.ScheduleID)}
}

// nullable is s, or null for "".
func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func policyView(p *workflows.Policy) apiv1.Policy {
	view := apiv1.Policy{PolicyID: p.PolicyID, Kind: string(p.Kind), Every: p.Every, Cron: p.Cron,
		TimeZone: p.TimeZone, Jitter: p.Jitter, KeepLast: p.KeepLast, KeepDaily: p.KeepDaily,
		KeepWeekly: p.KeepWeekly, KeepMonthly: p.KeepMonthly}
	if p.Window != nil {
		w := apiv1.Window(*p.Window)
		view.Window = &w
	}
	return view
}

func policyOf(b apiv1.Policy) workflows.Policy {
	p := workflows.Policy{PolicyID: b.PolicyID, Kind: workflows.Kind(b.Kind), Every: b.Every, Cron: b.Cron,
		TimeZone: b.TimeZone, Jitter: b.Jitter, KeepLast: b.KeepLast, KeepDaily: b.KeepDaily,
		KeepWeekly: b.KeepWeekly, KeepMonthly: b.KeepMonthly}
	if b.Window != nil {
		w := workflows.Window(*b.Window)
		p.Window = &w
	}
	return p
}

func registerRequestOf(b apiv1.RegisterVolumeRequest) starter.RegisterRequest {
	return starter.RegisterRequest{VolumeID: b.VolumeID, Name: b.Name, OwnerID: b.OwnerID,
		HypervisorID: b.HypervisorID, Plan: b.Plan, Storage: activities.VolumeRef(b.Storage), SizeBytes: b.SizeBytes}
}

func restoreRequestOf(b apiv1.RestoreRequest) starter.RestoreRequest {
	req := starter.RestoreRequest{SnapshotID: b.SnapshotID, BackupID: b.BackupID, Mode: b.Mode, Confirm: b.Confirm,
		NewVolumeID: b.NewVolumeID, NewVolumeName: b.NewVolumeName, Plan: b.Plan, HypervisorID: b.HypervisorID,
		Instant: b.Instant}
	if b.Storage != nil {
		ref := activities.VolumeRef(*b.Storage)
		req.Storage = &ref
	}
	return req
}
