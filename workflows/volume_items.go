package workflows

import (
	"strings"
	"time"
)

// items is the volume's list of snapshots or of backups.
func (v *volume) items(kind Kind) *[]Item {
	if kind == KindBackup {
		return &v.st.Backups
	}
	return &v.st.Snapshots
}

func (v *volume) item(kind Kind, itemID string) (*Item, error) {
	list := *v.items(kind)
	for i := range list {
		if list[i].ItemID == itemID {
			return &list[i], nil
		}
	}
	return nil, errNotFound("%s %s not found on volume %s.", strings.ToUpper(string(kind[:1]))+string(kind[1:]),
		itemID, v.volumeID)
}

// countLive counts the items a plan cap applies to: everything not failed.
func countLive(items []Item) int {
	n := 0
	for _, it := range items {
		if it.Status != StatusFailed {
			n++
		}
	}
	return n
}

func itemID(kind Kind, operationID string) string {
	if kind == KindSnapshot {
		return "snap-" + operationID
	}
	return "bk-" + operationID
}

// removeItem drops an item that is gone from its storage at now; one that was available is remembered in
// Gone for billing.
func (v *volume) removeItem(kind Kind, itemID string, now time.Time) {
	list := v.items(kind)
	kept := (*list)[:0]
	for _, it := range *list {
		if it.ItemID != itemID {
			kept = append(kept, it)
			continue
		}
		v.gone(kind, it, now)
	}
	*list = kept
}

// keepGone is how long deleted items stay in Gone: longer than any billing run can be late (a month's
// invoice closes within days of its end).
const keepGone = 40 * 24 * time.Hour

// gone remembers a deleted item for billing (when it had been available), and forgets the ones past keepGone.
func (v *volume) gone(kind Kind, it Item, now time.Time) {
	list := &v.st.GoneBackups
	if kind == KindSnapshot {
		list = &v.st.GoneSnapshots
	}
	if it.AvailableAt != nil || it.Status == StatusAvailable || it.Status == StatusDeleting {
		if it.AvailableAt == nil {
			it.AvailableAt = &it.CreatedAt // recorded before AvailableAt existed
		}
		gone := Item{ItemID: it.ItemID, Name: it.Name, Status: StatusAvailable, CreatedAt: it.CreatedAt,
			SizeBytes: it.SizeBytes, StoredBytes: it.StoredBytes, Storage: it.Storage,
			AvailableAt: it.AvailableAt, DeletedAt: &now}
		*list = append(*list, gone)
	}
	kept := (*list)[:0]
	for _, g := range *list {
		if now.Sub(*g.DeletedAt) < keepGone {
			kept = append(kept, g)
		}
	}
	*list = kept
}

// pruneFailed keeps only the newest failed items of a kind: they hold nothing on storage (the saga cleaned
// up) and are kept only so users can see what went wrong.
func (v *volume) pruneFailed(kind Kind) {
	list := v.items(kind)
	failed := 0
	for i := len(*list) - 1; i >= 0; i-- {
		if (*list)[i].Status == StatusFailed {
			failed++
			if failed > keepFailedItems {
				*list = append((*list)[:i], (*list)[i+1:]...)
			}
		}
	}
}
