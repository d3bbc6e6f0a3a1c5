# Temporal CLI dev server, built from source (no binary downloads), cached per machine.
TEMPORAL_VERSION := v1.5.1
TOOLS += bin/temporal
export HOLDFAST_TEMPORAL_BIN := $(CURDIR)/bin/temporal

.PHONY: temporal
temporal: bin/temporal
bin/temporal:
	@CGO_ENABLED=0 scripts/tool.sh temporal $(TEMPORAL_VERSION) github.com/temporalio/cli/cmd/temporal
