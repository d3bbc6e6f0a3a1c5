package billing_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/holdfast/holdfast/activities/billing"
	"github.com/holdfast/holdfast/activities/billing/contract"
)

var hour = time.Date(2026, 11, 23, 14, 0, 0, 0, time.UTC)

func items(volumeIDs ...string) []contract.LineItem {
	var out []contract.LineItem
	for _, v := range volumeIDs {
		out = append(out, contract.LineItem{IdempotencyKey: contract.LineItemKey(v, "backup", hour),
			VolumeID: v, OwnerID: "acct-1", PlanID: "p", Kind: "backup", Hour: hour, Items: 1, GB: 1, Credits: 0.01})
	}
	return out
}

func lines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	s := strings.TrimSuffix(string(b), "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

func TestLedgerSkipsKeysItHoldsAcrossRestarts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "ledger.jsonl")
	l, err := billing.OpenLedger(path)
	require.NoError(t, err)
	n, err := l.Append(items("vol1", "vol2", "vol1")) // a duplicate inside one batch too
	require.NoError(t, err)
	assert.Equal(t, 2, n)
	require.NoError(t, l.Close())

	l, err = billing.OpenLedger(path) // a restarted process
	require.NoError(t, err)
	defer l.Close()
	assert.True(t, l.Has("vol1/backup/2026-11-23T14"))
	n, err = l.Append(items("vol2", "vol3", "vol1"))
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	got := lines(t, path)
	require.Len(t, got, 3)
	assert.Contains(t, got[2], `"idempotency_key":"vol3/backup/2026-11-23T14"`)
}

func TestLedgerConcurrentWritersWriteEachKeyOnce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger.jsonl")
	// Two Ledgers on one file stand for two processes (separate descriptors, flock between them), each
	// written by several goroutines with overlapping batches.
	a, err := billing.OpenLedger(path)
	require.NoError(t, err)
	defer a.Close()
	b, err := billing.OpenLedger(path)
	require.NoError(t, err)
	defer b.Close()
	var vols []string
	for i := range 50 {
		vols = append(vols, fmt.Sprintf("vol%02d", i))
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	total := 0
	for g := range 8 {
		l := a
		if g%2 == 1 {
			l = b
		}
		wg.Go(func() {
			for i := 0; i < len(vols); i += 5 {
				n, err := l.Append(items(vols[i:min(i+10, len(vols))]...))
				assert.NoError(t, err)
				mu.Lock()
				total += n
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	assert.Equal(t, 50, total)
	got := lines(t, path)
	require.Len(t, got, 50)
	seen := map[string]bool{}
	for _, line := range got {
		assert.False(t, seen[line], "duplicate line %s", line)
		seen[line] = true
	}
}

func TestLedgerCutsATornLastLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger.jsonl")
	l, err := billing.OpenLedger(path)
	require.NoError(t, err)
	_, err = l.Append(items("vol1"))
	require.NoError(t, err)
	require.NoError(t, l.Close())
	// A crash mid-append left half of vol2's line.
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteString(`{"idempotency_key":"vol2/backup/2026-11-23T14","volume_id":"vo`)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	l, err = billing.OpenLedger(path)
	require.NoError(t, err)
	defer l.Close()
	assert.False(t, l.Has("vol2/backup/2026-11-23T14"), "a torn line was never acknowledged")
	n, err := l.Append(items("vol1", "vol2"))
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	got := lines(t, path)
	require.Len(t, got, 2)
	assert.Contains(t, got[1], `"volume_id":"vol2"`)
	assert.True(t, strings.HasSuffix(got[1], "}"))
}

func TestLedgerRejectsACorruptCompleteLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger.jsonl")
	require.NoError(t, os.WriteFile(path, []byte("not json\n"), 0o600))
	_, err := billing.OpenLedger(path)
	assert.ErrorContains(t, err, "byte 0")
}
