package workflows

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/holdfast/holdfast/activities/billing/contract"
)

// An hour bills the items that existed in it, whenever it is billed: a backfilled hour does not bill a backup
// made since, and still bills one deleted since.
func TestBillingAnHourBillsWhatExistedInIt(t *testing.T) {
	at := func(s string) *time.Time {
		ts, err := time.Parse(time.RFC3339, s)
		require.NoError(t, err)
		return &ts
	}
	plan := contract.Prices{PlanID: "standard", BackupCreditValue: 10}
	v := contract.VolumeUsage{VolumeID: "vol1", OwnerID: "acct-1", Plan: plan, Backups: []contract.ItemUsage{
		{ItemID: "old", Status: string(StatusAvailable), StoredBytes: BytesPerGB, AvailableAt: at("2026-11-23T08:10:00Z")},
		{ItemID: "new", Status: string(StatusAvailable), StoredBytes: 2 * BytesPerGB, AvailableAt: at("2026-11-23T12:30:00Z")},
		{ItemID: "gone", Status: string(StatusAvailable), StoredBytes: 4 * BytesPerGB, AvailableAt: at("2026-11-23T09:00:00Z"),
			DeletedAt: at("2026-11-23T11:30:00Z")},
	}}
	gb := func(hour string) float64 {
		items := LineItems(*at(hour), []contract.VolumeUsage{v})
		require.Len(t, items, 1, hour)
		return items[0].GB
	}
	assert.InDelta(t, 1, gb("2026-11-23T08:00:00Z"), 1e-9, "only the old backup existed")
	assert.InDelta(t, 5, gb("2026-11-23T10:00:00Z"), 1e-9, "old + the one deleted later")
	assert.InDelta(t, 5, gb("2026-11-23T11:00:00Z"), 1e-9, "deleted during the hour: it existed in it")
	assert.InDelta(t, 3, gb("2026-11-23T12:00:00Z"), 1e-9, "new arrived during the hour; gone is gone")
	assert.Empty(t, LineItems(*at("2026-11-23T07:00:00Z"), []contract.VolumeUsage{v}), "nothing existed yet")
}

// A deleted backup is remembered (for keepGone) with when it became available and when it went, so usage
// read after the delete still bills the hours it existed in.
func TestDeletedItemsStayBillableForTheHoursTheyExisted(t *testing.T) {
	h := newHarness(t)
	h.mockHypervisor()
	spec := testSpec()
	spec.Cooldown = 0
	var bk, del *reply
	var st VolumeState
	h.at(time.Second, func() { h.register(spec) })
	h.at(2*time.Second, func() { bk = h.request(OperationRequest{Kind: KindBackup, Name: "b"}) })
	h.at(3*time.Hour, func() {
		del = h.request(OperationRequest{Kind: KindDelete, BackupID: bk.op.ItemID, Confirm: "b"})
	})
	h.at(4*time.Hour, func() { st = h.state() })
	h.run(5*time.Hour, VolumeInput{})
	requireAccepted(t, del)
	require.Empty(t, st.Backups)
	require.Len(t, st.GoneBackups, 1)
	g := st.GoneBackups[0]
	require.NotNil(t, g.AvailableAt)
	require.NotNil(t, g.DeletedAt)
	u := UsageOf(st)
	hourBefore := g.DeletedAt.Add(-time.Hour).Truncate(time.Hour)
	assert.Len(t, LineItems(hourBefore, []contract.VolumeUsage{u}), 1, "the hour before the delete bills it")
	assert.Empty(t, LineItems(g.DeletedAt.Add(time.Hour).Truncate(time.Hour), []contract.VolumeUsage{u}),
		"the hour after the delete does not")
}
