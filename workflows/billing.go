package workflows

import (
	"fmt"
	"sort"
	"time"

	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/holdfast/holdfast/activities/billing/contract"
)

// Billing activity names (part of the wire contract: never rename). They run on the workflow's own task
// queue, workflows.TaskQueue in production, and are implemented by activities/billing.Activities, whose
// method names are these names; their inputs and results are activities/billing's contract types.
const (
	// ActivityBillingUsage lists one page of volumes and returns their items (contract.UsageInput →
	// contract.UsagePage).
	ActivityBillingUsage = "BillingUsage"
	// ActivityBillingWriteLedger appends line items to the JSON-lines ledger, skipping keys it already holds
	// (contract.EmitInput → contract.EmitResult).
	ActivityBillingWriteLedger = "BillingWriteLedger"
	// ActivityBillingPostWebhook posts line items to the panel's webhook (contract.EmitInput →
	// contract.EmitResult).
	ActivityBillingPostWebhook = "BillingPostWebhook"
)

// SearchScheduledStartTime is the search attribute the Temporal server sets on every workflow a Schedule
// starts: the action's nominal (scheduled) time, also for buffered and caught-up actions.
const SearchScheduledStartTime = "TemporalScheduledStartTime"

// BytesPerGB is the billing unit: 1 GB = 1 GiB (2^30 bytes), the unit volumes are sized in.
const BytesPerGB = 1 << 30

// BillingInput starts (or continues) one BillingWorkflow run: one run bills one hour.
type BillingInput struct {
	// Hour is the hour being billed (UTC, truncated to the hour). Zero: the hour before the schedule's
	// action time (billing is in arrears: the 15:00 action bills 14:00–15:00).
	Hour time.Time `json:"hour,omitempty"`
	// PageSize is how many volumes one usage activity reads (0: contract.DefaultPageSize).
	PageSize int `json:"page_size,omitempty"`
	// NextPageToken resumes the volume listing after continue-as-new.
	NextPageToken []byte `json:"next_page_token,omitempty"`
	// Totals carries the counts of earlier runs of this hour's chain across continue-as-new.
	Totals BillingResult `json:"totals"`
}

// BillingResult is what a billing run did.
type BillingResult struct {
	Hour time.Time `json:"hour"`
	// Volumes read and line items computed (items of 0 GB are never computed).
	Volumes   int `json:"volumes"`
	LineItems int `json:"line_items"`
	// LedgerWritten counts items newly appended to the ledger (already present keys are not counted).
	LedgerWritten int `json:"ledger_written"`
	// WebhookPosted counts items posted to the webhook (the panel deduplicates by idempotency key).
	WebhookPosted int `json:"webhook_posted"`
}

// UsageOf trims a volume's state to what billing reads: the plan's prices, its items, and those deleted
// lately (Gone*).
func UsageOf(st VolumeState) contract.VolumeUsage {
	trim := func(lists ...[]Item) []contract.ItemUsage {
		var out []contract.ItemUsage
		for _, items := range lists {
			for _, it := range items {
				out = append(out, contract.ItemUsage{ItemID: it.ItemID, Status: string(it.Status),
					SizeBytes: it.SizeBytes, StoredBytes: it.StoredBytes, AvailableAt: it.AvailableAt,
					DeletedAt: it.DeletedAt})
			}
		}
		return out
	}
	plan := st.Spec.Plan
	return contract.VolumeUsage{VolumeID: st.Spec.VolumeID, OwnerID: st.Spec.OwnerID,
		Plan: contract.Prices{PlanID: plan.PlanID, SnapshotCreditValue: plan.SnapshotCreditValue,
			BackupCreditValue: plan.BackupCreditValue},
		Snapshots: trim(st.Snapshots, st.GoneSnapshots), Backups: trim(st.Backups, st.GoneBackups)}
}

// existedIn says whether an item was available at some time during [hour, hour+1h). Items recorded before
// AvailableAt existed are judged by their status now, as billing always did.
func existedIn(it contract.ItemUsage, hour time.Time) bool {
	if it.Status != string(StatusAvailable) {
		return false
	}
	end := hour.Add(time.Hour)
	if it.AvailableAt != nil && !it.AvailableAt.Before(end) {
		return false // not yet available in that hour
	}
	return it.DeletedAt == nil || it.DeletedAt.After(hour)
}

// HoursInMonth is the number of hours in the (UTC) month of t: 672, 696, 720 or 744.
func HoursInMonth(t time.Time) int {
	t = t.UTC()
	return time.Date(t.Year(), t.Month()+1, 0, 0, 0, 0, 0, time.UTC).Day() * 24
}

// LineItems computes the line items of one hour, sorted by key. Rules (spec, Billing; invariant 5):
//   - an hour bills the items that were available at some time during it (available before its end, not
//     deleted before its start), so a late or re-run hour bills what existed then, not what exists now:
//     pending, creating, restoring, failed and aborted items never are;
//   - snapshots are billed on SizeBytes (the volume's size at snapshot time: what a snapshot pins on the
//     volume's storage), backups on StoredBytes (what the backup storage holds after zero-skip, dedup and
//     compression), falling back to SizeBytes when a backup recorded no stored size;
//   - kinds retaining 0 bytes produce no line item;
//   - a credit value of 0 (the default: free within caps) still produces an item with 0 credits, so usage is
//     visible and a later price change needs no different code path.
//
// It is pure and deterministic: the same volumes give the same items.
func LineItems(hour time.Time, volumes []contract.VolumeUsage) []contract.LineItem {
	hour = hour.UTC().Truncate(time.Hour)
	hours := float64(HoursInMonth(hour))
	var out []contract.LineItem
	for _, v := range volumes {
		for _, k := range []struct {
			kind  Kind
			items []contract.ItemUsage
			value float64
		}{{KindSnapshot, v.Snapshots, v.Plan.SnapshotCreditValue}, {KindBackup, v.Backups, v.Plan.BackupCreditValue}} {
			var bytes int64
			n := 0
			for _, it := range k.items {
				if !existedIn(it, hour) {
					continue
				}
				b := it.SizeBytes
				if k.kind == KindBackup && it.StoredBytes > 0 {
					b = it.StoredBytes
				}
				bytes += b
				n++
			}
			if bytes <= 0 {
				continue
			}
			gb := float64(bytes) / BytesPerGB
			kind := string(k.kind)
			out = append(out, contract.LineItem{IdempotencyKey: contract.LineItemKey(v.VolumeID, kind, hour),
				VolumeID: v.VolumeID, OwnerID: v.OwnerID, PlanID: v.Plan.PlanID, Kind: kind, Hour: hour, Items: n,
				GB: gb, CreditValue: k.value, Credits: gb * k.value / hours})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].IdempotencyKey < out[j].IdempotencyKey })
	return out
}

// BillingWorkflow bills one hour: it reads every volume's items a page at a time, computes the line items
// (LineItems) and emits each page to the ledger and the webhook. Every step is idempotent by line-item key,
// so a retried activity, a failed run re-run by hand or a duplicate schedule action never charges twice.
// History stays bounded: it continues-as-new between pages when the server suggests it.
func BillingWorkflow(ctx workflow.Context, in BillingInput) (BillingResult, error) {
	hour := in.Hour
	if hour.IsZero() {
		hour = billedHour(ctx)
	}
	hour = hour.UTC().Truncate(time.Hour)
	pageSize := in.PageSize
	if pageSize <= 0 {
		pageSize = contract.DefaultPageSize
	}
	res := in.Totals
	res.Hour = hour
	logger := workflow.GetLogger(ctx)

	usageCtx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout: 5 * time.Minute, HeartbeatTimeout: 30 * time.Second,
		// A usage page that keeps failing fails the run (visible, re-runnable) rather than billing a partial
		// set of volumes silently forever.
		ScheduleToCloseTimeout: time.Hour,
		RetryPolicy:            &temporal.RetryPolicy{InitialInterval: time.Second, MaximumInterval: time.Minute},
	})
	ledgerCtx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout: time.Minute, ScheduleToCloseTimeout: time.Hour,
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: time.Second, MaximumInterval: time.Minute},
	})
	webhookCtx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		// The panel may be down for a while: keep retrying with backoff for hours, since every retry carries
		// the same idempotency keys.
		StartToCloseTimeout: time.Minute, ScheduleToCloseTimeout: 6 * time.Hour,
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: time.Second, BackoffCoefficient: 2,
			MaximumInterval: 5 * time.Minute, NonRetryableErrorTypes: []string{contract.ErrWebhookRejected}},
	})

	token := in.NextPageToken
	for {
		var page contract.UsagePage
		if err := workflow.ExecuteActivity(usageCtx, ActivityBillingUsage,
			contract.UsageInput{PageSize: pageSize, NextPageToken: token}).Get(ctx, &page); err != nil {
			return res, fmt.Errorf("billing %s: read usage: %w", hour.Format("2006-01-02T15"), err)
		}
		items := LineItems(hour, page.Volumes)
		res.Volumes += len(page.Volumes)
		res.LineItems += len(items)
		if len(items) > 0 {
			// Both sinks at once: a webhook outage must not hold back the ledger.
			emit := contract.EmitInput{Hour: hour, Items: items}
			ledger := workflow.ExecuteActivity(ledgerCtx, ActivityBillingWriteLedger, emit)
			webhook := workflow.ExecuteActivity(webhookCtx, ActivityBillingPostWebhook, emit)
			var l, w contract.EmitResult
			lerr := ledger.Get(ctx, &l)
			werr := webhook.Get(ctx, &w)
			res.LedgerWritten += l.Written
			res.WebhookPosted += w.Written
			if lerr != nil {
				return res, fmt.Errorf("billing %s: ledger: %w", hour.Format("2006-01-02T15"), lerr)
			}
			if werr != nil {
				return res, fmt.Errorf("billing %s: webhook: %w", hour.Format("2006-01-02T15"), werr)
			}
		}
		token = page.NextPageToken
		if len(token) == 0 {
			break
		}
		if workflow.GetInfo(ctx).GetContinueAsNewSuggested() {
			return res, workflow.NewContinueAsNewError(ctx, BillingWorkflow,
				BillingInput{Hour: hour, PageSize: pageSize, NextPageToken: token, Totals: res})
		}
	}
	logger.Info("billed hour", "hour", hour.Format("2006-01-02T15"), "volumes", res.Volumes,
		"line_items", res.LineItems, "ledger_written", res.LedgerWritten, "webhook_posted", res.WebhookPosted)
	return res, nil
}

// billedHour is the hour before the schedule's action time (the TemporalScheduledStartTime search attribute
// the server sets on scheduled runs: the nominal time, so a buffered or caught-up action still bills its
// own hour). Started by hand without an Hour, it falls back to the hour before workflow.Now.
func billedHour(ctx workflow.Context) time.Time {
	at, ok := scheduledStartTime(ctx)
	if !ok {
		at = workflow.Now(ctx)
	}
	return at.UTC().Truncate(time.Hour).Add(-time.Hour)
}

func scheduledStartTime(ctx workflow.Context) (time.Time, bool) {
	if t, ok := workflow.GetTypedSearchAttributes(ctx).GetTime(temporal.NewSearchAttributeKeyTime(SearchScheduledStartTime)); ok && !t.IsZero() {
		return t, true
	}
	// Untyped payloads (no "type" metadata) are left out of the typed view: decode the raw one.
	if sa := workflow.GetInfo(ctx).SearchAttributes; sa != nil {
		if p, ok := sa.GetIndexedFields()[SearchScheduledStartTime]; ok {
			var t time.Time
			if err := converter.GetDefaultDataConverter().FromPayload(p, &t); err == nil && !t.IsZero() {
				return t, true
			}
		}
	}
	return time.Time{}, false
}
