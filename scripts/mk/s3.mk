# S3 servers for the backup-store conformance suite and the data-plane benchmark (activities/backup).
# Both are built from source through the Go module proxy (scripts/tool.sh), cached per machine.
MINIO_VERSION     := v0.0.0-20260212201848-7aac2a2c5b7c
VERSITYGW_VERSION := v1.8.0

APT_PACKAGES += curl
TOOLS        += bin/minio bin/versitygw
SERVICES     += s3
BENCHES      += backup

# What the tests read (activities/backup/s3/s3test uses the same values as defaults).
export HOLDFAST_TEST_S3_MINIO      := http://127.0.0.1:9000
export HOLDFAST_TEST_S3_VERSITYGW  := http://127.0.0.1:9004
export HOLDFAST_TEST_S3_ACCESS_KEY := holdfast
export HOLDFAST_TEST_S3_SECRET_KEY := holdfast-secret

.PHONY: minio versitygw services-up-s3 services-down-s3 bench-backup
minio: bin/minio
versitygw: bin/versitygw
bin/minio:
	@scripts/tool.sh minio $(MINIO_VERSION) github.com/minio/minio
bin/versitygw:
	@scripts/tool.sh versitygw $(VERSITYGW_VERSION) github.com/versity/versitygw/cmd/versitygw

services-up-s3: bin/minio bin/versitygw
	@scripts/services/s3.sh up
services-down-s3:
	@scripts/services/s3.sh down

## bench-backup: 2 GiB image through the engine against local MinIO, as ratios to plain S3 PUT/GET.
bench-backup: bin/minio bin/versitygw
	@scripts/services/s3.sh up
	$(GO) run ./activities/backup/bench -endpoint $(HOLDFAST_TEST_S3_MINIO) -dir $(HOLDFAST_RUN_DIR)/bench-backup

BENCHES += instant
.PHONY: bench-instant
## bench-instant: instant restore (a backup in local MinIO served over NBD as a qcow2 overlay's backing): time to
## the first read, cold vs hydrated 4 KiB read latency, hydration ÷ normal restore throughput (1 and 4 GiB).
bench-instant: bin/minio bin/versitygw
	@scripts/services/s3.sh up
	$(GO) test -count=1 -run '^$$' -bench BenchmarkInstantRestore -benchtime 1x -timeout 30m ./activities/agent/
