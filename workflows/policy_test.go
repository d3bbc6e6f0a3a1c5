package workflows

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestPolicyValidationNamesTheField(t *testing.T) {
	ok := Policy{Kind: KindBackup, Window: &Window{Start: "01:00", End: "05:00"}, TimeZone: "Europe/Berlin",
		KeepLast: 7, KeepWeekly: 4}
	require.NoError(t, ok.Validate())
	assert.Equal(t, 4*time.Hour, ok.JitterDuration(), "jitter defaults to the window's length")
	wrap := Policy{Kind: KindSnapshot, Window: &Window{Start: "23:30", End: "02:00"}}
	require.NoError(t, wrap.Validate())
	assert.Equal(t, 150*time.Minute, wrap.JitterDuration())
	h, m := wrap.WindowStart()
	assert.Equal(t, [2]int{23, 30}, [2]int{h, m})
	require.NoError(t, Policy{Kind: KindBackup, Every: "2s", KeepLast: 2}.Validate())
	require.NoError(t, Policy{Kind: KindBackup, Cron: "0 1 * * 0", Window: &Window{Start: "01:00", End: "03:00"}}.Validate())
	require.NoError(t, Policy{Kind: KindBackup, Cron: "@daily"}.Validate())

	for _, tc := range []struct {
		p    Policy
		want string
	}{
		{Policy{Kind: "restore", Every: "1h"}, "kind: must be snapshot or backup"},
		{Policy{Kind: KindBackup}, "every: give every, cron or window"},
		{Policy{Kind: KindBackup, Every: "soon"}, "every: not a duration"},
		{Policy{Kind: KindBackup, Every: "10ms"}, "every: must be at least 1s"},
		{Policy{Kind: KindBackup, Every: "1h", Cron: "0 1 * * *"}, "every: give either every or cron"},
		{Policy{Kind: KindBackup, Every: "1h", Window: &Window{Start: "01:00", End: "02:00"}}, "window: an interval"},
		{Policy{Kind: KindBackup, Window: &Window{Start: "1:00", End: "05:00"}}, "window.start: must be HH:MM"},
		{Policy{Kind: KindBackup, Window: &Window{Start: "01:00", End: "24:00"}}, "window.end: must be HH:MM"},
		{Policy{Kind: KindBackup, Window: &Window{Start: "01:00", End: "01:00"}}, "window.end: must differ"},
		{Policy{Kind: KindBackup, Window: &Window{Start: "01:00", End: "05:00"}, Jitter: "5h"}, "jitter: must not exceed the window's length 4h0m0s"},
		{Policy{Kind: KindBackup, Every: "1m", Jitter: "2m"}, "jitter: must not exceed every"},
		{Policy{Kind: KindBackup, Every: "1m", Jitter: "-1s"}, "jitter: must not be negative"},
		{Policy{Kind: KindBackup, Cron: "0 2 * * *", Window: &Window{Start: "01:00", End: "05:00"}}, "cron: must fire at window.start"},
		{Policy{Kind: KindBackup, Cron: "0 1"}, "cron: must have 5 to 7 fields"},
		{Policy{Kind: KindBackup, Every: "1h", TimeZone: "Mars/Olympus"}, "time_zone: unknown time zone"},
		{Policy{Kind: KindBackup, Every: "1h", KeepDaily: -1}, "keep_daily: must be 0 to 1000"},
		{Policy{Kind: KindBackup, Every: "1h", PolicyID: "-x"}, "policy_id: must match"},
	} {
		err := tc.p.Validate()
		require.Error(t, err, "%+v", tc.p)
		typ, msg := errType(t, err)
		assert.Equal(t, ErrInvalidArgument, typ)
		assert.Contains(t, msg, tc.want)
	}
}
