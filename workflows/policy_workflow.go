package workflows

import (
	"go.temporal.io/sdk/workflow"
)

// PolicyWorkflowID is the ID of an API-managed policy's entity workflow.
func PolicyWorkflowID(policyID string) string { return "policy/" + policyID }

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
