package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"

	"go.temporal.io/sdk/client"

	"github.com/holdfast/holdfast/workflows"
)

// serverCounters reads the dev server's Prometheus endpoint and sums the counters the bench reports: its
// persistence requests (every read and write of its database) by operation.
func serverCounters(ctx context.Context, metricsURL string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, metricsURL, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", metricsURL, resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "persistence_requests{") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[label(line, "operation")] += v
	}
	return out, sc.Err()
}

// label is a Prometheus sample line's label value, or "".
func label(line, name string) string {
	_, rest, ok := strings.Cut(line, name+`="`)
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(rest, `"`)
	return v
}

// persistence is the dev server's persistence requests during one phase, by operation.
type persistence map[string]float64

// since is the requests made between two readings.
func since(before, after map[string]float64) persistence {
	d := persistence{}
	for k, v := range after {
		if n := v - before[k]; n > 0 {
			d[k] = n
		}
	}
	return d
}

func (p persistence) total() float64 {
	t := 0.0
	for _, v := range p {
		t += v
	}
	return t
}

// top is the n largest operations, "Name=count" each.
func (p persistence) top(n int) string {
	keys := make([]string, 0, len(p))
	for k := range p {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int { return int(p[b] - p[a]) })
	parts := []string{}
	for _, k := range keys[:min(n, len(keys))] {
		parts = append(parts, fmt.Sprintf("%s=%.0f", k, p[k]))
	}
	return strings.Join(parts, " ")
}

// histories are the volume workflows' current runs' history sizes at the end of the run: what a volume costs
// the history store, bounded by continue-as-new.
type histories struct{ events, bytes []int64 }

// readHistories describes every volume's workflow, concurrency at a time.
func readHistories(ctx context.Context, c client.Client, volumeIDs []string, concurrency int) (histories, error) {
	var h histories
	var mu sync.Mutex
	err := forEach(volumeIDs, concurrency, func(id string) error {
		resp, err := c.DescribeWorkflowExecution(ctx, workflows.VolumeWorkflowID(id), "")
		if err != nil {
			return err
		}
		info := resp.GetWorkflowExecutionInfo()
		mu.Lock()
		h.events = append(h.events, info.GetHistoryLength())
		h.bytes = append(h.bytes, info.GetHistorySizeBytes())
		mu.Unlock()
		return nil
	})
	return h, err
}

// summary is "p50 / max events, p50 / max KiB".
func (h histories) summary() string {
	return fmt.Sprintf("%d / %d events, %d / %d KiB", percentile(h.events, 50), percentile(h.events, 100),
		percentile(h.bytes, 50)>>10, percentile(h.bytes, 100)>>10)
}
