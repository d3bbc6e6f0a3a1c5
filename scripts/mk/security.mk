# Security suite (issue 11): every tenancy attack replayed through the real API of real worker, agent and
# API processes (cmd/holdfast TestSecurity*), with the tests behind them on real services: the agent's own
# placement checks, the file and rbd drivers (formats never guessed, exclusive creation, in use from the
# cluster), authenticated manifests, the API's edges, placement in the config, reservations and
# deregistration in the workflows. `make test` runs all of them too, as part of `go test ./...`.
SECURITY_TIMEOUT ?= 15m

.PHONY: test-security test-security-go
## test-security: only the security suite (starts the services it needs, like `make test`).
test-security: tools
	@scripts/with-services.sh $(MAKE) --no-print-directory test-security-go

test-security-go:
	$(GO) test -count=1 -timeout $(SECURITY_TIMEOUT) -run '^TestSecurity' ./cmd/holdfast/ ./starter/ ./starter/api/ ./activities/agent/
	$(GO) test -count=1 -run '^TestAPI(SlowBody|HTTPServer|StrictJSON|TypeErrors|WrongMethod|NonCanonical|OwnerRestore|BadNewVolumeID|Healthz|Deregister)' ./starter/api/
	$(GO) test -count=1 -run '^Test(Placement|NewVolumeRef|VolumeRoots)' ./workers/config/
	$(GO) test -count=1 -run '^Test(Reserved|Unreserved|Deregister|RestoreToNewVolume)' ./workflows/
	$(GO) test -count=1 -run '^Test(DeleteVolumeLeaves|GuestWritten)' ./activities/agent/
	$(GO) test -count=1 -run '^Test(RawVolume|QCOW2|Recorded|Symlinks|Neighbours|Creator|Record|Crash|Stale|Concurrent|Rollback|Conformance)' ./activities/volume/file/
	$(GO) test -count=1 -run '^Test(InUse|OwnHandles|Clone|Concurrent|Unrecorded|Conformance)' ./activities/volume/rbd/
	$(GO) test -count=1 -run '^Test(Forged|Tampered|Genuine|Unencrypted)' ./activities/backup/
