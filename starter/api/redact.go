package api

import (
	"fmt"

	"github.com/holdfast/holdfast/starter"
	"github.com/holdfast/holdfast/workflows"
)

// An owner is a customer: what it reads of a failure is the spec's message or a plain sentence, never what
// a hypervisor or a store said (host paths, file sizes, store layout, step names). The panel sees it all.

// ownerMessages are the error types whose messages are written for customers (the spec's, and Holdfast's
// own sentences that name nothing internal).
var ownerMessages = map[string]bool{
	workflows.ErrVolumeBusy: true, workflows.ErrCooldown: true, workflows.ErrSnapshotLimit: true,
	workflows.ErrBackupLimit: true, workflows.ErrOwnerLimit: true, workflows.ErrAttachedRunning: true,
	workflows.ErrNoBackupStorage: true, workflows.ErrConfirmationMismatch: true, workflows.ErrAborted: true,
	workflows.ErrNoActiveOperation: true,
}

// redactError is what an owner reads of an operation's error.
func redactError(operationID string, e *workflows.ErrorInfo) *workflows.ErrorInfo {
	if e == nil || ownerMessages[e.Type] {
		return e
	}
	msg := fmt.Sprintf("The operation failed. Your provider can look up why (operation %s).", operationID)
	switch e.Type {
	case workflows.ErrDeadlineExceeded:
		msg = "The operation did not finish in time; it was stopped and what it had made was removed."
	case "": // an abort carries no type
		if e.Message != "" {
			msg = "The operation was aborted."
		}
	}
	return &workflows.ErrorInfo{Type: e.Type, Message: msg}
}

// forOwner is an operation as an owner reads it.
func forOwner(op *workflows.Operation) *workflows.Operation {
	out := *op
	out.Error = redactError(op.OperationID, op.Error)
	return &out
}

// volumeForOwner is a volume as an owner reads it: its items' errors redacted like operations'.
func volumeForOwner(v *starter.Volume) *starter.Volume {
	out := *v
	redact := func(items []workflows.Item) []workflows.Item {
		cp := make([]workflows.Item, len(items))
		for i, it := range items {
			if it.Error != "" {
				it.Error = redactError(it.OperationID, &workflows.ErrorInfo{Type: "OperationFailed", Message: it.Error}).Message
			}
			cp[i] = it
		}
		return cp
	}
	out.Snapshots, out.Backups = redact(v.Snapshots), redact(v.Backups)
	if v.Active != nil {
		out.Active = forOwner(v.Active)
	}
	return &out
}
