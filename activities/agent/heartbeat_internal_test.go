package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Called outside an activity (a test, a tool calling the methods directly), the helper neither heartbeats
// (which would panic) nor waits for a call that hangs.
func TestHypervisorCallOutsideAnActivity(t *testing.T) {
	defer SetCallHeartbeatEvery(time.Millisecond)()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))

	v, err := hypervisorCall(context.Background(), log, "test", nil, func(context.Context) (int, error) {
		time.Sleep(20 * time.Millisecond) // many heartbeat ticks
		return 7, nil
	})
	require.NoError(t, err)
	require.Equal(t, 7, v)

	wantErr := errors.New("driver failed")
	require.ErrorIs(t, hypervisorDo(context.Background(), log, "test", nil, func(context.Context) error {
		return wantErr
	}), wantErr, "the call's error is returned as it is, for classify")

	ctx, cancel := context.WithCancel(context.Background())
	release := make(chan struct{})
	defer close(release)
	time.AfterFunc(10*time.Millisecond, cancel)
	start := time.Now()
	err = hypervisorDo(ctx, log, "test", nil, func(context.Context) error { <-release; return nil })
	require.ErrorIs(t, err, context.Canceled)
	require.Less(t, time.Since(start), abandonAfter+time.Second)

	// A call that honours ctx is waited for: its own answer (and its cleanup) comes first.
	ctx, cancel = context.WithCancel(context.Background())
	time.AfterFunc(10*time.Millisecond, cancel)
	err = hypervisorDo(ctx, log, "test", nil, func(ctx context.Context) error {
		<-ctx.Done()
		return errors.Join(errors.New("stopped, partial file removed"), ctx.Err())
	})
	require.ErrorContains(t, err, "partial file removed")
}
