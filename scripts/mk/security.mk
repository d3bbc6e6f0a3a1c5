# Security suite (issue 11): every tenancy attack replayed through the real API of real worker, agent and
# API processes (cmd/holdfast TestSecurity*), with the driver, store, config and API-edge tests that back
# them (each named Security…). `make test` runs them too, as part of `go test ./...`.
SECURITY_TIMEOUT ?= 15m

.PHONY: test-security
## test-security: only the security suite.
test-security: bin/temporal
	$(GO) test -count=1 -timeout $(SECURITY_TIMEOUT) -run 'Security' ./cmd/holdfast/ ./starter/... \
		./activities/... ./workers/...
