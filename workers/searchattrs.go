package workers

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"go.temporal.io/api/operatorservice/v1"
	"go.temporal.io/api/serviceerror"
	"go.temporal.io/sdk/client"

	"github.com/holdfast/holdfast/workflows"
)

// ErrSearchAttributesUnchecked wraps a failure to list the namespace's search attributes (e.g. a client
// not allowed the operator API): the caller may go on and log it.
var ErrSearchAttributesUnchecked = errors.New("search attributes not checked")

// CheckSearchAttributes verifies that the namespace has every search attribute Holdfast's workflows upsert,
// with its type. A missing one would fail those workflows' tasks over and over (e.g. after an upgrade that
// added one), so the control worker refuses to start and names the commands that register them.
func CheckSearchAttributes(ctx context.Context, c client.Client, namespace string) error {
	resp, err := c.OperatorService().ListSearchAttributes(ctx,
		&operatorservice.ListSearchAttributesRequest{Namespace: namespace})
	if err != nil {
		var denied *serviceerror.PermissionDenied
		var unimplemented *serviceerror.Unimplemented
		if errors.As(err, &denied) || errors.As(err, &unimplemented) {
			return fmt.Errorf("%w: %w", ErrSearchAttributesUnchecked, err)
		}
		return fmt.Errorf("list search attributes of namespace %s: %w", namespace, err)
	}
	have := resp.GetCustomAttributes()
	var problems, fixes []string
	for _, sa := range workflows.SearchAttributes {
		got, ok := have[sa.Name]
		switch {
		case !ok:
			problems = append(problems, sa.Name+" is missing")
			fixes = append(fixes, fmt.Sprintf("temporal operator search-attribute create --namespace %s --name %s --type %s",
				namespace, sa.Name, sa.Type))
		case got.String() != sa.Type:
			problems = append(problems, fmt.Sprintf("%s is %s, want %s", sa.Name, got, sa.Type))
		}
	}
	if len(problems) == 0 {
		return nil
	}
	msg := fmt.Sprintf("namespace %s: search attribute %s", namespace, strings.Join(problems, "; "))
	if len(fixes) > 0 {
		msg += "; register with:\n  " + strings.Join(fixes, "\n  ")
	}
	return errors.New(msg)
}
