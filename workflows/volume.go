package workflows

import (
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"
)

// Bounds on what a volume's state keeps, so history and query payloads stay small.
const (
	keepRecentOperations = 20
	keepFailedItems      = 5
	attachmentTimeout    = 30 * time.Second
	maxNameLength        = 128
)

var (
	saVolume     = temporal.NewSearchAttributeKeyKeyword(SearchVolume)
	saOwner      = temporal.NewSearchAttributeKeyKeyword(SearchOwner)
	saHypervisor = temporal.NewSearchAttributeKeyKeyword(SearchHypervisor)
	saActive     = temporal.NewSearchAttributeKeyKeyword(SearchActiveOperation)
	saOperations = temporal.NewSearchAttributeKeyKeywordList(SearchOperations)
)

// Versioned changes of the volume workflow: runs recorded before them replay as they ran.
const (
	// operationIndexChange upserts SearchOperations on every accepted request.
	operationIndexChange = "operation-index"
	// releaseAfterClaimChange sends a permit's release only once its claim has been delivered: two signals
	// in flight at once may reach the owner in either order, and a claim arriving after its release would
	// re-add the lease for hours.
	releaseAfterClaimChange = "release-after-claim"
	// volumePermitChange has the volume take the owner's permit itself, after its own checks, for requests
	// that come without a lease (clients of this version).
	volumePermitChange = "volume-permit"
	// historyBoundChange has the volume continue-as-new at volumeHistoryBound events, not only when the
	// server suggests it. Decided once per run, at its start.
	historyBoundChange = "history-bound"
)

// volumeHistoryBound is the history length at which an idle volume continues-as-new by itself (about 25
// operations' worth; the server suggests it only at 4 Ki events). A volume that has left the worker's cache
// is replayed from its whole history at its next task, and in a fleet larger than the cache most have: the
// bound keeps that replay, and the history read for it, small.
const volumeHistoryBound = 1_000

type volume struct {
	volumeID string
	st       VolumeState
	// cancelRunning stops the running operation's child workflow (abort).
	cancelRunning workflow.CancelFunc
	// abortRequested marks an abort that arrived while a request was still being checked, for abortReason.
	abortRequested bool
	abortReason    string
	// asking is true while a request waits for the owner's permit.
	asking bool
	// running is true while an operation's child workflow runs.
	running bool
	// claiming counts permit claims not yet delivered to the owner's workflow.
	claiming int
	// bounded is true for runs that continue-as-new at volumeHistoryBound (historyBoundChange).
	bounded bool
}

// VolumeWorkflow is one volume's entity and mutex (ID volume/<volume_id>). Requests arrive as Updates whose
// validators reject synchronously with the spec's messages; an accepted request runs as a child workflow, one
// at a time. It continues-as-new at volumeHistoryBound events or when the server suggests it (history size
// or length), between operations and after handlers drain, carrying its state and any accepted-but-unstarted
// request.
func VolumeWorkflow(ctx workflow.Context, in VolumeInput) error {
	v := &volume{volumeID: in.VolumeID}
	if in.State != nil {
		v.st = *in.State
	}
	v.bounded = workflow.GetVersion(ctx, historyBoundChange, workflow.DefaultVersion, 1) == 1
	if err := v.registerHandlers(ctx); err != nil {
		return err
	}
	if v.st.Registered {
		v.upsertIdentity(ctx)
		v.indexOperations(ctx)
	}
	for {
		ready := func() bool { return v.st.Queued != nil || v.shouldContinueAsNew(ctx) || v.purgeDue(ctx) }
		wait := v.cooldownRemaining(ctx)
		if kept := v.keptRemaining(ctx); kept > 0 && (wait <= 0 || kept < wait) {
			wait = kept // a deregistered volume's kept backups are deleted when their period ends
		}
		if wait > 0 {
			// The cooldown is a durable timer: it survives worker and server restarts.
			if _, err := workflow.AwaitWithTimeout(ctx, wait, ready); err != nil {
				return err
			}
			if !ready() {
				continue
			}
		} else if err := workflow.Await(ctx, ready); err != nil {
			return err
		}
		if v.shouldContinueAsNew(ctx) {
			if err := workflow.Await(ctx, func() bool { return workflow.AllHandlersFinished(ctx) }); err != nil {
				return err
			}
			// A request accepted meanwhile is carried in st.Queued and started by the next run.
			return workflow.NewContinueAsNewError(ctx, VolumeWorkflow,
				VolumeInput{VolumeID: v.volumeID, State: &v.st})
		}
		if v.purgeDue(ctx) {
			v.purgeKept(ctx)
			continue
		}
		v.run(ctx)
	}
}

func (v *volume) registerHandlers(ctx workflow.Context) error {
	if err := workflow.SetQueryHandler(ctx, QueryState, func() (VolumeState, error) {
		return v.st, nil
	}); err != nil {
		return err
	}
	v.receiveIdleWaiters(ctx)
	if err := workflow.SetUpdateHandlerWithOptions(ctx, UpdateRegister, v.register,
		workflow.UpdateHandlerOptions{Validator: v.validateRegister}); err != nil {
		return err
	}
	if err := workflow.SetUpdateHandlerWithOptions(ctx, UpdateRequest, v.accept,
		workflow.UpdateHandlerOptions{Validator: v.check}); err != nil {
		return err
	}
	if err := workflow.SetUpdateHandlerWithOptions(ctx, UpdateReserve, v.reserve,
		workflow.UpdateHandlerOptions{Validator: v.validateReserve}); err != nil {
		return err
	}
	if err := workflow.SetUpdateHandler(ctx, UpdateUnreserve, v.unreserve); err != nil {
		return err
	}
	if err := workflow.SetUpdateHandlerWithOptions(ctx, UpdateImportBackups, v.importBackups,
		workflow.UpdateHandlerOptions{Validator: v.validateImport}); err != nil {
		return err
	}
	if err := workflow.SetUpdateHandlerWithOptions(ctx, UpdateSetPolicy, v.setPolicy,
		workflow.UpdateHandlerOptions{Validator: v.validateSetPolicy}); err != nil {
		return err
	}
	if err := workflow.SetUpdateHandlerWithOptions(ctx, UpdateHydration, v.endHydration,
		workflow.UpdateHandlerOptions{Validator: v.validateHydration}); err != nil {
		return err
	}
	return workflow.SetUpdateHandlerWithOptions(ctx, UpdateAbort, v.abort,
		workflow.UpdateHandlerOptions{Validator: v.validateAbort})
}

func (v *volume) shouldContinueAsNew(ctx workflow.Context) bool {
	if v.st.Active != nil && v.st.Queued == nil {
		return false // an operation's child is running: it cannot be carried across runs
	}
	info := workflow.GetInfo(ctx)
	return info.GetContinueAsNewSuggested() || (v.bounded && info.GetCurrentHistoryLength() >= volumeHistoryBound)
}

func (v *volume) cooldownRemaining(ctx workflow.Context) time.Duration {
	return v.st.CooldownUntil.Sub(workflow.Now(ctx))
}
