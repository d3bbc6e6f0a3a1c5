package main

import (
	"context"
	"sync"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"github.com/holdfast/holdfast/workers"
	"github.com/holdfast/holdfast/workers/config"
)

// The baseline's task queue and update: a workflow with a snapshot's shape and nothing else.
const (
	baselineQueue  = "fleetbench-baseline"
	baselineUpdate = "request"
)

// newBaselineWorker hosts the baseline on its own task queue, with the control worker's options (its pollers).
func newBaselineWorker(c client.Client, cfg *config.Config) worker.Worker {
	w := worker.New(c, baselineQueue, workers.ControlOptions(cfg.Control))
	w.RegisterWorkflow(baselineWorkflow)
	w.RegisterActivity(baselineActivity)
	return w
}

// baselineWorkflow accepts one update (validated, then handled, as a request is), then runs one activity.
func baselineWorkflow(ctx workflow.Context) error {
	accepted := false
	err := workflow.SetUpdateHandlerWithOptions(ctx, baselineUpdate,
		func(ctx workflow.Context, name string) (string, error) { accepted = true; return name, nil },
		workflow.UpdateHandlerOptions{Validator: func(ctx workflow.Context, name string) error { return nil }})
	if err != nil {
		return err
	}
	if err := workflow.Await(ctx, func() bool { return accepted }); err != nil {
		return err
	}
	actx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{StartToCloseTimeout: time.Minute})
	return workflow.ExecuteActivity(actx, baselineActivity).Get(ctx, nil)
}

// baselineActivity does nothing: the round trip is what is measured.
func baselineActivity(context.Context) error { return nil }

// baselineResult is the baseline's burst: the time from the first start to the last workflow's end, and each
// update's latency (start included), as a request's.
type baselineResult struct {
	took    time.Duration
	latency latencies
}

// runBaseline starts one baseline workflow per volume with its update (update-with-start, as Holdfast's
// requests reach a volume), concurrency at a time, and waits for them all to end.
func runBaseline(ctx context.Context, c client.Client, volumeIDs []string, concurrency int) (*baselineResult, error) {
	r := &baselineResult{}
	var mu sync.Mutex
	var runs sync.WaitGroup
	start := time.Now()
	err := forEach(volumeIDs, concurrency, func(id string) error {
		t0 := time.Now()
		op := c.NewWithStartWorkflowOperation(client.StartWorkflowOptions{ID: "fleetbench-baseline-" + id,
			TaskQueue: baselineQueue, WorkflowIDConflictPolicy: enumspb.WORKFLOW_ID_CONFLICT_POLICY_USE_EXISTING}, baselineWorkflow)
		h, err := c.UpdateWithStartWorkflow(ctx, client.UpdateWithStartWorkflowOptions{StartWorkflowOperation: op,
			UpdateOptions: client.UpdateWorkflowOptions{UpdateName: baselineUpdate, Args: []any{id},
				WaitForStage: client.WorkflowUpdateStageCompleted}})
		if err != nil {
			return err
		}
		if err := h.Get(ctx, nil); err != nil {
			return err
		}
		took := time.Since(t0)
		mu.Lock()
		r.latency = append(r.latency, took)
		mu.Unlock()
		run, err := op.Get(ctx)
		if err != nil {
			return err
		}
		runs.Add(1)
		go func() {
			defer runs.Done()
			_ = run.Get(ctx, nil)
			mu.Lock()
			r.took = max(r.took, time.Since(start))
			mu.Unlock()
		}()
		return nil
	})
	runs.Wait()
	return r, err
}
