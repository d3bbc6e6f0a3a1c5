package workflows

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func items(times ...string) []Item {
	var out []Item
	for i, s := range times {
		ts, err := time.Parse(time.RFC3339, s)
		if err != nil {
			panic(err)
		}
		out = append(out, Item{ItemID: fmt.Sprintf("i%02d", i), Name: s, Status: StatusAvailable, CreatedAt: ts,
			Scheduled: true})
	}
	return out
}

func names(items []Item) string {
	var out []string
	for _, it := range items {
		out = append(out, it.Name)
	}
	return strings.Join(out, " ")
}

func TestRetentionRules(t *testing.T) {
	// Two a day (01:00 and 13:00 UTC) from Monday 2026-01-05 to Sunday 2026-01-25: three ISO weeks.
	var ts []string
	for d := 5; d <= 25; d++ {
		ts = append(ts, fmt.Sprintf("2026-01-%02dT01:00:00Z", d), fmt.Sprintf("2026-01-%02dT13:00:00Z", d))
	}
	all := items(ts...)
	kept := func(r Retention) string {
		exp := map[string]bool{}
		for _, it := range r.Expired(all, "") {
			exp[it.ItemID] = true
		}
		var k []Item
		for _, it := range all {
			if !exp[it.ItemID] {
				k = append(k, it)
			}
		}
		return names(k)
	}
	assert.Equal(t, "2026-01-25T01:00:00Z 2026-01-25T13:00:00Z", kept(Retention{KeepLast: 2}))
	assert.Equal(t, "2026-01-23T13:00:00Z 2026-01-24T13:00:00Z 2026-01-25T13:00:00Z", kept(Retention{KeepDaily: 3}))
	// The newest of each of the last two ISO weeks (weeks end on Sunday).
	assert.Equal(t, "2026-01-18T13:00:00Z 2026-01-25T13:00:00Z", kept(Retention{KeepWeekly: 2}))
	assert.Equal(t, "2026-01-25T13:00:00Z", kept(Retention{KeepMonthly: 3}), "one month of items")
	// Rules combine (a union); keep_last 1 and keep_daily 2 overlap on the newest.
	assert.Equal(t, "2026-01-24T13:00:00Z 2026-01-25T13:00:00Z", kept(Retention{KeepLast: 1, KeepDaily: 2}))
	// Days are the policy's: in Los Angeles (UTC-8) 01:00Z is still the previous evening, so a day holds
	// its 13:00Z item and the next 01:00Z one, which is that day's newest.
	assert.Equal(t, "2026-01-24T01:00:00Z 2026-01-25T01:00:00Z 2026-01-25T13:00:00Z",
		kept(Retention{KeepDaily: 3, TimeZone: "America/Los_Angeles"}))
	assert.Empty(t, Retention{}.Expired(all, ""), "no rules: keep everything (the plan cap still applies)")
	// Expired items come oldest first, which is the order they are deleted in.
	exp := Retention{KeepLast: 40}.Expired(all, "")
	assert.Equal(t, "2026-01-05T01:00:00Z 2026-01-05T13:00:00Z", names(exp))

	// The item being created counts as the newest and is never expired; manual and failed items are never
	// candidates.
	mixed := items("2026-01-01T01:00:00Z", "2026-01-02T01:00:00Z", "2026-01-03T01:00:00Z")
	mixed[0].Scheduled = false
	mixed[1].Status = StatusFailed
	mixed = append(mixed, Item{ItemID: "new", Name: "new", Status: StatusCreating, Scheduled: true})
	assert.Equal(t, "2026-01-03T01:00:00Z", names(Retention{KeepLast: 1}.Expired(mixed, "new")))
	victims, ok := Retention{KeepLast: 5}.Evictions(mixed, "new", 1)
	assert.True(t, ok)
	assert.Equal(t, "2026-01-03T01:00:00Z", names(victims), "the cap wins over keep_last")
	_, ok = Retention{KeepLast: 5}.Evictions(mixed, "new", 2)
	assert.False(t, ok, "manual and failed items are never evicted")
}
