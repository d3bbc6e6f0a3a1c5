# Fleet: a night of 1,000 volumes of 50 owners on one hypervisor (cmd/fleetbench), through the HTTP API as a
# panel and a scheduler client send it. Registrations/s; snapshot and backup bursts (accept latency
# percentiles, operations completed/s, refusals by type, 5xx); the same night through policy schedules
# (accepted vs missed runs); Temporal's and the workers' RSS. Printed as percentiles and as ratios to a
# trivial workflow of a snapshot's shape (one update, one activity) run the same way.
BENCHES += fleet

.PHONY: bench-fleet
## bench-fleet: 1,000 volumes' night: registrations/s, snapshot/backup bursts ÷ trivial workflow, scheduled runs missed.
bench-fleet: bin/temporal
	$(GO) run ./cmd/fleetbench -temporal $(HOLDFAST_TEMPORAL_BIN) -dir $(HOLDFAST_RUN_DIR)/bench-fleet
