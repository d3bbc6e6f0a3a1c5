package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/holdfast/holdfast/starter/api/apiv1"
)

func uploading(done, total int64, bps float64, eta *int64) *apiv1.Operation {
	return &apiv1.Operation{OperationID: "op-1", VolumeID: "vol1", Kind: "backup", ItemID: "back-1", Status: "creating",
		Progress: &apiv1.Progress{Phase: "uploading", BytesDone: done, BytesTotal: total, BytesPerSecond: bps,
			ETASeconds: eta}}
}

func ptr(n int64) *int64 { return &n }

// fakeClock hands out the times a test sets, so throttling is deterministic.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

func TestPlainProgressAtMostOncePerSecond(t *testing.T) {
	var out bytes.Buffer
	clock := &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	v := newProgressView(&out, false, clock.now)
	const gib = 1 << 30

	v.update(&apiv1.Operation{OperationID: "op-1", Kind: "backup", Status: "pending"}) // printed: the first line
	clock.advance(500 * time.Millisecond)
	v.update(uploading(gib/2, 4*gib, 3e8, ptr(12))) // changed, but within the second: skipped
	clock.advance(500 * time.Millisecond)
	v.update(uploading(gib, 4*gib, 312e6, ptr(10))) // a second later: printed
	clock.advance(1500 * time.Millisecond)
	v.update(uploading(gib, 4*gib, 312e6, ptr(10))) // unchanged: skipped however long it has been
	clock.advance(300 * time.Millisecond)
	v.update(uploading(3*gib, 4*gib, 312e6, nil)) // changed, 1.8s after the last printed line: printed
	done := uploading(4*gib, 4*gib, 0, nil)
	done.Status, done.StartedAt = "available", time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	finished := time.Date(2026, 1, 2, 5, 7, 5, 0, time.UTC)
	done.FinishedAt = &finished
	v.finish(done)

	want := `backup op-1: pending
backup op-1: uploading 25.0% (1.0 GiB of 4.0 GiB) 312.0 MB/s ETA 10s
backup op-1: uploading 75.0% (3.0 GiB of 4.0 GiB) 312.0 MB/s ETA 3s
backup op-1 of vol1 available (backup back-1, took 2h03m)
`
	if out.String() != want {
		t.Errorf("output:\n%s\nwant:\n%s", out.String(), want)
	}
}

func TestTerminalProgressRedrawsOneLine(t *testing.T) {
	var out bytes.Buffer
	v := newProgressView(&out, true, time.Now)
	v.update(&apiv1.Operation{Kind: "snapshot", Status: "pending"})
	v.update(uploading(1<<30, 4<<30, 312e6, ptr(10)))
	v.interrupt()
	v.update(uploading(4<<30, 4<<30, 312e6, ptr(0)))
	v.finish(&apiv1.Operation{OperationID: "op-1", VolumeID: "vol1", Kind: "backup", Status: "available"})

	want := "\rsnapshot  pending\x1b[K" +
		"\rbackup  uploading  [#####---------------]   25.0%  312.0 MB/s  ETA 10s\x1b[K" +
		"\n" + // interrupt: an error printed next starts on its own line
		"\rbackup  uploading  [####################]  100.0%  312.0 MB/s  ETA 0s\x1b[K" +
		"\r\x1b[K" + // finish clears the bar before the outcome
		"backup op-1 of vol1 available\n"
	if out.String() != want {
		t.Errorf("output %q\nwant   %q", out.String(), want)
	}
}

func TestFailureLeavesTheMessageToTheCaller(t *testing.T) {
	var out bytes.Buffer
	v := newProgressView(&out, true, time.Now)
	v.update(uploading(1, 2, 0, nil))
	v.finish(&apiv1.Operation{Kind: "backup", Status: "failed"})
	if !strings.HasSuffix(out.String(), "\r\x1b[K") {
		t.Errorf("output %q: want the bar cleared and nothing else", out.String())
	}
}

func TestProgressLines(t *testing.T) {
	for _, tc := range []struct {
		op         *apiv1.Operation
		bar, plain string
	}{
		{
			op:  &apiv1.Operation{OperationID: "op-1", Kind: "restore", Status: "restoring"},
			bar: "restore  restoring", plain: "restore op-1: restoring",
		},
		{
			// No total yet: bytes so far, and an ETA only when the API gives one.
			op:  uploading(5<<20, 0, 2.5e6, nil),
			bar: "backup  uploading  5.0 MiB  2.5 MB/s", plain: "backup op-1: uploading 5.0 MiB 2.5 MB/s",
		},
		{
			// ETA derived from the rate when the API leaves it out.
			op:  uploading(0, 600e6, 1e6, nil),
			bar: "backup  uploading  [--------------------]    0.0%  1.0 MB/s  ETA 10m00s", plain: "backup op-1: uploading 0.0% (0 B of 572.2 MiB) 1.0 MB/s ETA 10m00s",
		},
		{
			// A heartbeat past the total (a resumed upload counting twice) never overflows the bar.
			op:  uploading(5<<30, 4<<30, 0, ptr(-1)),
			bar: "backup  uploading  [####################]  100.0%", plain: "backup op-1: uploading 100.0% (5.0 GiB of 4.0 GiB)",
		},
	} {
		if got := barLine(tc.op); got != tc.bar {
			t.Errorf("barLine = %q, want %q", got, tc.bar)
		}
		if got := plainLine(tc.op); got != tc.plain {
			t.Errorf("plainLine = %q, want %q", got, tc.plain)
		}
	}
}

func TestUnits(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536 << 20: "1.5 GiB", 3 << 50: "3072.0 TiB"} {
		if got := humanBytes(n); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", n, got, want)
		}
	}
	for s, want := range map[float64]string{0: "0s", 59.4: "59s", 59.6: "1m00s", 3599: "59m59s", 7380: "2h03m"} {
		if got := formatSeconds(s); got != want {
			t.Errorf("formatSeconds(%v) = %q, want %q", s, got, want)
		}
	}
}

func TestInterruptedWatchLeavesTheOperationRunning(t *testing.T) {
	f, srv := newFakeAPI(t)
	f.addOperation("op-5", "vol1", "backup", "back-5", map[string]any{"status": "creating"})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	var stdout, stderr bytes.Buffer
	env := map[string]string{"HOLDFAST_API": srv.URL, "HOLDFAST_TOKEN": "tok-panel"}
	code := Run(ctx, []string{"watch", "op-5"}, &stdout, &stderr, func(k string) string { return env[k] })
	if code != ExitError {
		t.Errorf("exit %d, want %d", code, ExitError)
	}
	if want := "error: interrupted; operation op-5 keeps running (follow it with: holdfast watch op-5)"; !strings.HasPrefix(stderr.String(), want) {
		t.Errorf("stderr %q, want prefix %q", stderr.String(), want)
	}
}
