package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"time"

	"github.com/holdfast/holdfast/starter/api/apiv1"
)

// maxTransientFailures is how many polls in a row may fail with an unreachable API or a 5xx before watch
// gives up: an API restart or a Temporal hiccup should not end a watch of an operation that keeps running.
const maxTransientFailures = 10

// watch polls an operation until it ends, drawing progress unless --json asked for silence. It returns the
// final state and its raw document.
func (inv *invocation) watch(ctx context.Context, operationID string) (*apiv1.Operation, []byte, error) {
	var view *progressView
	if !inv.opts.json {
		view = newProgressView(inv.stdout, isTerminal(inv.stdout, inv.env), time.Now)
	}
	failures := 0
	for {
		var op apiv1.Operation
		raw, err := inv.api.getJSON(ctx, operationPath(operationID), &op)
		switch {
		case err == nil:
			failures = 0
			if terminal(op.Status) {
				if view != nil {
					view.finish(&op)
				}
				return &op, raw, nil
			}
			if view != nil {
				view.update(&op)
			}
		case transient(err) && failures < maxTransientFailures && ctx.Err() == nil:
			failures++
		default:
			if view != nil {
				view.interrupt()
			}
			if ctx.Err() != nil {
				return nil, nil, interrupted(ctx, operationID)
			}
			return nil, nil, err
		}
		t := time.NewTimer(pollInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			if view != nil {
				view.interrupt()
			}
			return nil, nil, interrupted(ctx, operationID)
		case <-t.C:
		}
	}
}

// interrupted says what a stopped watch left behind: stopping the CLI never stops the operation.
func interrupted(ctx context.Context, operationID string) error {
	return fmt.Errorf("interrupted; operation %s keeps running (follow it with: holdfast watch %s): %w",
		operationID, operationID, context.Cause(ctx))
}

// transient reports whether a failed poll is worth repeating: the API or what is behind it may come back,
// whereas a 4xx (NotFound, a revoked token) will answer the same again.
func transient(err error) bool {
	var down *unreachableError
	if errors.As(err, &down) {
		return true
	}
	var api *apiError
	return errors.As(err, &api) && api.Status >= 500
}

// isTerminal reports whether w is a terminal we may redraw with carriage returns. Pipes, files and test
// buffers get plain lines instead, so logs stay readable.
func isTerminal(w io.Writer, env func(string) string) bool {
	f, ok := w.(*os.File)
	if !ok || env("TERM") == "dumb" {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// progressView shows an operation's progress: one redrawn line on a terminal; elsewhere a plain line when
// something changed, at most once per second, so a CI log of a long backup stays short.
type progressView struct {
	w   io.Writer
	tty bool
	now func() time.Time

	drawn    bool // tty: a progress line is on screen, not yet ended by a newline
	wrote    bool // plain: at least one line written
	lastLine string
	lastAt   time.Time
}

func newProgressView(w io.Writer, tty bool, now func() time.Time) *progressView {
	return &progressView{w: w, tty: tty, now: now}
}

// update shows a running operation's state.
func (v *progressView) update(op *apiv1.Operation) {
	if v.tty {
		// \x1b[K clears what a longer previous line left behind.
		fmt.Fprintf(v.w, "\r%s\x1b[K", barLine(op))
		v.drawn = true
		return
	}
	line := plainLine(op)
	now := v.now()
	if line == v.lastLine || (v.wrote && now.Sub(v.lastAt) < time.Second) {
		return
	}
	fmt.Fprintln(v.w, line)
	v.wrote, v.lastLine, v.lastAt = true, line, now
}

// finish replaces the progress with the outcome. Failures are left to the caller, which prints them on
// stderr with the operation's error.
func (v *progressView) finish(op *apiv1.Operation) {
	if v.tty && v.drawn {
		fmt.Fprint(v.w, "\r\x1b[K")
		v.drawn = false
	}
	if op.Status == "failed" || op.Status == "aborted" {
		return
	}
	fmt.Fprintln(v.w, resultLine(op))
}

// interrupt ends a drawn line so that an error printed next starts on its own line.
func (v *progressView) interrupt() {
	if v.tty && v.drawn {
		fmt.Fprintln(v.w)
		v.drawn = false
	}
}

const barWidth = 20

// barLine is the terminal form, kept under 80 columns: the operation ID was printed when it started.
//
//	backup  uploading  [#####---------------]  25.0%  312.0 MB/s  ETA 10s
func barLine(op *apiv1.Operation) string {
	parts := []string{op.Kind, stage(op)}
	if p := op.Progress; p != nil {
		if frac, ok := fraction(p); ok {
			filled := int(frac * barWidth)
			parts = append(parts, "["+strings.Repeat("#", filled)+strings.Repeat("-", barWidth-filled)+"]",
				fmt.Sprintf("%5.1f%%", frac*100))
		} else if p.BytesDone > 0 {
			parts = append(parts, humanBytes(p.BytesDone))
		}
		parts = append(parts, rateAndETA(p)...)
	}
	return strings.Join(parts, "  ")
}

// plainLine is the log form, self-contained because it may be read without what came before.
//
//	backup op-1: uploading 25.0% (1.0 GiB of 4.0 GiB) 312.0 MB/s ETA 10s
func plainLine(op *apiv1.Operation) string {
	parts := []string{fmt.Sprintf("%s %s:", op.Kind, op.OperationID), stage(op)}
	if p := op.Progress; p != nil {
		if frac, ok := fraction(p); ok {
			parts = append(parts, fmt.Sprintf("%.1f%% (%s of %s)", frac*100, humanBytes(p.BytesDone), humanBytes(p.BytesTotal)))
		} else if p.BytesDone > 0 {
			parts = append(parts, humanBytes(p.BytesDone))
		}
		parts = append(parts, rateAndETA(p)...)
	}
	return strings.Join(parts, " ")
}

// resultLine reports a successful end.
func resultLine(op *apiv1.Operation) string {
	s := fmt.Sprintf("%s %s of %s %s", op.Kind, op.OperationID, op.VolumeID, op.Status)
	var extra []string
	if op.ItemID != "" {
		extra = append(extra, op.Kind+" "+op.ItemID)
	}
	if d, ok := elapsed(op); ok {
		extra = append(extra, "took "+formatSeconds(d.Seconds()))
	}
	if len(extra) > 0 {
		s += " (" + strings.Join(extra, ", ") + ")"
	}
	return s
}

// stage is the phase the worker reports, or the operation's status before there is one.
func stage(op *apiv1.Operation) string {
	if op.Progress != nil && op.Progress.Phase != "" {
		return op.Progress.Phase
	}
	return op.Status
}

func fraction(p *apiv1.Progress) (float64, bool) {
	if p.BytesTotal <= 0 {
		return 0, false
	}
	return min(max(float64(p.BytesDone)/float64(p.BytesTotal), 0), 1), true
}

func rateAndETA(p *apiv1.Progress) []string {
	var parts []string
	if p.BytesPerSecond > 0 {
		parts = append(parts, fmt.Sprintf("%.1f MB/s", p.BytesPerSecond/1e6))
	}
	if eta, ok := etaSeconds(p); ok {
		parts = append(parts, "ETA "+formatSeconds(eta))
	}
	return parts
}

// etaSeconds prefers the API's estimate and otherwise derives one from the rate, which the worker's
// heartbeat always carries.
func etaSeconds(p *apiv1.Progress) (float64, bool) {
	if p.ETASeconds != nil {
		return float64(*p.ETASeconds), *p.ETASeconds >= 0
	}
	if p.BytesPerSecond > 0 && p.BytesTotal > p.BytesDone {
		return float64(p.BytesTotal-p.BytesDone) / p.BytesPerSecond, true
	}
	return 0, false
}

func elapsed(op *apiv1.Operation) (time.Duration, bool) {
	if op.StartedAt.IsZero() || op.FinishedAt == nil || op.FinishedAt.Before(op.StartedAt) {
		return 0, false
	}
	return op.FinishedAt.Sub(op.StartedAt), true
}

// formatSeconds renders a duration the way people read an ETA: 9s, 4m05s, 2h03m.
func formatSeconds(s float64) string {
	n := int64(math.Round(s))
	switch {
	case n < 60:
		return fmt.Sprintf("%ds", n)
	case n < 3600:
		return fmt.Sprintf("%dm%02ds", n/60, n%60)
	default:
		return fmt.Sprintf("%dh%02dm", n/3600, n%3600/60)
	}
}

// humanBytes uses binary units, as volume sizes are powers of two.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v := float64(n)
	for _, u := range []string{"KiB", "MiB", "GiB", "TiB"} {
		v /= unit
		if v < unit || u == "TiB" {
			return fmt.Sprintf("%.1f %s", v, u)
		}
	}
	return "" // unreachable: the loop returns at TiB
}
