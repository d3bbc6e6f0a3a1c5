package workflows

import (
	"fmt"
	"sort"
	"time"

	// Retention buckets items by calendar day in the policy's time zone inside workflow code. Embedding the
	// zone database makes time.LoadLocation answer the same on every worker, whatever the host has installed.
	_ "time/tzdata"
)

// Retention is what a scheduled request carries so the volume can apply its policy's retention without I/O.
type Retention struct {
	KeepLast    int    `json:"keep_last,omitempty"`
	KeepDaily   int    `json:"keep_daily,omitempty"`
	KeepWeekly  int    `json:"keep_weekly,omitempty"`
	KeepMonthly int    `json:"keep_monthly,omitempty"`
	TimeZone    string `json:"time_zone,omitempty"`
}

func (r Retention) keepsAll() bool {
	return r.KeepLast == 0 && r.KeepDaily == 0 && r.KeepWeekly == 0 && r.KeepMonthly == 0
}

func (r Retention) location() *time.Location {
	if r.TimeZone == "" {
		return time.UTC
	}
	loc, err := time.LoadLocation(r.TimeZone) // embedded tzdata: the same answer on every worker
	if err != nil {
		return time.UTC
	}
	return loc
}

// retentionCandidates are the items retention may judge: scheduled and available, plus the item being created
// right now (current), which counts as the newest. Manual items are never candidates.
func retentionCandidates(items []Item, current string) []Item {
	var out []Item
	for _, it := range items {
		if it.Scheduled && (it.Status == StatusAvailable || it.ItemID == current) {
			out = append(out, it)
		}
	}
	// Newest first; the item id breaks ties so the order never depends on anything but the state.
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].ItemID == current || out[j].ItemID == current {
			return out[i].ItemID == current && out[j].ItemID != current
		}
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.After(out[j].CreatedAt)
		}
		return out[i].ItemID > out[j].ItemID
	})
	return out
}

// Expired returns, oldest first, the scheduled available items of one kind that the retention rules do not
// keep (restic's "forget" semantics): the newest KeepLast, plus the newest item of each of the newest
// KeepDaily days, KeepWeekly ISO weeks and KeepMonthly months (calendar of r.TimeZone). current is the item
// being created now: it counts as the newest and is never expired. All rules zero keeps everything.
func (r Retention) Expired(items []Item, current string) []Item {
	if r.keepsAll() {
		return nil
	}
	loc := r.location()
	// keep_last counts every item; each calendar rule counts an item only when it opens a new bucket (items
	// come newest first, so the one kept per bucket is that bucket's newest). Bucket names are never "".
	rules := []struct {
		n      int
		bucket func(time.Time) string
	}{
		{r.KeepDaily, func(t time.Time) string { return t.Format("2006-01-02") }},
		{r.KeepWeekly, func(t time.Time) string { y, w := t.ISOWeek(); return fmt.Sprintf("%d-W%02d", y, w) }},
		{r.KeepMonthly, func(t time.Time) string { return t.Format("2006-01") }},
	}
	counts := make([]int, len(rules))
	last := make([]string, len(rules))
	kept := 0
	var expired []Item
	for _, it := range retentionCandidates(items, current) {
		keep := it.ItemID == current
		if kept < r.KeepLast {
			kept++
			keep = true
		}
		t := it.CreatedAt.In(loc)
		for k, rule := range rules {
			if b := rule.bucket(t); counts[k] < rule.n && b != last[k] {
				counts[k]++
				last[k] = b
				keep = true
			}
		}
		if !keep {
			expired = append(expired, it)
		}
	}
	// Oldest first: that is the order they are deleted in.
	for i, j := 0, len(expired)-1; i < j; i, j = i+1, j-1 {
		expired[i], expired[j] = expired[j], expired[i]
	}
	return expired
}

// Evictions returns the items to delete, oldest first, so that a scheduled item can be created at the plan
// cap: need items, taken first from what retention no longer keeps, then from the oldest other scheduled
// available items (the plan cap is a hard limit and wins over a retention that asks for more). Manual items
// are never chosen. ok is false when not enough scheduled items exist.
func (r Retention) Evictions(items []Item, current string, need int) (victims []Item, ok bool) {
	if need <= 0 {
		return nil, true
	}
	chosen := map[string]bool{}
	for _, it := range r.Expired(items, current) {
		if len(victims) == need {
			break
		}
		victims = append(victims, it)
		chosen[it.ItemID] = true
	}
	candidates := retentionCandidates(items, current)
	for i := len(candidates) - 1; i >= 0 && len(victims) < need; i-- {
		if it := candidates[i]; it.ItemID != current && !chosen[it.ItemID] {
			victims = append(victims, it)
			chosen[it.ItemID] = true
		}
	}
	sort.SliceStable(victims, func(i, j int) bool { return victims[i].CreatedAt.Before(victims[j].CreatedAt) })
	return victims, len(victims) == need
}
