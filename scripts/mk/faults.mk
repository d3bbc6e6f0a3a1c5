# Fault-injection suite (cmd/holdfast/faults_test.go, tests TestFault*): real worker, agent and API processes
# on a Temporal dev server, with faults injected from outside — kill -9 of an agent or the control worker,
# a MinIO stopped mid-upload (for 30 s, and for good), a full fs store (a tmpfs: needs root, as CI has),
# damaged chunks, a hypervisor that never comes back — and the architecture's invariants checked after each.
# Every test starts its own dev server and its own MinIO (so stopping it disturbs nothing else): the suite
# needs the binaries, not the shared services. `make test` runs it too (go test ./...).
FAULTS_TIMEOUT  ?= 20m
# The cases mostly wait (throttled transfers, heartbeat timeouts, deadlines), so more run at once than cores.
FAULTS_PARALLEL ?= 4

.PHONY: test-faults
## test-faults: only the fault-injection suite (dev server and MinIO per test; a tmpfs for the full disk).
test-faults: bin/temporal bin/minio
	$(GO) test -count=1 -timeout $(FAULTS_TIMEOUT) -parallel $(FAULTS_PARALLEL) -run '^TestFault' ./cmd/holdfast/
