package main

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	"go.temporal.io/sdk/client"

	"github.com/holdfast/holdfast/workflows"
)

// nightlyPolicy is the policy the scheduled night runs under.
const nightlyPolicy = "fleet-nightly"

// night is the scheduled night: how many runs were accepted or missed (by the refusal they ended on), how
// long the runs took to all return, and (in its tally) how long until their operations all ended.
type night struct {
	attach           latencies
	attachTook       time.Duration
	accepted, missed int
	missedBy         map[string]int
	attempts         []int // requests each accepted run sent
	runsTook         time.Duration
	closesIn         time.Duration // from the policy's PUT to the window's end
	*tally
}

// runNight puts a policy of kind (snapshot or backup) whose window opened a minute ago and closes after
// window, attaches every volume to it through the API, then starts each volume's ScheduledRunWorkflow at once
// (the schedules would fire them at the window's opening, tomorrow) and waits for every run's result and
// every accepted operation.
func runNight(ctx context.Context, p *panel, c client.Client, volumeIDs []string, kind string, window time.Duration,
	concurrency int) (*night, error) {
	n := &night{missedBy: map[string]int{}, tally: newTally()}
	now := time.Now().UTC()
	// The window is in whole minutes: it closes at the start of the minute window after now.
	n.closesIn = now.Add(window).Truncate(time.Minute).Sub(now)
	a, err := p.call(ctx, http.MethodPut, "/v1/policies/"+nightlyPolicy, map[string]any{"kind": kind,
		"window": map[string]string{"start": now.Add(-time.Minute).Format("15:04"),
			"end": now.Add(window).Format("15:04")}})
	if err != nil {
		return nil, err
	}
	if a.status >= 300 {
		return nil, fmt.Errorf("put policy: %d %s", a.status, a.body)
	}
	var mu sync.Mutex
	start := time.Now()
	err = forEach(volumeIDs, concurrency, func(id string) error {
		a, err := p.call(ctx, http.MethodPut, "/v1/volumes/"+id+"/policy", map[string]string{"policy_id": nightlyPolicy})
		if err != nil {
			return err
		}
		if a.status >= 300 {
			return fmt.Errorf("attach %s: %d %s", id, a.status, a.body)
		}
		mu.Lock()
		n.attach = append(n.attach, a.took)
		mu.Unlock()
		return nil
	})
	if err != nil {
		return nil, err
	}
	n.attachTook = time.Since(start)

	start = time.Now()
	runs := make([]client.WorkflowRun, len(volumeIDs))
	err = forEach(indexes(len(volumeIDs)), concurrency, func(i int) error {
		run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: "fleetbench-night-" + volumeIDs[i],
			TaskQueue: workflows.TaskQueue}, workflows.ScheduledRunWorkflow,
			workflows.ScheduledRunInput{PolicyID: nightlyPolicy, VolumeID: volumeIDs[i]})
		runs[i] = run
		return err
	})
	if err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	for _, run := range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var res workflows.ScheduledRunResult
			err := run.Get(ctx, &res)
			mu.Lock()
			n.runsTook = max(n.runsTook, time.Since(start))
			switch {
			case err != nil:
				n.missed++
				n.missedBy["run failed"]++
			case res.Rejection != nil:
				n.missed++
				n.missedBy[res.Rejection.Type]++
			default:
				n.accepted++
				n.attempts = append(n.attempts, res.Attempts)
			}
			mu.Unlock()
			if err != nil || res.Rejection != nil {
				return
			}
			n.follow(ctx, p, c, res.OperationID, start)
		}()
	}
	wg.Wait()
	return n, nil
}

func indexes(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}
