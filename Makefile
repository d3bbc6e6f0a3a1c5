# Holdfast build, test and run targets. The two that matter: `make run` and `make test`.
#
# Each area (temporal, s3 servers, libvirt, ceph) adds its own targets in scripts/mk/*.mk:
#   APT_PACKAGES += ...        Debian packages `make deps` installs
#   SERVICES     += name       a service with targets services-up-name / services-down-name
#   TOOLS        += bin/x      a tool built from source (cached per machine, see scripts/tool.sh)
SHELL := /bin/bash
GO    ?= go
# go-ceph v0.34.0 builds only with the pacific tag (bookworm ships Ceph 16.2); keep it here so that
# `go build`, `go vet` and `go test` all agree.
export GOFLAGS := -buildvcs=false -tags=pacific
export HOLDFAST_BIN_DIR := $(CURDIR)/bin
export HOLDFAST_RUN_DIR ?= $(CURDIR)/.run
TEST_TIMEOUT ?= 25m

APT_PACKAGES :=
SERVICES     :=
TOOLS        :=
BENCHES      :=

# The included files define targets of their own; plain `make` must still build, never start a service.
.DEFAULT_GOAL := all

include $(sort $(wildcard scripts/mk/*.mk))

.PHONY: all build run test test-unit test-go lint vet fmt bench deps go-check tools services-up services-down clean
all: build

build:
	$(GO) build -o bin/holdfast ./cmd/holdfast

# run and test install what they need first, each step saying what it does: Debian packages (deps: a no-op
# once present, root needed the first time), then tools built from source once per machine.
run: go-check
	@echo "make run: step 1/4: Debian packages (qemu-utils, librados headers, ...)"
	@$(MAKE) --no-print-directory deps
	@echo "make run: step 2/4: building bin/holdfast"
	@$(MAKE) --no-print-directory build
	@echo "make run: step 3/4: the Temporal CLI dev server (built from source the first time: ~10 minutes on 2 cores)"
	@$(MAKE) --no-print-directory temporal
	@echo "make run: step 4/4: bin/holdfast dev"
	bin/holdfast dev

# go-check: the one thing neither target installs.
go-check:
	@command -v $(GO) >/dev/null || { echo "make: Go is not on PATH: install Go (go.mod says which) and" \
		"export PATH=/usr/local/go/bin:\$$PATH" >&2; exit 1; }

## deps: install the Debian packages every area needs (make run and make test call it; a no-op once done).
deps:
	@scripts/apt-install.sh $(sort $(APT_PACKAGES))

tools: $(TOOLS)

services-up: $(addprefix services-up-,$(SERVICES))
services-down: $(addprefix services-down-,$(SERVICES))

## test: lint (scripts/mk/lint.mk), build the tools, start every service, run all tests, stop the services
## (even on failure).
test: go-check deps
	@echo "make test: tools (built from source once per machine), lint, then every test against real services"
	@$(MAKE) --no-print-directory lint tools
	@scripts/with-services.sh $(MAKE) --no-print-directory test-go

# The fault-injection suite (scripts/mk/faults.mk) and the Temporal cluster suite (scripts/mk/cluster.mk) run
# on their own, after the rest: they load the machine with servers, MinIOs and killed processes, which would
# only make the timing of the others noisy.
test-go:
	$(GO) vet ./...
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) -skip '^Test(Fault|Cluster)' ./...
	$(MAKE) --no-print-directory test-faults
	$(MAKE) --no-print-directory test-cluster

## test-unit: tests that need no service (the ones that do skip, naming their make target).
test-unit:
	$(GO) test -count=1 ./...

## bench: every area's benchmark (BENCHES += name → target bench-name), printed as ratios to a baseline.
bench: tools
	@scripts/with-services.sh $(MAKE) --no-print-directory $(addprefix bench-,$(BENCHES))

vet:
	$(GO) vet ./...

fmt:
	gofmt -l -w .

clean:
	rm -rf bin .run
