# Lint: golangci-lint with .golangci.yml — gofmt, go vet, a few cheap checks, and depguard rules that keep the
# layers (cmd → starter → workers → workflows → activities) importing downwards only. `make test` runs it first.
# Built from source through the Go module proxy (scripts/tool.sh), cached per machine.
GOLANGCI_LINT_VERSION := v2.15.0
TOOLS += bin/golangci-lint

.PHONY: lint-selftest
## lint: golangci-lint over the whole module (fails on any finding).
lint: bin/golangci-lint
	bin/golangci-lint run ./...
# Depends on this file so that a new GOLANGCI_LINT_VERSION replaces the binary already in bin/.
bin/golangci-lint: scripts/mk/lint.mk
	@scripts/tool.sh golangci-lint $(GOLANGCI_LINT_VERSION) github.com/golangci/golangci-lint/v2/cmd/golangci-lint

## lint-selftest: checks that the layer rules bite: an upward import added for the run must fail the lint.
lint-selftest: bin/golangci-lint
	@scripts/lint-selftest.sh
