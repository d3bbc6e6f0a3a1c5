package workflows

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	// Retention buckets items by calendar day in the policy's time zone inside workflow code. Embedding the
	// zone database makes time.LoadLocation answer the same on every worker, whatever the host has installed.
	_ "time/tzdata"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/holdfast/holdfast/activities"
	"github.com/holdfast/holdfast/activities/metrics"
)

// Policies: a policy says what to take (snapshot or backup), when (an interval, a cron expression or a
// nightly window, with jitter) and what to keep (retention). Config policies live in the config file;
// API-managed policies each live in a PolicyWorkflow (ID policy/<policy_id>), so the control plane stays
// free of a database. A volume attached to a policy gets one Temporal Schedule
// (ID policy/<policy_id>/volume/<volume_id>) that starts a ScheduledRunWorkflow each time it fires.

// Names of the policy entity's handlers and of the volume's attachment update (wire contract: never rename).
const (
	UpdatePutPolicy = "put_policy"
	QueryPolicy     = "policy"
	UpdateSetPolicy = "set_policy"
)

// ScheduledRequestActivity is the control-plane activity (task queue TaskQueue) through which a scheduled run
// sends its request, input ScheduledRequest, result ScheduledRunResult.
const ScheduledRequestActivity = "RequestScheduled"

// ErrNotAttached rejects a scheduled request from a schedule whose policy the volume no longer uses (a
// schedule left behind by an interrupted re-attachment): it is recorded, never run.
const ErrNotAttached = "PolicyNotAttached"

// Bounds of a policy.
const (
	minPolicyInterval = time.Second
	maxKeep           = 1000
)

// PolicyWorkflowID is the ID of an API-managed policy's entity workflow.
func PolicyWorkflowID(policyID string) string { return "policy/" + policyID }

// ScheduleID is the ID of the Temporal Schedule that runs a policy for one volume.
func ScheduleID(policyID, volumeID string) string {
	return "policy/" + policyID + "/volume/" + volumeID
}

// Window is a daily low-traffic window in the policy's time zone, "HH:MM" to "HH:MM" (it may wrap past
// midnight: 23:00 to 03:00).
type Window struct {
	Start string `json:"start" yaml:"start"`
	End   string `json:"end" yaml:"end"`
}

// Policy is one backup/snapshot policy, as written in the config file (policies.<policy_id>) or PUT through
// the API. Durations are strings ("2s", "4h") so that YAML and JSON spell them alike.
type Policy struct {
	// PolicyID is filled from the config key or the API path.
	PolicyID string `json:"policy_id,omitempty" yaml:"-"`
	// Kind is what each run takes: snapshot or backup.
	Kind Kind `json:"kind" yaml:"kind"`
	// Every is an interval ("24h", "2s"); Cron a cron expression ("0 1 * * 0"). With neither, a Window makes
	// the policy nightly: it fires at the window's start every day.
	Every string `json:"every,omitempty" yaml:"every"`
	Cron  string `json:"cron,omitempty" yaml:"cron"`
	// TimeZone of Cron, Window and the retention's calendar buckets (IANA name, default UTC).
	TimeZone string  `json:"time_zone,omitempty" yaml:"time_zone"`
	Window   *Window `json:"window,omitempty" yaml:"window"`
	// Jitter delays each run by a random amount up to it; by default the window's length, so volumes spread
	// over the whole window instead of all starting at its opening.
	Jitter string `json:"jitter,omitempty" yaml:"jitter"`
	// Retention of the items this policy's runs created (0: that rule keeps nothing by itself; all zero:
	// keep everything up to the plan cap).
	KeepLast    int `json:"keep_last,omitempty" yaml:"keep_last"`
	KeepDaily   int `json:"keep_daily,omitempty" yaml:"keep_daily"`
	KeepWeekly  int `json:"keep_weekly,omitempty" yaml:"keep_weekly"`
	KeepMonthly int `json:"keep_monthly,omitempty" yaml:"keep_monthly"`
}

// Retention is what a scheduled request carries so the volume can apply its policy's retention without I/O.
type Retention struct {
	KeepLast    int    `json:"keep_last,omitempty"`
	KeepDaily   int    `json:"keep_daily,omitempty"`
	KeepWeekly  int    `json:"keep_weekly,omitempty"`
	KeepMonthly int    `json:"keep_monthly,omitempty"`
	TimeZone    string `json:"time_zone,omitempty"`
}

// Retention returns the policy's retention rules.
func (p Policy) Retention() Retention {
	return Retention{KeepLast: p.KeepLast, KeepDaily: p.KeepDaily, KeepWeekly: p.KeepWeekly,
		KeepMonthly: p.KeepMonthly, TimeZone: p.TimeZone}
}

// Interval is Every parsed (0 when unset or invalid: Validate reports it).
func (p Policy) Interval() time.Duration {
	d, _ := time.ParseDuration(p.Every)
	return d
}

// JitterDuration is the jitter in force: the explicit one, else the window's length, else none.
func (p Policy) JitterDuration() time.Duration {
	if p.Jitter != "" {
		d, _ := time.ParseDuration(p.Jitter)
		return d
	}
	if p.Window != nil {
		_, _, length, _ := p.Window.parse()
		return length
	}
	return 0
}

// WindowStart is the window's opening hour and minute.
func (p Policy) WindowStart() (hour, minute int) {
	if p.Window == nil {
		return 0, 0
	}
	start, _, _, _ := p.Window.parse()
	return int(start / time.Hour), int(start % time.Hour / time.Minute)
}

// parse returns the window's start and end as offsets from midnight and its length (wrapping midnight).
func (w Window) parse() (start, end, length time.Duration, problem string) {
	start, ok := clock(w.Start)
	if !ok {
		return 0, 0, 0, fmt.Sprintf("window.start: must be HH:MM (00:00 to 23:59), got %q", w.Start)
	}
	end, ok = clock(w.End)
	if !ok {
		return 0, 0, 0, fmt.Sprintf("window.end: must be HH:MM (00:00 to 23:59), got %q", w.End)
	}
	if start == end {
		return 0, 0, 0, "window.end: must differ from window.start"
	}
	length = end - start
	if length < 0 {
		length += 24 * time.Hour
	}
	return start, end, length, ""
}

func clock(s string) (time.Duration, bool) {
	h, m, ok := strings.Cut(s, ":")
	if !ok || len(h) != 2 || len(m) != 2 {
		return 0, false
	}
	hh, err1 := strconv.Atoi(h)
	mm, err2 := strconv.Atoi(m)
	if err1 != nil || err2 != nil || hh < 0 || hh > 23 || mm < 0 || mm > 59 {
		return 0, false
	}
	return time.Duration(hh)*time.Hour + time.Duration(mm)*time.Minute, true
}

// Problems lists what is wrong with the policy, each naming its field ("every: ..."); none means valid.
func (p Policy) Problems() []string {
	var out []string
	bad := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	if p.PolicyID != "" && !activities.ValidID(p.PolicyID) {
		bad("policy_id: must match %s", activities.IDPattern)
	}
	if p.Kind != KindSnapshot && p.Kind != KindBackup {
		bad("kind: must be snapshot or backup, got %q", p.Kind)
	}
	if p.TimeZone != "" {
		if _, err := time.LoadLocation(p.TimeZone); err != nil || p.TimeZone == "Local" {
			bad("time_zone: unknown time zone %q", p.TimeZone)
		}
	}
	var windowLength time.Duration
	windowOK := false
	if p.Window != nil {
		_, _, length, problem := p.Window.parse()
		if problem != "" {
			bad("%s", problem)
		} else {
			windowLength, windowOK = length, true
		}
	}
	var every time.Duration
	switch {
	case p.Every != "" && p.Cron != "":
		bad("every: give either every or cron, not both")
	case p.Every != "":
		d, err := time.ParseDuration(p.Every)
		switch {
		case err != nil:
			bad("every: not a duration: %q", p.Every)
		case d < minPolicyInterval:
			bad("every: must be at least %s, got %s", minPolicyInterval, d)
		default:
			every = d
		}
		if p.Window != nil {
			bad("window: an interval (every) has no time of day; use cron or the window alone")
		}
	case p.Cron != "":
		fields := strings.Fields(p.Cron)
		if strings.HasPrefix(p.Cron, "@") || len(fields) < 5 || len(fields) > 7 {
			if p.Window != nil || len(fields) != 1 {
				bad("cron: must have 5 to 7 fields (minute hour day-of-month month day-of-week)")
			}
		} else if windowOK && len(fields) == 5 {
			// With a window the cron picks the days and must open the window; the jitter spreads the runs.
			h, m := p.WindowStart()
			if fields[0] != strconv.Itoa(m) || fields[1] != strconv.Itoa(h) {
				bad("cron: must fire at window.start (minute %d, hour %d) when a window is given", m, h)
			}
		} else if p.Window != nil {
			bad("cron: with a window, use the 5-field form")
		}
	case p.Window == nil:
		bad("every: give every, cron or window")
	}
	if p.Jitter != "" {
		d, err := time.ParseDuration(p.Jitter)
		switch {
		case err != nil:
			bad("jitter: not a duration: %q", p.Jitter)
		case d < 0:
			bad("jitter: must not be negative, got %s", d)
		case windowOK && d > windowLength:
			bad("jitter: must not exceed the window's length %s, got %s", windowLength, d)
		case every > 0 && d > every:
			bad("jitter: must not exceed every (%s), got %s", every, d)
		}
	}
	for _, k := range []struct {
		field string
		n     int
	}{{"keep_last", p.KeepLast}, {"keep_daily", p.KeepDaily}, {"keep_weekly", p.KeepWeekly},
		{"keep_monthly", p.KeepMonthly}} {
		if k.n < 0 || k.n > maxKeep {
			bad("%s: must be 0 to %d, got %d", k.field, maxKeep, k.n)
		}
	}
	return out
}

// Validate is Problems as a typed InvalidArgument error naming the first offending field (nil when valid).
func (p Policy) Validate() error {
	if problems := p.Problems(); len(problems) > 0 {
		return errInvalid("%s", problems[0])
	}
	return nil
}

// ---- retention ----

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

// ---- the policy entity (API-managed policies) ----

// PolicyInput starts (or continues) a PolicyWorkflow.
type PolicyInput struct {
	PolicyID string  `json:"policy_id"`
	Policy   *Policy `json:"policy,omitempty"`
}

// PolicyWorkflow holds one API-managed policy (ID policy/<policy_id>): the update UpdatePutPolicy replaces it
// (validated synchronously), the query QueryPolicy reads it. It is an entity like VolumeWorkflow: it never
// ends by itself and continues-as-new when history grows.
func PolicyWorkflow(ctx workflow.Context, in PolicyInput) error {
	current := in.Policy
	if err := workflow.SetQueryHandler(ctx, QueryPolicy, func() (Policy, error) {
		if current == nil {
			return Policy{}, errNotFound("Policy %s not found.", in.PolicyID)
		}
		return *current, nil
	}); err != nil {
		return err
	}
	validate := func(ctx workflow.Context, p Policy) error {
		if p.PolicyID != in.PolicyID {
			return errInvalid("policy_id: %q does not match workflow policy %q", p.PolicyID, in.PolicyID)
		}
		return p.Validate()
	}
	if err := workflow.SetUpdateHandlerWithOptions(ctx, UpdatePutPolicy, func(ctx workflow.Context, p Policy) (Policy, error) {
		if err := validate(ctx, p); err != nil {
			return Policy{}, err
		}
		current = &p
		return p, nil
	}, workflow.UpdateHandlerOptions{Validator: validate}); err != nil {
		return err
	}
	if err := workflow.Await(ctx, func() bool {
		return workflow.GetInfo(ctx).GetContinueAsNewSuggested() && workflow.AllHandlersFinished(ctx)
	}); err != nil {
		return err
	}
	return workflow.NewContinueAsNewError(ctx, PolicyWorkflow, PolicyInput{PolicyID: in.PolicyID, Policy: current})
}

// ---- scheduled runs ----

// ScheduledRunInput is what a policy's schedule starts a ScheduledRunWorkflow with.
type ScheduledRunInput struct {
	PolicyID string `json:"policy_id"`
	VolumeID string `json:"volume_id"`
}

// ScheduledRequest is the input of ScheduledRequestActivity. OperationID is derived from the run, so a retried
// activity repeats the same (deduplicated) request instead of making a second one.
type ScheduledRequest struct {
	PolicyID    string `json:"policy_id"`
	VolumeID    string `json:"volume_id"`
	OperationID string `json:"operation_id"`
}

// ScheduledRunResult is what one scheduled run did: Accepted with the operation and item, or the guard-rail
// Rejection (busy, cooldown, owner limit, plan cap with nothing scheduled to delete, ...) that stopped it.
type ScheduledRunResult struct {
	PolicyID    string     `json:"policy_id"`
	VolumeID    string     `json:"volume_id"`
	OperationID string     `json:"operation_id"`
	Kind        Kind       `json:"kind,omitempty"`
	Accepted    bool       `json:"accepted"`
	ItemID      string     `json:"item_id,omitempty"`
	Rejection   *ErrorInfo `json:"rejection,omitempty"`
}

// scheduledRunsName is metrics.ScheduledRunsName (declared there with the other metric names).
const scheduledRunsName = metrics.ScheduledRunsName

// ScheduledRunWorkflow is what a policy's schedule starts: it sends the volume one request with
// Scheduled: true (through ScheduledRequestActivity, which takes the owner's permit like any request) and
// returns as soon as the request is accepted or rejected. It never waits for the operation itself, so the
// schedule's overlap policy (skip) only skips while this short run is in flight; a stuck operation is failed
// by its own deadline and cannot block the next night. A rejection is the run's result (and a log line and a
// metric), not an error to retry: the next night is the retry.
func ScheduledRunWorkflow(ctx workflow.Context, in ScheduledRunInput) (ScheduledRunResult, error) {
	info := workflow.GetInfo(ctx)
	sum := sha256.Sum256([]byte(info.WorkflowExecution.ID + "/" + info.WorkflowExecution.RunID))
	req := ScheduledRequest{PolicyID: in.PolicyID, VolumeID: in.VolumeID,
		OperationID: "sched-" + hex.EncodeToString(sum[:12])}
	actx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		TaskQueue:              TaskQueue,
		StartToCloseTimeout:    time.Minute,
		ScheduleToCloseTimeout: 10 * time.Minute, // bounded: an unreachable cluster fails this run, not the next
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: time.Second, BackoffCoefficient: 2,
			MaximumInterval: 30 * time.Second},
	})
	logger := workflow.GetLogger(ctx)
	mh := workflow.GetMetricsHandler(ctx)
	var res ScheduledRunResult
	if err := workflow.ExecuteActivity(actx, ScheduledRequestActivity, req).Get(ctx, &res); err != nil {
		logger.Error("scheduled run failed", "policy_id", in.PolicyID, "volume_id", in.VolumeID,
			"operation_id", req.OperationID, "error", err)
		mh.WithTags(map[string]string{"policy": in.PolicyID, "result": "failed", "type": "Internal"}).
			Counter(scheduledRunsName).Inc(1)
		return ScheduledRunResult{PolicyID: in.PolicyID, VolumeID: in.VolumeID, OperationID: req.OperationID}, err
	}
	if res.Rejection != nil {
		logger.Warn("scheduled run rejected", "policy_id", in.PolicyID, "volume_id", in.VolumeID,
			"operation_id", req.OperationID, "type", res.Rejection.Type, "message", res.Rejection.Message)
		mh.WithTags(map[string]string{"policy": in.PolicyID, "result": "rejected", "type": res.Rejection.Type}).
			Counter(scheduledRunsName).Inc(1)
		return res, nil
	}
	logger.Info("scheduled run accepted", "policy_id", in.PolicyID, "volume_id", in.VolumeID,
		"operation_id", res.OperationID, "item_id", res.ItemID)
	mh.WithTags(map[string]string{"policy": in.PolicyID, "result": "accepted", "type": ""}).
		Counter(scheduledRunsName).Inc(1)
	return res, nil
}

// ---- the volume's side: attachment and retention ----

// retentionChange versions the scheduled-create path of VolumeWorkflow.run (make room, then retention).
const retentionChange = "scheduled-retention"

func (v *volume) validateSetPolicy(ctx workflow.Context, a PolicyAttachment) error {
	if !v.st.Registered {
		return errNotFound("Volume %s not found.", v.volumeID)
	}
	if a.PolicyID != "" && !activities.ValidID(a.PolicyID) {
		return errInvalid("policy_id: must match %s", activities.IDPattern)
	}
	return nil
}

// setPolicy records the policy the volume is attached to and returns the previous one, so the caller can
// delete that policy's schedule. Scheduled requests from any other policy's schedule are rejected from now on.
func (v *volume) setPolicy(ctx workflow.Context, a PolicyAttachment) (string, error) {
	if err := v.validateSetPolicy(ctx, a); err != nil {
		return "", err
	}
	previous := v.st.PolicyID
	v.st.PolicyID = a.PolicyID
	return previous, nil
}

// makeRoom deletes scheduled items until the item being created (current, already counted as pending) fits
// under the plan cap: the request and its deletions run as one queued sequence under the volume's lock.
func (v *volume) makeRoom(ctx workflow.Context, req OperationRequest, current string) error {
	limit, limitErr := v.st.Spec.Plan.MaxBackups, errBackupLimit()
	if req.Kind == KindSnapshot {
		limit, limitErr = v.st.Spec.Plan.MaxSnapshots, errSnapshotLimit()
	}
	victims, ok := req.retention().Evictions(*v.items(req.Kind), current, countLive(*v.items(req.Kind))-limit)
	if !ok {
		return limitErr // the validator saw room; only a concurrent change could take it away
	}
	for _, it := range victims {
		if err := v.retentionDelete(ctx, req, it); err != nil {
			if temporal.IsCanceledError(err) {
				return err
			}
			return userError("RetentionFailed", "Could not delete %s %s to make room: %s", req.Kind, it.ItemID,
				rootMessage(err))
		}
	}
	return nil
}

// applyRetention deletes, oldest first, the scheduled items the policy no longer keeps once the new one
// (current) exists. A failed deletion is logged and left for the next run: the new item is already safe.
func (v *volume) applyRetention(ctx workflow.Context, req OperationRequest, current string) {
	for _, it := range req.retention().Expired(*v.items(req.Kind), current) {
		if err := v.retentionDelete(ctx, req, it); err != nil {
			workflow.GetLogger(ctx).Warn("retention could not delete an item; the next run retries",
				"volume_id", v.volumeID, "operation_id", req.OperationID, "item_id", it.ItemID, "error", err)
			if temporal.IsCanceledError(err) || ctx.Err() != nil {
				return
			}
		}
	}
}

// retentionDelete deletes one scheduled item through the DeleteWorkflow child, exactly like a user's delete
// (its own deadline and saga), and records it among the volume's recent operations.
func (v *volume) retentionDelete(ctx workflow.Context, req OperationRequest, it Item) error {
	spec := v.st.Spec
	del := OperationRequest{OperationID: req.OperationID + ".retention." + it.ItemID, Kind: KindDelete,
		Scheduled: true, PolicyID: req.PolicyID}
	if req.Kind == KindSnapshot {
		del.SnapshotID = it.ItemID
	} else {
		del.BackupID = it.ItemID
	}
	if p, err := v.item(req.Kind, it.ItemID); err == nil {
		p.Status = StatusDeleting
	}
	started := workflow.Now(ctx)
	err := workflow.ExecuteChildWorkflow(v.operationChild(ctx, del.OperationID, KindDelete), DeleteWorkflow, OperationInput{Volume: spec, Request: del, Item: it,
		StartedAt: started}).Get(ctx, nil)
	now := workflow.Now(ctx)
	rec := Operation{OperationID: del.OperationID, VolumeID: v.volumeID, Kind: KindDelete, ItemKind: req.Kind,
		ItemID: it.ItemID, Status: StatusCompleted, StartedAt: started, FinishedAt: &now, Scheduled: true}
	result := metrics.ResultCompleted
	if err != nil {
		rec.Status, rec.Error = outcome(err)
		result = metrics.ResultFailed
		if p, e := v.item(req.Kind, it.ItemID); e == nil {
			p.Status, p.Error = StatusAvailable, "retention delete failed: "+rec.Error.Message
		}
	} else {
		v.removeItem(req.Kind, it.ItemID, now)
	}
	v.addRecent(rec)
	mh := workflow.GetMetricsHandler(ctx)
	metrics.OperationStarted(mh, string(KindDelete))
	metrics.OperationFinished(mh, string(KindDelete), result, now.Sub(started))
	workflow.GetLogger(ctx).Info("retention deleted a scheduled item", "volume_id", v.volumeID,
		"operation_id", req.OperationID, "item_id", it.ItemID, "status", rec.Status)
	return err
}
