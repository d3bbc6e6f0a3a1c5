package api

import (
	"context"
	"time"

	"github.com/holdfast/holdfast/starter"
	"github.com/holdfast/holdfast/workflows"
)

// Backend is what the handlers ask of the control plane: exactly the starter client's methods they call,
// so that a handler test can stand a few maps in for Temporal. *starter.Client is the one implementation
// in production. The contract is the client's: a refusal is a *starter.Error whose Type StatusOf maps to a
// status (a volume, operation or policy that does not exist is Type NotFound), with the message the caller
// reads; any other error is a fault, logged and answered 500 without its text. Owner scoping is the
// server's, not the Backend's: it answers for every owner.
type Backend interface {
	RegisterVolume(ctx context.Context, req starter.RegisterRequest) (*starter.Volume, error)
	Volume(ctx context.Context, volumeID string) (*starter.Volume, error)
	Deregister(ctx context.Context, volumeID, confirm string, keepBackupsFor time.Duration) (*workflows.Operation, error)
	// RequestRead asks a volume, as just read by Volume, for a snapshot, a backup or a delete (a restore goes
	// through Restore).
	RequestRead(ctx context.Context, v *starter.Volume, req workflows.OperationRequest) (*workflows.Operation, error)
	Restore(ctx context.Context, volumeID string, req starter.RestoreRequest) (*workflows.Operation, error)
	Abort(ctx context.Context, volumeID, reason string) (*workflows.Operation, error)
	Operation(ctx context.Context, operationID string) (*workflows.Operation, error)
	PutPolicy(ctx context.Context, p workflows.Policy) (*workflows.Policy, error)
	AttachPolicy(ctx context.Context, volumeID, policyID string) (*starter.PolicyAttachment, error)
}

var _ Backend = (*starter.Client)(nil)
