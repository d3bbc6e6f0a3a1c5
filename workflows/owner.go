package workflows

import (
	"sort"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/holdfast/holdfast/activities"
)

// unclaimedLeaseTTL is how long a permit waits for the volume to claim it: a client that acquired a permit
// and then crashed, or whose request the volume rejected, must not hold it.
const unclaimedLeaseTTL = time.Minute

type owner struct {
	ownerID string
	leases  map[string]*Lease
	// changes counts acquires, so the loop re-arms its expiry timer for a new lease.
	changes int
	// replying counts answers to volumes and turns to waiters not yet delivered (the run must not
	// continue-as-new before them).
	replying int
	// waiters are the scheduled runs refused at the limit, first come first served: each permit that frees
	// tells the first one still waiting that it is its turn.
	waiters []Waiter
}

// Bounds of an owner's queue of waiting scheduled runs: a run waits at most a night's window, and a queue
// past maxWaiters (a fleet's worth for one owner) takes no more (the runs fall back on their back-off).
const (
	waiterTTL  = 24 * time.Hour
	maxWaiters = 10_000
	// turnTTL is how long the permit freed for a run told its turn is kept for it: the run asks again at
	// once, and a run that does not (its volume busy, say) must not hold it.
	turnTTL = 30 * time.Second
	// maxWaiterLength bounds a waiter's workflow ID (Temporal's own default limit).
	maxWaiterLength = 1000
)

// OwnerWorkflow is one owner's counting semaphore (ID owner/<owner_id>): at most Limit operations in flight
// across all of the owner's volumes. A volume that has checked a request and taken its lock asks for a permit
// by signal (SignalPermitRequest, sent through AcquirePermitActivity, which starts this workflow if needed);
// the permit is granted claimed, or refused at the limit, and the answer is signalled back to the volume
// (SignalPermit). Signals have no ceiling of in-flight calls, unlike Updates. The volume releases the permit
// when the operation ends. A permit claimed but never released within its TTL comes back.
//
// Clients of earlier versions acquired permits by Update (UpdateAcquire) before asking the volume, which then
// claimed them (SignalClaim); that path stays for them, and an acquired permit never claimed within a minute
// comes back.
func OwnerWorkflow(ctx workflow.Context, in OwnerInput) error {
	o := &owner{ownerID: in.OwnerID, leases: map[string]*Lease{}, waiters: in.Waiters}
	for i := range in.Leases {
		l := in.Leases[i]
		o.leases[l.LeaseID] = &l
	}
	if err := workflow.SetQueryHandler(ctx, QueryPermits, func() ([]Lease, error) { return o.sorted(), nil }); err != nil {
		return err
	}
	if err := workflow.SetUpdateHandlerWithOptions(ctx, UpdateAcquire, o.acquire,
		workflow.UpdateHandlerOptions{Validator: o.validateAcquire}); err != nil {
		return err
	}
	claims := workflow.GetSignalChannel(ctx, SignalClaim)
	releases := workflow.GetSignalChannel(ctx, SignalRelease)
	requests := workflow.GetSignalChannel(ctx, SignalPermitRequest)
	for {
		timerCtx, cancelTimer := workflow.WithCancel(ctx)
		sel := workflow.NewSelector(ctx)
		sel.AddReceive(requests, func(c workflow.ReceiveChannel, _ bool) {
			var r PermitRequest
			c.Receive(ctx, &r)
			o.answer(ctx, r)
		})
		sel.AddReceive(claims, func(c workflow.ReceiveChannel, _ bool) {
			var s ClaimSignal
			c.Receive(ctx, &s)
			o.claim(ctx, s)
		})
		sel.AddReceive(releases, func(c workflow.ReceiveChannel, _ bool) {
			var s ReleaseSignal
			c.Receive(ctx, &s)
			o.release(ctx, s.LeaseID)
		})
		if next, ok := o.nextExpiry(); ok {
			sel.AddFuture(workflow.NewTimer(timerCtx, next.Sub(workflow.Now(ctx))), func(workflow.Future) {})
		}
		// Wake up for acquires too (a new lease needs its expiry timer) and for a continue-as-new suggestion.
		seen := o.changes
		sel.AddFuture(awaitFuture(timerCtx, func() bool {
			return o.changes != seen || workflow.GetInfo(ctx).GetContinueAsNewSuggested()
		}), func(workflow.Future) {})
		sel.Select(ctx)
		cancelTimer()
		if err := ctx.Err(); err != nil {
			return temporal.NewCanceledError(err.Error()) // an operator cancelled the owner's workflow
		}
		o.expire(ctx)
		if workflow.GetInfo(ctx).GetContinueAsNewSuggested() {
			if err := workflow.Await(ctx, func() bool { return workflow.AllHandlersFinished(ctx) }); err != nil {
				return err
			}
			for drained := false; !drained; {
				drained = true
				var p PermitRequest
				if requests.ReceiveAsync(&p) {
					o.answer(ctx, p)
					drained = false
				}
				var c ClaimSignal
				if claims.ReceiveAsync(&c) {
					o.claim(ctx, c)
					drained = false
				}
				var r ReleaseSignal
				if releases.ReceiveAsync(&r) {
					o.release(ctx, r.LeaseID)
					drained = false
				}
			}
			if err := workflow.Await(ctx, func() bool { return o.replying == 0 }); err != nil {
				return err
			}
			return workflow.NewContinueAsNewError(ctx, OwnerWorkflow, OwnerInput{OwnerID: o.ownerID, Leases: o.sorted(),
				Waiters: o.waiters})
		}
	}
}

// awaitFuture is a future that becomes ready when cond holds (or ctx is cancelled).
func awaitFuture(ctx workflow.Context, cond func() bool) workflow.Future {
	f, set := workflow.NewFuture(ctx)
	workflow.Go(ctx, func(gctx workflow.Context) {
		err := workflow.Await(gctx, cond)
		set.Set(nil, err)
	})
	return f
}

func (o *owner) validateAcquire(ctx workflow.Context, req AcquireRequest) error {
	if !activities.ValidID(req.LeaseID) {
		return errInvalid("lease_id: must match %s", activities.IDPattern)
	}
	if req.Limit < 1 {
		return errInvalid("limit: must be at least 1")
	}
	if _, held := o.leases[req.LeaseID]; held {
		return nil // a retried acquire of the same operation
	}
	if o.live(ctx) >= req.Limit {
		return errOwnerLimit(req.Limit)
	}
	return nil
}

func (o *owner) acquire(ctx workflow.Context, req AcquireRequest) (Lease, error) {
	if err := o.validateAcquire(ctx, req); err != nil {
		return Lease{}, err
	}
	if l, held := o.leases[req.LeaseID]; held {
		return *l, nil
	}
	l := &Lease{LeaseID: req.LeaseID, VolumeID: req.VolumeID, ExpiresAt: workflow.Now(ctx).Add(unclaimedLeaseTTL)}
	o.leases[l.LeaseID] = l
	o.changes++
	return *l, nil
}

// answer grants or refuses a volume's permit request and signals the answer back to the volume. A granted
// permit is claimed at once: the volume asks only for a request it has checked and locked.
func (o *owner) answer(ctx workflow.Context, r PermitRequest) {
	limit := max(r.Limit, 1)
	reply := PermitReply{LeaseID: r.LeaseID, Limit: limit}
	if r.Waiter != "" {
		delete(o.leases, turnLease(r.Waiter)) // the permit kept for this run, if it was told its turn
	}
	if _, held := o.leases[r.LeaseID]; held || o.live(ctx) < limit {
		o.claim(ctx, ClaimSignal{LeaseID: r.LeaseID, VolumeID: r.VolumeID, TTL: r.TTL})
		o.changes++
		reply.Granted = true
	} else if r.Waiter != "" {
		o.enqueue(ctx, r.Waiter)
	}
	o.replying++
	workflow.Go(ctx, func(gctx workflow.Context) {
		defer func() { o.replying-- }()
		err := workflow.SignalExternalWorkflow(gctx, VolumeWorkflowID(r.VolumeID), "", SignalPermit, reply).Get(gctx, nil)
		if err != nil && reply.Granted {
			// The volume is gone: nobody will release the permit.
			workflow.GetLogger(ctx).Warn("permit answer not delivered; permit returned", "owner_id", o.ownerID,
				"lease_id", r.LeaseID, "volume_id", r.VolumeID, "error", err)
			o.release(ctx, r.LeaseID)
		}
	})
}

// claim marks a permit as taken by an operation. A claim for a lease that already expired re-adds it: the
// operation runs whatever we say, so counting it keeps the limit honest for the requests that follow.
func (o *owner) claim(ctx workflow.Context, s ClaimSignal) {
	ttl := s.TTL
	if ttl <= 0 {
		ttl = 3 * time.Hour
	}
	l, ok := o.leases[s.LeaseID]
	if !ok {
		l = &Lease{LeaseID: s.LeaseID, VolumeID: s.VolumeID}
		o.leases[s.LeaseID] = l
	}
	l.Claimed = true
	l.ExpiresAt = workflow.Now(ctx).Add(ttl)
}

func (o *owner) live(ctx workflow.Context) int {
	now := workflow.Now(ctx)
	n := 0
	for _, l := range o.leases {
		if now.Before(l.ExpiresAt) {
			n++
		}
	}
	return n
}

func (o *owner) expire(ctx workflow.Context) {
	now := workflow.Now(ctx)
	for _, id := range o.ids() {
		if l := o.leases[id]; !now.Before(l.ExpiresAt) {
			workflow.GetLogger(ctx).Info("permit expired", "owner_id", o.ownerID, "lease_id", id,
				"volume_id", l.VolumeID, "claimed", l.Claimed)
			delete(o.leases, id)
			o.wake(ctx)
		}
	}
}

// release gives a permit back, and the next waiting run its turn.
func (o *owner) release(ctx workflow.Context, leaseID string) {
	if _, held := o.leases[leaseID]; !held {
		return // released twice, or expired already
	}
	delete(o.leases, leaseID)
	o.wake(ctx)
}

// enqueue adds a refused scheduled run to the waiters, once (a run refused again keeps its place).
func (o *owner) enqueue(ctx workflow.Context, workflowID string) {
	for _, w := range o.waiters {
		if w.WorkflowID == workflowID {
			return
		}
	}
	if len(o.waiters) >= maxWaiters {
		return
	}
	o.waiters = append(o.waiters, Waiter{WorkflowID: workflowID, Since: workflow.Now(ctx)})
}

// wake tells the first waiting run that a permit is free, and keeps that permit for it (turnTTL), so that
// no other request takes it before the run's comes. A run that no longer waits (its window closed, or its
// back-off brought it in first) cannot be told: its permit is given to the next one; one that waited past
// waiterTTL is dropped. A run told its turn leaves the queue: refused again, it queues again.
func (o *owner) wake(ctx workflow.Context) {
	now := workflow.Now(ctx)
	for len(o.waiters) > 0 && now.Sub(o.waiters[0].Since) > waiterTTL {
		o.waiters = o.waiters[1:]
	}
	if len(o.waiters) == 0 {
		return
	}
	w := o.waiters[0]
	o.waiters = o.waiters[1:]
	kept := turnLease(w.WorkflowID)
	o.leases[kept] = &Lease{LeaseID: kept, Waiter: w.WorkflowID, ExpiresAt: now.Add(turnTTL)}
	o.changes++
	o.replying++
	workflow.Go(ctx, func(gctx workflow.Context) {
		defer func() { o.replying-- }()
		if err := workflow.SignalExternalWorkflow(gctx, w.WorkflowID, "", SignalTurn, nil).Get(gctx, nil); err != nil {
			o.release(gctx, kept)
		}
	})
}

// turnLease is the ID of the permit kept for a run told its turn.
func turnLease(waiter string) string { return "turn:" + waiter }

func (o *owner) nextExpiry() (time.Time, bool) {
	var next time.Time
	for _, l := range o.leases {
		if next.IsZero() || l.ExpiresAt.Before(next) {
			next = l.ExpiresAt
		}
	}
	return next, !next.IsZero()
}

func (o *owner) ids() []string {
	ids := make([]string, 0, len(o.leases))
	for id := range o.leases {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

func (o *owner) sorted() []Lease {
	out := make([]Lease, 0, len(o.leases))
	for _, id := range o.ids() {
		out = append(out, *o.leases[id])
	}
	return out
}
