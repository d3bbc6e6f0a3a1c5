package workflows

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/holdfast/holdfast/activities"
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

// Bounds of a policy.
const (
	minPolicyInterval = time.Second
	maxKeep           = 1000
)

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

// defaultScheduledWait is how long a run of a cron policy without a window may wait for its turn.
const defaultScheduledWait = time.Hour

// WaitUntil is the latest time a run that started at start may still begin its operation: the end of the
// window it started in (a window policy, also with a cron that opens it), the next run (an interval policy),
// or start + defaultScheduledWait (a cron policy without a window). A run that started after its window
// closed (caught up late) gets a time already past: it tries once.
func (p Policy) WaitUntil(start time.Time) time.Time {
	switch {
	case p.Window != nil:
		from, _, length, problem := p.Window.parse()
		if problem != "" {
			return start
		}
		local := start.In(p.Retention().location())
		opened := time.Date(local.Year(), local.Month(), local.Day(), 0, 0, 0, 0, local.Location()).Add(from)
		if opened.After(local) {
			opened = opened.AddDate(0, 0, -1)
		}
		return opened.Add(length).UTC()
	case p.Interval() > 0:
		return start.Add(p.Interval()).UTC()
	default:
		return start.Add(defaultScheduledWait).UTC()
	}
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
