// Package contract is the billing activities' contract: what workflows.BillingWorkflow sends its billing
// activities (activities/billing) and what they return. It holds types only, so that the deterministic
// workflows can import it without the activities' side effects.
//
// It is wire format (recorded histories replay with it, in-flight activities decode it): never change a JSON
// tag. Plain strings stand where workflows has typed ones (an item's status, a line item's kind), so this
// package never needs workflows/.
package contract

import "time"

// ErrWebhookRejected is the non-retryable activity error type of a webhook answer that no retry can fix
// (a 4xx other than 409 and 429).
const ErrWebhookRejected = "WebhookRejected"

// DefaultPageSize bounds how many volumes one usage activity reads (and so the payload it returns).
const DefaultPageSize = 100

// UsageInput asks for one page of volumes (activity workflows.ActivityBillingUsage).
type UsageInput struct {
	PageSize      int    `json:"page_size"`
	NextPageToken []byte `json:"next_page_token,omitempty"`
}

// UsagePage is one page of volumes with the items they retain right now.
type UsagePage struct {
	Volumes []VolumeUsage `json:"volumes"`
	// NextPageToken is empty on the last page.
	NextPageToken []byte `json:"next_page_token,omitempty"`
}

// VolumeUsage is what billing needs of one volume: who pays, the plan's prices, and every item with its
// status (the workflow, not the activity, decides what is billable, so the rule is tested in one place).
type VolumeUsage struct {
	VolumeID  string      `json:"volume_id"`
	OwnerID   string      `json:"owner_id"`
	Plan      Prices      `json:"plan"`
	Snapshots []ItemUsage `json:"snapshots,omitempty"`
	Backups   []ItemUsage `json:"backups,omitempty"`
}

// Prices is what billing reads of a volume's plan (workflows.Plan): its ID and credit values. Its fields
// carry the plan's own JSON tags, so usage recorded with the whole plan (caps included) still decodes.
type Prices struct {
	PlanID              string  `json:"plan_id"`
	SnapshotCreditValue float64 `json:"snapshot_credit_value"`
	BackupCreditValue   float64 `json:"backup_credit_value"`
}

// ItemUsage is the billing view of a volume's item (snapshot or backup). Status is the item's status
// (workflows.Status: "available", "pending"…). AvailableAt and DeletedAt (when known) place it in time: an
// hour bills the items that existed in it, however late it is billed.
type ItemUsage struct {
	ItemID      string     `json:"item_id"`
	Status      string     `json:"status"`
	SizeBytes   int64      `json:"size_bytes"`
	StoredBytes int64      `json:"stored_bytes,omitempty"`
	AvailableAt *time.Time `json:"available_at,omitempty"`
	DeletedAt   *time.Time `json:"deleted_at,omitempty"`
}

// LineItem is one charge: a volume's retained GB of one kind ("snapshot" or "backup") during one hour.
// IdempotencyKey ("vol1/backup/2026-11-23T14") is unique per (volume, kind, hour): every sink uses it so
// that re-running an hour never charges twice.
type LineItem struct {
	IdempotencyKey string    `json:"idempotency_key"`
	VolumeID       string    `json:"volume_id"`
	OwnerID        string    `json:"owner_id"`
	PlanID         string    `json:"plan_id"`
	Kind           string    `json:"kind"`
	Hour           time.Time `json:"hour"`
	// Items is how many available items were counted.
	Items int     `json:"items"`
	GB    float64 `json:"gb"`
	// CreditValue is the plan's credits per GB-month; Credits = GB × CreditValue ÷ hours in the month.
	CreditValue float64 `json:"credit_value"`
	Credits     float64 `json:"credits"`
}

// LineItemKey is the idempotency key of (volume, kind, hour).
func LineItemKey(volumeID, kind string, hour time.Time) string {
	return volumeID + "/" + kind + "/" + hour.UTC().Format("2006-01-02T15")
}

// EmitInput hands line items to a sink (activities workflows.ActivityBillingWriteLedger and
// workflows.ActivityBillingPostWebhook).
type EmitInput struct {
	Hour  time.Time  `json:"hour"`
	Items []LineItem `json:"items"`
}

// EmitResult says how many items a sink newly accepted.
type EmitResult struct {
	Written int `json:"written"`
}
