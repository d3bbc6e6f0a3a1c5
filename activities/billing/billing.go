// Package billing holds the side effects of hourly billing (workflows.BillingWorkflow): listing the volumes
// through the Temporal client, reading each one's retained items through the UsageFunc it is given, and
// emitting line items to the sinks, a JSON-lines ledger file and an HTTP webhook to the panel.
//
// It owns delivery and the activity contract (types.go), never pricing: what is billable and how much is
// decided by workflows.LineItems (deterministic, tested in one place), which takes the contract from here.
// Every sink is idempotent by line-item key, so a retried activity or a re-run hour never charges twice. It
// sits below workflows/ and must never import it: how a volume's state becomes usage is supplied by the
// worker that registers these activities (workers.StartBilling).
package billing

import (
	"context"
	"fmt"
	"net/url"
	"sort"
	"sync"
	"time"

	workflowservice "go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"

	"github.com/holdfast/holdfast/activities/billing/contract"
)

// SinkConfig says where line items go. Both sinks may be set; an empty field disables its sink.
type SinkConfig struct {
	// LedgerPath is the JSON-lines ledger file (created with its directory if missing).
	LedgerPath string
	// WebhookURL receives POSTed batches of line items.
	WebhookURL string
	// WebhookToken is sent as "Authorization: Bearer <token>" (never logged).
	WebhookToken string
}

// Activities are billing's control-plane activities (task queue workflows.TaskQueue). Their method names
// are the activity names in workflows (ActivityBillingUsage, ActivityBillingWriteLedger,
// ActivityBillingPostWebhook), so registering the struct registers exactly those.
type Activities struct {
	temporal client.Client
	usage    UsageFunc
	ledger   *Ledger
	webhook  *Webhook
	// queryConcurrency bounds usage reads (state queries) in flight per usage page.
	queryConcurrency int
}

// UsageFunc reads one volume's usage by the ID of its entity workflow (listed by BillingUsage). A nil usage
// with a nil error leaves the volume out of the page; an error fails the page, which is retried. It is
// called concurrently and must be read-only.
type UsageFunc func(ctx context.Context, workflowID string) (*contract.VolumeUsage, error)

// New returns the billing activities over a connected Temporal client, the way to read one volume's usage
// and the configured sinks. It opens the ledger (indexing the keys it holds) and validates the webhook URL,
// so misconfiguration fails at start. c and usage may be nil where BillingUsage never runs (the sinks
// alone).
func New(c client.Client, usage UsageFunc, cfg SinkConfig) (*Activities, error) {
	a := &Activities{temporal: c, usage: usage, queryConcurrency: 8}
	if cfg.LedgerPath != "" {
		l, err := OpenLedger(cfg.LedgerPath)
		if err != nil {
			return nil, fmt.Errorf("billing ledger_path: %w", err)
		}
		a.ledger = l
	}
	if cfg.WebhookURL != "" {
		u, err := url.Parse(cfg.WebhookURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("billing webhook_url: want an http(s) URL, got %q", cfg.WebhookURL)
		}
		a.webhook = NewWebhook(cfg.WebhookURL, cfg.WebhookToken)
	}
	return a, nil
}

// Close releases the ledger file.
func (a *Activities) Close() error {
	if a.ledger != nil {
		return a.ledger.Close()
	}
	return nil
}

// volumeListQuery finds volume entity workflows. Running ones, plus runs that continued-as-new within the
// last two hours: right after a continue-as-new, visibility may still show the old run closed and not yet
// the new one, and a volume must not drop out of an hour's bill for that (duplicates are removed by
// workflow ID; the state query always reaches the latest run).
func volumeListQuery(now time.Time) string {
	return fmt.Sprintf(`WorkflowType = "VolumeWorkflow" AND (ExecutionStatus = "Running" OR `+
		`(ExecutionStatus = "ContinuedAsNew" AND CloseTime > "%s"))`, now.Add(-2*time.Hour).UTC().Format(time.RFC3339))
}

// BillingUsage lists one page of volume workflows and reads each one's usage (activity
// workflows.ActivityBillingUsage). Read-only, so idempotent. Volumes whose usage is nil are left out
// (never-registered volumes and workflows that have vanished; a deregistered volume is not: an hour billed
// late still bills what it held then); any other read error fails the page, which is retried: billing a
// partial set of volumes silently would lose revenue.
func (a *Activities) BillingUsage(ctx context.Context, in contract.UsageInput) (contract.UsagePage, error) {
	pageSize := in.PageSize
	if pageSize <= 0 {
		pageSize = contract.DefaultPageSize
	}
	resp, err := a.temporal.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{
		PageSize: int32(pageSize), NextPageToken: in.NextPageToken, Query: volumeListQuery(time.Now()),
	})
	if err != nil {
		return contract.UsagePage{}, fmt.Errorf("list volumes: %w", err)
	}
	seen := map[string]bool{}
	var ids []string
	for _, ex := range resp.GetExecutions() {
		id := ex.GetExecution().GetWorkflowId()
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	usage := make([]*contract.VolumeUsage, len(ids))
	errs := make([]error, len(ids))
	sem := make(chan struct{}, max(a.queryConcurrency, 1))
	var wg sync.WaitGroup
	for i, id := range ids {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			usage[i], errs[i] = a.usage(ctx, id)
			activity.RecordHeartbeat(ctx, i)
		})
	}
	wg.Wait()
	page := contract.UsagePage{NextPageToken: resp.GetNextPageToken()}
	for i, u := range usage {
		if errs[i] != nil {
			return contract.UsagePage{}, fmt.Errorf("query %s: %w", ids[i], errs[i])
		}
		if u != nil {
			page.Volumes = append(page.Volumes, *u)
		}
	}
	return page, nil
}

// BillingWriteLedger appends the items whose keys the ledger does not hold yet (activity
// workflows.ActivityBillingWriteLedger). Idempotent by key; a no-op when no ledger is configured.
func (a *Activities) BillingWriteLedger(ctx context.Context, in contract.EmitInput) (contract.EmitResult, error) {
	if a.ledger == nil {
		return contract.EmitResult{}, nil
	}
	n, err := a.ledger.Append(in.Items)
	return contract.EmitResult{Written: n}, err
}

// BillingPostWebhook posts the items to the panel (activity workflows.ActivityBillingPostWebhook).
// Idempotent through the Idempotency-Key header and each item's idempotency_key; a no-op when no webhook is
// configured.
func (a *Activities) BillingPostWebhook(ctx context.Context, in contract.EmitInput) (contract.EmitResult, error) {
	if a.webhook == nil {
		return contract.EmitResult{}, nil
	}
	if err := a.webhook.Post(ctx, in); err != nil {
		return contract.EmitResult{}, err
	}
	return contract.EmitResult{Written: len(in.Items)}, nil
}
