# Disaster recovery: the RTO of a simulated site loss (cmd/drbench). A bucket in local MinIO gets 1,028
# backups of 68 volumes written by the engine as a burned hypervisor left them; a fresh control plane (its
# own Temporal dev server, empty) rebuilds the catalog from it and restores the big volumes on another
# hypervisor. Printed as seconds per 1,000 manifests and as a ratio to plain S3 GETs of the same chunks.
BENCHES += dr

.PHONY: bench-dr
## bench-dr: site-loss RTO against local MinIO: catalog rebuild per 1,000 backups, restore ÷ plain S3 GET.
bench-dr: bin/minio bin/versitygw bin/temporal
	@scripts/services/s3.sh up
	$(GO) run ./cmd/drbench -endpoint $(HOLDFAST_TEST_S3_MINIO) -temporal $(HOLDFAST_TEMPORAL_BIN) \
		-dir $(HOLDFAST_RUN_DIR)/bench-dr
