package workflows

import (
	"fmt"

	"go.temporal.io/sdk/temporal"

	"github.com/holdfast/holdfast/activities"
)

// Error types of user-facing rejections and failures (stable: the HTTP API maps them to status codes). The
// types an activity can fail with too are the activities' own (one definition each).
const (
	ErrAttachedRunning = activities.ErrAttachedRunning
	ErrNoBackupStorage = activities.ErrNoBackupStorage
	ErrNotFound        = activities.ErrNotFound
	ErrInvalidArgument = activities.ErrInvalidArgument
)

const (
	ErrVolumeBusy           = "VolumeBusy"
	ErrCooldown             = "Cooldown"
	ErrSnapshotLimit        = "SnapshotLimit"
	ErrBackupLimit          = "BackupLimit"
	ErrOwnerLimit           = "OwnerLimit"
	ErrConfirmationMismatch = "ConfirmationMismatch"
	ErrNoActiveOperation    = "NoActiveOperation"
	ErrDeadlineExceeded     = "DeadlineExceeded"
	ErrAborted              = "Aborted"
	ErrHypervisorDown       = "HypervisorUnavailable"
	// ErrUnavailable: the control plane was too busy to answer in time (HTTP 503 with Retry-After).
	ErrUnavailable = "Unavailable"
)

// OwnerLimitRetryAfter is the Retry-After, in seconds, given with ErrOwnerLimit: when an operation of the
// owner's may have ended (a guess: operations take seconds to hours; the bench's second-long backups showed
// 30 s keeping a polite client idle most of the time).
const OwnerLimitRetryAfter = 5

// UnavailableRetryAfter is the Retry-After, in seconds, given with ErrUnavailable.
const UnavailableRetryAfter = 5

// UnavailableMessage is the message of ErrUnavailable.
const UnavailableMessage = "Holdfast is too busy to answer now. Try again in 5 seconds."

// errUnavailable carries UnavailableRetryAfter as details too, for Retry-After.
func errUnavailable() error {
	return temporal.NewNonRetryableApplicationError(UnavailableMessage, ErrUnavailable, nil,
		int64(UnavailableRetryAfter))
}

// userError is a typed, non-retryable application error carrying the spec's exact message.
func userError(errType, format string, args ...any) error {
	return temporal.NewNonRetryableApplicationError(fmt.Sprintf(format, args...), errType, nil)
}

func errVolumeBusy(kind Kind) error {
	return userError(ErrVolumeBusy, "Volume is busy with operation: %s", kind)
}

// errCooldown carries the remaining seconds as details too, for Retry-After.
func errCooldown(seconds int64) error {
	return temporal.NewNonRetryableApplicationError(
		fmt.Sprintf("Volume is in cooldown. Try again in %d seconds.", seconds), ErrCooldown, nil, seconds)
}

func errSnapshotLimit() error {
	return userError(ErrSnapshotLimit, "Snapshot limit reached. Delete an existing snapshot first.")
}

func errBackupLimit() error {
	return userError(ErrBackupLimit, "Backup limit reached. Delete an existing backup first.")
}

func errOwnerLimit(limit int) error {
	return userError(ErrOwnerLimit,
		"Too many operations in flight for this account (limit %d). Try again when one finishes.", limit)
}

func errAttachedRunning() error {
	return userError(ErrAttachedRunning, activities.MsgAttachedRunning)
}

func errNoBackupStorage() error {
	return userError(ErrNoBackupStorage, "Hypervisor has no backup storage configured.")
}

func errConfirmation(what, name string) error {
	return userError(ErrConfirmationMismatch, "Confirmation does not match: type the %s name %q to confirm.", what, name)
}

func errNotFound(format string, args ...any) error { return userError(ErrNotFound, format, args...) }

func errInvalid(format string, args ...any) error {
	return userError(ErrInvalidArgument, format, args...)
}
