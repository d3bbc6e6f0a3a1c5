package workflows

import (
	"fmt"
	"sort"
	"time"

	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"
)

// Billing activity names (part of the wire contract: never rename). They run on the workflow's own task
// queue, workflows.TaskQueue in production, and are implemented by activities/billing.Activities, whose
// method names are these names.
const (
	// ActivityBillingUsage lists one page of volumes and returns their items (BillingUsageInput →
	// BillingUsagePage).
	ActivityBillingUsage = "BillingUsage"
	// ActivityBillingWriteLedger appends line items to the JSON-lines ledger, skipping keys it already holds
	// (BillingEmitInput → BillingEmitResult).
	ActivityBillingWriteLedger = "BillingWriteLedger"
	// ActivityBillingPostWebhook posts line items to the panel's webhook (BillingEmitInput →
	// BillingEmitResult).
	ActivityBillingPostWebhook = "BillingPostWebhook"
)

// ErrWebhookRejected is the non-retryable activity error type of a webhook answer that no retry can fix
// (a 4xx other than 409 and 429).
const ErrWebhookRejected = "WebhookRejected"

// SearchScheduledStartTime is the search attribute the Temporal server sets on every workflow a Schedule
// starts: the action's nominal (scheduled) time, also for buffered and caught-up actions.
const SearchScheduledStartTime = "TemporalScheduledStartTime"

// BytesPerGB is the billing unit: 1 GB = 1 GiB (2^30 bytes), the unit volumes are sized in.
const BytesPerGB = 1 << 30

// DefaultBillingPageSize bounds how many volumes one usage activity reads (and so the payload it returns).
const DefaultBillingPageSize = 100

// BillingInput starts (or continues) one BillingWorkflow run: one run bills one hour.
type BillingInput struct {
	// Hour is the hour being billed (UTC, truncated to the hour). Zero: the hour before the schedule's
	// action time (billing is in arrears: the 15:00 action bills 14:00–15:00).
	Hour time.Time `json:"hour,omitempty"`
	// PageSize is how many volumes one usage activity reads (0: DefaultBillingPageSize).
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

// BillingUsageInput asks for one page of volumes.
type BillingUsageInput struct {
	PageSize      int    `json:"page_size"`
	NextPageToken []byte `json:"next_page_token,omitempty"`
}

// BillingUsagePage is one page of volumes with the items they retain right now.
type BillingUsagePage struct {
	Volumes []VolumeUsage `json:"volumes"`
	// NextPageToken is empty on the last page.
	NextPageToken []byte `json:"next_page_token,omitempty"`
}

// VolumeUsage is what billing needs of one volume: who pays, the plan's prices, and every item with its
// status (the workflow, not the activity, decides what is billable, so the rule is tested in one place).
type VolumeUsage struct {
	VolumeID  string      `json:"volume_id"`
	OwnerID   string      `json:"owner_id"`
	Plan      Plan        `json:"plan"`
	Snapshots []ItemUsage `json:"snapshots,omitempty"`
	Backups   []ItemUsage `json:"backups,omitempty"`
}

// ItemUsage is the billing view of an Item. AvailableAt and DeletedAt (when known) place it in time: an hour
// bills the items that existed in it, however late it is billed.
type ItemUsage struct {
	ItemID      string     `json:"item_id"`
	Status      Status     `json:"status"`
	SizeBytes   int64      `json:"size_bytes"`
	StoredBytes int64      `json:"stored_bytes,omitempty"`
	AvailableAt *time.Time `json:"available_at,omitempty"`
	DeletedAt   *time.Time `json:"deleted_at,omitempty"`
}

// UsageOf trims a volume's state to what billing reads: its items, and those deleted lately (Gone*).
func UsageOf(st VolumeState) VolumeUsage {
	trim := func(lists ...[]Item) []ItemUsage {
		var out []ItemUsage
		for _, items := range lists {
			for _, it := range items {
				out = append(out, ItemUsage{ItemID: it.ItemID, Status: it.Status, SizeBytes: it.SizeBytes,
					StoredBytes: it.StoredBytes, AvailableAt: it.AvailableAt, DeletedAt: it.DeletedAt})
			}
		}
		return out
	}
	return VolumeUsage{VolumeID: st.Spec.VolumeID, OwnerID: st.Spec.OwnerID, Plan: st.Spec.Plan,
		Snapshots: trim(st.Snapshots, st.GoneSnapshots), Backups: trim(st.Backups, st.GoneBackups)}
}

// existedIn says whether an item was available at some time during [hour, hour+1h). Items recorded before
// AvailableAt existed are judged by their status now, as billing always did.
func (it ItemUsage) existedIn(hour time.Time) bool {
	if it.Status != StatusAvailable {
		return false
	}
	end := hour.Add(time.Hour)
	if it.AvailableAt != nil && !it.AvailableAt.Before(end) {
		return false // not yet available in that hour
	}
	return it.DeletedAt == nil || it.DeletedAt.After(hour)
}

// LineItem is one charge: a volume's retained GB of one kind during one hour. IdempotencyKey
// ("vol1/backup/2026-11-23T14") is unique per (volume, kind, hour): every sink uses it so that re-running an
// hour never charges twice.
type LineItem struct {
	IdempotencyKey string    `json:"idempotency_key"`
	VolumeID       string    `json:"volume_id"`
	OwnerID        string    `json:"owner_id"`
	PlanID         string    `json:"plan_id"`
	Kind           Kind      `json:"kind"`
	Hour           time.Time `json:"hour"`
	// Items is how many available items were counted.
	Items int     `json:"items"`
	GB    float64 `json:"gb"`
	// CreditValue is the plan's credits per GB-month; Credits = GB × CreditValue ÷ hours in the month.
	CreditValue float64 `json:"credit_value"`
	Credits     float64 `json:"credits"`
}

// LineItemKey is the idempotency key of (volume, kind, hour).
func LineItemKey(volumeID string, kind Kind, hour time.Time) string {
	return volumeID + "/" + string(kind) + "/" + hour.UTC().Format("2006-01-02T15")
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
func LineItems(hour time.Time, volumes []VolumeUsage) []LineItem {
	hour = hour.UTC().Truncate(time.Hour)
	hours := float64(HoursInMonth(hour))
	var out []LineItem
	for _, v := range volumes {
		for _, k := range []struct {
			kind  Kind
			items []ItemUsage
			value float64
		}{{KindSnapshot, v.Snapshots, v.Plan.SnapshotCreditValue}, {KindBackup, v.Backups, v.Plan.BackupCreditValue}} {
			var bytes int64
			n := 0
			for _, it := range k.items {
				if !it.existedIn(hour) {
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
			out = append(out, LineItem{IdempotencyKey: LineItemKey(v.VolumeID, k.kind, hour), VolumeID: v.VolumeID,
				OwnerID: v.OwnerID, PlanID: v.Plan.PlanID, Kind: k.kind, Hour: hour, Items: n, GB: gb,
				CreditValue: k.value, Credits: gb * k.value / hours})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].IdempotencyKey < out[j].IdempotencyKey })
	return out
}

// BillingEmitInput hands line items to a sink.
type BillingEmitInput struct {
	Hour  time.Time  `json:"hour"`
	Items []LineItem `json:"items"`
}

// BillingEmitResult says how many items a sink newly accepted.
type BillingEmitResult struct {
	Written int `json:"written"`
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
		pageSize = DefaultBillingPageSize
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
			MaximumInterval: 5 * time.Minute, NonRetryableErrorTypes: []string{ErrWebhookRejected}},
	})

	token := in.NextPageToken
	for {
		var page BillingUsagePage
		if err := workflow.ExecuteActivity(usageCtx, ActivityBillingUsage,
			BillingUsageInput{PageSize: pageSize, NextPageToken: token}).Get(ctx, &page); err != nil {
			return res, fmt.Errorf("billing %s: read usage: %w", hour.Format("2006-01-02T15"), err)
		}
		items := LineItems(hour, page.Volumes)
		res.Volumes += len(page.Volumes)
		res.LineItems += len(items)
		if len(items) > 0 {
			// Both sinks at once: a webhook outage must not hold back the ledger.
			emit := BillingEmitInput{Hour: hour, Items: items}
			ledger := workflow.ExecuteActivity(ledgerCtx, ActivityBillingWriteLedger, emit)
			webhook := workflow.ExecuteActivity(webhookCtx, ActivityBillingPostWebhook, emit)
			var l, w BillingEmitResult
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
