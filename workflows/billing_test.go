package workflows_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/holdfast/holdfast/activities/billing"
	"github.com/holdfast/holdfast/activities/billing/contract"
	"github.com/holdfast/holdfast/workflows"
)

const gib = int64(1) << 30

var hourNov = time.Date(2026, 11, 23, 14, 0, 0, 0, time.UTC) // November: 30 days = 720 h

// billingRun runs BillingWorkflow in the test environment over canned usage pages (one per activity call,
// chained by page token) and the real ledger and webhook activities.
type billingRun struct {
	t       *testing.T
	sinks   billing.SinkConfig
	pages   [][]contract.VolumeUsage
	prepare func(*testsuite.TestWorkflowEnvironment)
}

func (r billingRun) run(in workflows.BillingInput) (workflows.BillingResult, error) {
	r.t.Helper()
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	env.RegisterWorkflow(workflows.BillingWorkflow)
	pages := r.pages
	env.RegisterActivityWithOptions(func(_ context.Context, in contract.UsageInput) (contract.UsagePage, error) {
		i := 0
		if len(in.NextPageToken) > 0 {
			i = int(in.NextPageToken[0])
		}
		page := contract.UsagePage{}
		if i < len(pages) {
			page.Volumes = pages[i]
		}
		if i+1 < len(pages) {
			page.NextPageToken = []byte{byte(i + 1)}
		}
		return page, nil
	}, activity.RegisterOptions{Name: workflows.ActivityBillingUsage})
	// A fresh Activities per run: the ledger is reopened, as after a process restart.
	acts, err := billing.New(nil, nil, r.sinks)
	require.NoError(r.t, err)
	defer acts.Close()
	env.RegisterActivityWithOptions(acts.BillingWriteLedger, activity.RegisterOptions{Name: workflows.ActivityBillingWriteLedger})
	env.RegisterActivityWithOptions(acts.BillingPostWebhook, activity.RegisterOptions{Name: workflows.ActivityBillingPostWebhook})
	if r.prepare != nil {
		r.prepare(env)
	}
	env.ExecuteWorkflow(workflows.BillingWorkflow, in)
	require.True(r.t, env.IsWorkflowCompleted())
	var res workflows.BillingResult
	if err := env.GetWorkflowError(); err != nil {
		return res, err
	}
	require.NoError(r.t, env.GetWorkflowResult(&res))
	return res, nil
}

func readLedger(t *testing.T, path string) []contract.LineItem {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	var out []contract.LineItem
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var it contract.LineItem
		require.NoError(t, json.Unmarshal(sc.Bytes(), &it), sc.Text())
		out = append(out, it)
	}
	require.NoError(t, sc.Err())
	return out
}

func byKey(items []contract.LineItem) map[string]contract.LineItem {
	m := map[string]contract.LineItem{}
	for _, it := range items {
		m[it.IdempotencyKey] = it
	}
	return m
}

func item(itemID string, status workflows.Status, size, stored int64) contract.ItemUsage {
	return contract.ItemUsage{ItemID: itemID, Status: string(status), SizeBytes: size, StoredBytes: stored}
}

func ledgerPath(t *testing.T) string { return filepath.Join(t.TempDir(), "billing", "ledger.jsonl") }

func TestBillingOnlyAvailableItemsAreBilled(t *testing.T) {
	path := ledgerPath(t)
	vol := contract.VolumeUsage{VolumeID: "vol1", OwnerID: "acct-1",
		Plan: contract.Prices{PlanID: "standard", SnapshotCreditValue: 1, BackupCreditValue: 1},
		Snapshots: []contract.ItemUsage{
			item("s-ok", workflows.StatusAvailable, 2*gib, 0),
			item("s-pending", workflows.StatusPending, 100*gib, 0),
			item("s-creating", workflows.StatusCreating, 100*gib, 0),
			item("s-restoring", workflows.StatusRestoring, 100*gib, 0),
			item("s-deleting", workflows.StatusDeleting, 100*gib, 0),
			item("s-failed", workflows.StatusFailed, 100*gib, 0),
			item("s-aborted", workflows.StatusAborted, 100*gib, 0),
		},
		Backups: []contract.ItemUsage{
			item("b-ok", workflows.StatusAvailable, 64*gib, 3*gib),
			item("b-pending", workflows.StatusPending, 64*gib, 50*gib),
			item("b-creating", workflows.StatusCreating, 64*gib, 50*gib),
			item("b-failed", workflows.StatusFailed, 64*gib, 50*gib),
			item("b-deleting", workflows.StatusDeleting, 64*gib, 50*gib),
		}}
	// A volume whose only items are not available yields no line item at all (0 GB is never emitted).
	pendingOnly := contract.VolumeUsage{VolumeID: "vol2", OwnerID: "acct-2", Plan: contract.Prices{PlanID: "standard"},
		Snapshots: []contract.ItemUsage{item("s", workflows.StatusCreating, gib, 0)},
		Backups:   []contract.ItemUsage{item("b", workflows.StatusPending, gib, gib)}}
	res, err := billingRun{t: t, sinks: billing.SinkConfig{LedgerPath: path},
		pages: [][]contract.VolumeUsage{{vol, pendingOnly}}}.run(workflows.BillingInput{Hour: hourNov})
	require.NoError(t, err)
	assert.Equal(t, 2, res.Volumes)
	assert.Equal(t, 2, res.LedgerWritten)

	got := byKey(readLedger(t, path))
	require.Len(t, got, 2)
	snap := got["vol1/snapshot/2026-11-23T14"]
	assert.Equal(t, 2.0, snap.GB, "snapshots bill SizeBytes of available items only")
	assert.Equal(t, 1, snap.Items)
	backup := got["vol1/backup/2026-11-23T14"]
	assert.Equal(t, 3.0, backup.GB, "backups bill StoredBytes of available items only")
	assert.Equal(t, 1, backup.Items)
	assert.Equal(t, "acct-1", backup.OwnerID)
	assert.Equal(t, "standard", backup.PlanID)
	assert.Equal(t, hourNov, backup.Hour)
}

func TestBillingCreditsPerGBMonthFor30And31DayMonths(t *testing.T) {
	assert.Equal(t, 720, workflows.HoursInMonth(hourNov))
	assert.Equal(t, 744, workflows.HoursInMonth(time.Date(2026, 12, 31, 23, 0, 0, 0, time.UTC)))
	assert.Equal(t, 672, workflows.HoursInMonth(time.Date(2027, 2, 1, 0, 0, 0, 0, time.UTC)))
	assert.Equal(t, 696, workflows.HoursInMonth(time.Date(2028, 2, 29, 5, 0, 0, 0, time.UTC)))

	vol := contract.VolumeUsage{VolumeID: "vol1", OwnerID: "acct-1",
		Plan: contract.Prices{PlanID: "pro", SnapshotCreditValue: 7.2, BackupCreditValue: 14.88},
		Snapshots: []contract.ItemUsage{item("s1", workflows.StatusAvailable, 4*gib, 0),
			item("s2", workflows.StatusAvailable, 6*gib, 0)},
		Backups: []contract.ItemUsage{item("b1", workflows.StatusAvailable, 64*gib, 5*gib)}}
	for _, tc := range []struct {
		name                 string
		hour                 time.Time
		snapCredits, backups float64
	}{
		// 10 GB × 7.2 ÷ 720 h, 5 GB × 14.88 ÷ 720 h
		{"30 days", hourNov, 0.1, 5 * 14.88 / 720},
		// 10 GB × 7.2 ÷ 744 h, 5 GB × 14.88 ÷ 744 h = 0.1
		{"31 days", time.Date(2026, 12, 5, 3, 0, 0, 0, time.UTC), 72.0 / 744, 0.1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := ledgerPath(t)
			_, err := billingRun{t: t, sinks: billing.SinkConfig{LedgerPath: path},
				pages: [][]contract.VolumeUsage{{vol}}}.run(workflows.BillingInput{Hour: tc.hour})
			require.NoError(t, err)
			got := byKey(readLedger(t, path))
			snap := got[contract.LineItemKey("vol1", string(workflows.KindSnapshot), tc.hour)]
			assert.InDelta(t, tc.snapCredits, snap.Credits, 1e-12)
			assert.Equal(t, 10.0, snap.GB)
			assert.Equal(t, 7.2, snap.CreditValue)
			backup := got[contract.LineItemKey("vol1", string(workflows.KindBackup), tc.hour)]
			assert.InDelta(t, tc.backups, backup.Credits, 1e-12)
			assert.Equal(t, 5.0, backup.GB)
		})
	}
}

func TestBillingZeroCreditValuesEmitFreeItems(t *testing.T) {
	path := ledgerPath(t)
	vol := contract.VolumeUsage{VolumeID: "vol1", OwnerID: "acct-1", Plan: contract.Prices{PlanID: "default"},
		Snapshots: []contract.ItemUsage{item("s1", workflows.StatusAvailable, gib, 0)},
		Backups:   []contract.ItemUsage{item("b1", workflows.StatusAvailable, 8*gib, gib/2)}}
	_, err := billingRun{t: t, sinks: billing.SinkConfig{LedgerPath: path},
		pages: [][]contract.VolumeUsage{{vol}}}.run(workflows.BillingInput{Hour: hourNov})
	require.NoError(t, err)
	got := readLedger(t, path)
	require.Len(t, got, 2, "free plans still record usage")
	for _, it := range got {
		assert.Zero(t, it.Credits, it.IdempotencyKey)
		assert.Positive(t, it.GB, it.IdempotencyKey)
	}
}

func TestBillingRerunOfAnHourChargesNothingNew(t *testing.T) {
	path := ledgerPath(t)
	r := billingRun{t: t, sinks: billing.SinkConfig{LedgerPath: path}, pages: [][]contract.VolumeUsage{
		{{VolumeID: "vol1", OwnerID: "acct-1", Plan: contract.Prices{PlanID: "p", SnapshotCreditValue: 1},
			Snapshots: []contract.ItemUsage{item("s1", workflows.StatusAvailable, gib, 0)}}},
		{{VolumeID: "vol2", OwnerID: "acct-2", Plan: contract.Prices{PlanID: "p", BackupCreditValue: 1},
			Backups: []contract.ItemUsage{item("b1", workflows.StatusAvailable, gib, gib)}}},
	}}
	first, err := r.run(workflows.BillingInput{Hour: hourNov, PageSize: 1})
	require.NoError(t, err)
	assert.Equal(t, 2, first.LedgerWritten)
	before, err := os.ReadFile(path)
	require.NoError(t, err)

	// Same hour again (a retried schedule action, a manual re-run), with the ledger reopened.
	second, err := r.run(workflows.BillingInput{Hour: hourNov.Add(17 * time.Minute), PageSize: 1})
	require.NoError(t, err)
	assert.Equal(t, 2, second.LineItems)
	assert.Zero(t, second.LedgerWritten)
	after, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, string(before), string(after))
}

func TestBillingTwoHoursAreBothBilled(t *testing.T) {
	path := ledgerPath(t)
	r := billingRun{t: t, sinks: billing.SinkConfig{LedgerPath: path}, pages: [][]contract.VolumeUsage{{
		{VolumeID: "vol1", OwnerID: "acct-1", Plan: contract.Prices{PlanID: "p", SnapshotCreditValue: 1},
			Snapshots: []contract.ItemUsage{item("s1", workflows.StatusAvailable, gib, 0)}}}}}
	for _, h := range []time.Time{hourNov, hourNov.Add(time.Hour)} {
		res, err := r.run(workflows.BillingInput{Hour: h})
		require.NoError(t, err)
		assert.Equal(t, 1, res.LedgerWritten)
	}
	keys := []string{}
	for _, it := range readLedger(t, path) {
		keys = append(keys, it.IdempotencyKey)
	}
	assert.Equal(t, []string{"vol1/snapshot/2026-11-23T14", "vol1/snapshot/2026-11-23T15"}, keys)
}

func TestBillingScheduledRunBillsThePreviousHour(t *testing.T) {
	oneVolume := [][]contract.VolumeUsage{{{VolumeID: "vol1", OwnerID: "acct-1", Plan: contract.Prices{PlanID: "p"},
		Snapshots: []contract.ItemUsage{item("s1", workflows.StatusAvailable, gib, 0)}}}}
	t.Run("schedule nominal time", func(t *testing.T) {
		scheduled := time.Date(2026, 11, 23, 15, 0, 0, 0, time.UTC)
		res, err := billingRun{t: t, pages: oneVolume, prepare: func(env *testsuite.TestWorkflowEnvironment) {
			// A buffered action starts late: the nominal time, not the clock, decides the hour.
			env.SetStartTime(scheduled.Add(3 * time.Hour))
			require.NoError(t, env.SetTypedSearchAttributesOnStart(temporal.NewSearchAttributes(
				temporal.NewSearchAttributeKeyTime(workflows.SearchScheduledStartTime).ValueSet(scheduled))))
		}}.run(workflows.BillingInput{})
		require.NoError(t, err)
		assert.Equal(t, hourNov, res.Hour)
	})
	t.Run("no schedule: the clock", func(t *testing.T) {
		res, err := billingRun{t: t, pages: oneVolume, prepare: func(env *testsuite.TestWorkflowEnvironment) {
			env.SetStartTime(time.Date(2026, 11, 23, 15, 42, 0, 0, time.UTC))
		}}.run(workflows.BillingInput{})
		require.NoError(t, err)
		assert.Equal(t, hourNov, res.Hour)
	})
}

// webhookServer answers with the given status codes in turn (then 200) and records every request.
type webhookServer struct {
	mu       sync.Mutex
	codes    []int
	keys     []string
	auth     []string
	received []billing.Body
}

func (s *webhookServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b billing.Body
	_ = json.NewDecoder(r.Body).Decode(&b)
	s.received = append(s.received, b)
	s.keys = append(s.keys, r.Header.Get("Idempotency-Key"))
	s.auth = append(s.auth, r.Header.Get("Authorization"))
	code := http.StatusOK
	if len(s.codes) > 0 {
		code, s.codes = s.codes[0], s.codes[1:]
	}
	w.WriteHeader(code)
}

func TestBillingWebhookRetriesWithTheSameIdempotencyKey(t *testing.T) {
	oneVolume := [][]contract.VolumeUsage{{{VolumeID: "vol1", OwnerID: "acct-1", Plan: contract.Prices{PlanID: "p"},
		Snapshots: []contract.ItemUsage{item("s1", workflows.StatusAvailable, gib, 0)},
		Backups:   []contract.ItemUsage{item("b1", workflows.StatusAvailable, gib, gib)}}}}
	for _, tc := range []struct {
		name     string
		codes    []int
		requests int
		rejected bool
	}{
		{"503 then success", []int{503, 503}, 3, false},
		{"429 and connection-level 502 are retried", []int{429, 502}, 3, false},
		{"409 is already recorded", []int{409}, 1, false},
		{"400 is never retried", []int{400}, 1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &webhookServer{codes: tc.codes}
			srv := httptest.NewServer(s)
			defer srv.Close()
			res, err := billingRun{t: t, pages: oneVolume,
				sinks: billing.SinkConfig{WebhookURL: srv.URL, WebhookToken: "s3cret"}}.run(workflows.BillingInput{Hour: hourNov})
			require.Len(t, s.keys, tc.requests)
			if tc.rejected {
				assert.True(t, hasErrorType(err, contract.ErrWebhookRejected), "%v", err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, 2, res.WebhookPosted)
			for i := range s.keys {
				assert.NotEmpty(t, s.keys[i])
				assert.Equal(t, s.keys[0], s.keys[i], "same key on every retry")
				assert.Equal(t, "Bearer s3cret", s.auth[i])
				require.Len(t, s.received[i].Items, 2)
				assert.Equal(t, "vol1/backup/2026-11-23T14", s.received[i].Items[0].IdempotencyKey)
			}
		})
	}
}

// hasErrorType walks the whole chain: the workflow wraps the activity's typed error.
func hasErrorType(err error, errType string) bool {
	for ; err != nil; err = errors.Unwrap(err) {
		var app *temporal.ApplicationError
		if errors.As(err, &app) && app.Type() == errType {
			return true
		}
		if app != nil {
			err = app
		}
	}
	return false
}

func TestLineItemsAreDeterministic(t *testing.T) {
	vols := []contract.VolumeUsage{
		{VolumeID: "b", Plan: contract.Prices{SnapshotCreditValue: 3}, Snapshots: []contract.ItemUsage{item("x", workflows.StatusAvailable, gib/3, 0)}},
		{VolumeID: "a", Plan: contract.Prices{BackupCreditValue: 3}, Backups: []contract.ItemUsage{item("y", workflows.StatusAvailable, gib, gib/7)}},
	}
	first := workflows.LineItems(hourNov.Add(59*time.Minute), vols)
	require.Len(t, first, 2)
	assert.Equal(t, "a/backup/2026-11-23T14", first[0].IdempotencyKey, "sorted by key, hour truncated")
	assert.Equal(t, first, workflows.LineItems(hourNov, []contract.VolumeUsage{vols[1], vols[0]}))
	assert.False(t, math.IsNaN(first[1].Credits))
}
