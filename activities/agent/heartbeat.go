package agent

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.temporal.io/sdk/activity"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/activities/volume"
)

// callHeartbeatEvery is how often a hypervisor activity heartbeats while its driver call runs. An abort
// reaches a running activity only in the answer to a heartbeat, so this bounds how late a hung or long call
// learns it was aborted; the worker sends heartbeats at most every 2 s anyway (workers' heartbeat throttle),
// and the workflows' heartbeat timeout (30 s) leaves room for many missed ones. A variable for tests.
var callHeartbeatEvery = 2 * time.Second

// abandonAfter is how long a cancelled driver call gets to return on its own before the activity returns
// without it. A driver that honours ctx stops within one copy block and removes what it wrote, and the
// activity then reports that; a call that hangs is left behind after this.
const abandonAfter = time.Second

// progressReporter is a driver that reports its long copies' progress (the file driver: a raw volume's
// snapshot and rollback, a clone).
type progressReporter interface {
	WithProgress(ctx context.Context, report func(done, total int64)) context.Context
}

// callProgress is the latest progress of one driver call, as heartbeated.
type callProgress struct {
	phase string
	start time.Time

	mu          sync.Mutex
	done, total int64
}

func (p *callProgress) report(done, total int64) {
	p.mu.Lock()
	p.done, p.total = done, total
	p.mu.Unlock()
}

func (p *callProgress) heartbeat() activities.Progress {
	p.mu.Lock()
	defer p.mu.Unlock()
	hp := activities.Progress{Phase: p.phase, BytesDone: p.done, BytesTotal: p.total}
	if secs := time.Since(p.start).Seconds(); p.done > 0 && secs > 0 {
		hp.BytesPerSecond = float64(p.done) / secs
	}
	return hp
}

// hypervisorCall runs call, the driver work of one hypervisor activity, on its own goroutine, and
// heartbeats (phase; bytes copied when the driver reports them) every callHeartbeatEvery while it runs.
//
// It returns call's result, or, once ctx is done, a cancellation at most abandonAfter later even if call
// never returns. Temporal ends an activity through ctx whatever the reason (an abort or the operation's
// deadline, delivered in a heartbeat's answer; the activity's own timeouts; the worker stopping), and a
// hypervisor call can hang whatever its ctx says (a wedged libvirtd, a dead NFS server): the workflow must
// be able to start its compensation then, not when the call gives up. A call left running is logged, and so
// is its end if it ever comes. The matching delete removes what an interrupted call left (volume.Driver's
// contract), and the file driver's copies cannot complete behind it (their final rename needs the partial
// file that delete removed).
//
// Outside an activity (a test calling the method directly) nothing is heartbeated.
func hypervisorCall[T any](ctx context.Context, log *slog.Logger, phase string, d volume.Driver,
	call func(context.Context) (T, error)) (T, error) {
	p := &callProgress{phase: phase, start: time.Now()}
	callCtx := ctx
	if r, ok := d.(progressReporter); ok {
		callCtx = r.WithProgress(ctx, p.report)
	}
	done := make(chan callResult[T], 1) // the call never blocks on an activity that went
	go func() {
		v, err := call(callCtx)
		done <- callResult[T]{v, err}
	}()

	beat := activity.IsActivity(ctx) // RecordHeartbeat panics without an activity
	tick := time.NewTicker(callHeartbeatEvery)
	defer tick.Stop()
	for {
		select {
		case r := <-done:
			return r.v, r.err
		case <-tick.C:
			if beat {
				activity.RecordHeartbeat(ctx, p.heartbeat())
			}
		case <-ctx.Done():
			return abandon(ctx, log, p, done)
		}
	}
}

// hypervisorDo is hypervisorCall for a call with no result.
func hypervisorDo(ctx context.Context, log *slog.Logger, phase string, d volume.Driver,
	call func(context.Context) error) error {
	_, err := hypervisorCall(ctx, log, phase, d, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, call(ctx)
	})
	return err
}

type callResult[T any] struct {
	v   T
	err error
}

// abandon waits up to abandonAfter for a cancelled call, then leaves it running.
func abandon[T any](ctx context.Context, log *slog.Logger, p *callProgress, done chan callResult[T]) (T, error) {
	grace := time.NewTimer(abandonAfter)
	defer grace.Stop()
	select {
	case r := <-done:
		return r.v, r.err
	case <-grace.C:
	}
	log.Warn("hypervisor call did not stop on cancellation; abandoned, still running", "phase", p.phase,
		"cause", context.Cause(ctx), "running_for", time.Since(p.start).Round(time.Millisecond))
	go func() {
		r := <-done
		log.Warn("abandoned call returned", "phase", p.phase, "error", r.err,
			"running_for", time.Since(p.start).Round(time.Millisecond))
	}()
	var zero T
	return zero, fmt.Errorf("%s: abandoned after %v, still running: %w", p.phase, abandonAfter, ctx.Err())
}
