package apiv1

import "encoding/json"

// Policy is the body of PUT /v1/policies/{policy_id} (panel tokens only) and of its answer, the policy as
// stored (beyond v1). Durations are strings ("24h", "2s").
type Policy struct {
	// PolicyID may be left out of a request: it is the path's, and refused when it names another.
	PolicyID string `json:"policy_id,omitempty"`
	// Kind is what each run takes: snapshot or backup.
	Kind string `json:"kind"`
	// Every is an interval, Cron a cron expression; with neither, the policy runs nightly in its Window.
	Every    string  `json:"every,omitempty"`
	Cron     string  `json:"cron,omitempty"`
	TimeZone string  `json:"time_zone,omitempty"`
	Window   *Window `json:"window,omitempty"`
	Jitter   string  `json:"jitter,omitempty"`
	// Retention of the items the policy's runs made.
	KeepLast    int `json:"keep_last,omitempty"`
	KeepDaily   int `json:"keep_daily,omitempty"`
	KeepWeekly  int `json:"keep_weekly,omitempty"`
	KeepMonthly int `json:"keep_monthly,omitempty"`
}

// Window is a daily time window, "01:00" to "05:00", in the policy's time zone.
type Window struct {
	Start string `json:"start"`
	End   string `json:"end"`
}

// AttachPolicyRequest is the body of PUT /v1/volumes/{volume_id}/policy (beyond v1): PolicyID is a policy's
// ID as a JSON string to attach the volume to it, or null to detach it. It is raw JSON because the key is
// required and null means something: a *string could not tell a missing key from null.
type AttachPolicyRequest struct {
	PolicyID json.RawMessage `json:"policy_id"`
}

// PolicyAttachment is the answer to PUT /v1/volumes/{volume_id}/policy: PolicyID and ScheduleID are null
// once the volume is detached.
type PolicyAttachment struct {
	VolumeID   string  `json:"volume_id"`
	PolicyID   *string `json:"policy_id"`
	ScheduleID *string `json:"schedule_id"`
}
