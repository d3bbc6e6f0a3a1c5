# Peers: Holdfast's backup engine against restic and kopia on one ext4 image of real files (cmd/peerbench),
# each on a local directory and on its own bucket in local MinIO. Both peers are built from source through the
# Go module proxy, cached per machine: restic with scripts/tool.sh, kopia with scripts/tool-module.sh (the
# proxy refuses its version list, which `go install pkg@version` reads).
RESTIC_VERSION := v0.18.1
KOPIA_VERSION  := v0.21.1

APT_PACKAGES += e2fsprogs
TOOLS        += bin/restic bin/kopia
BENCHES      += peers

# PEERBENCH_FLAGS passes more flags, e.g. make bench-peers PEERBENCH_FLAGS="-size 256MiB -runs 1".
.PHONY: bench-peers
bin/restic:
	@scripts/tool.sh restic $(RESTIC_VERSION) github.com/restic/restic/cmd/restic
bin/kopia:
	@scripts/tool-module.sh kopia $(KOPIA_VERSION) github.com/kopia/kopia

## bench-peers: 512 MiB ext4 image, 3 runs: backup, file change, scattered writes, restore vs restic and kopia.
bench-peers: bin/minio bin/versitygw bin/restic bin/kopia
	@scripts/services/s3.sh up
	$(GO) run ./cmd/peerbench -endpoint $(HOLDFAST_TEST_S3_MINIO) -bin $(HOLDFAST_BIN_DIR) \
		-dir $(HOLDFAST_RUN_DIR)/bench-peers $(PEERBENCH_FLAGS)
