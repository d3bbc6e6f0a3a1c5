# libvirtd + virtlogd (QEMU under TCG, no systemd) for the file volume driver and attachment checks.
APT_PACKAGES += libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev \
                qemu-system-x86 qemu-utils qemu-block-extra pkg-config gcc libc6-dev
SERVICES += libvirt
BENCHES  += drivers
# Tests and the bench read these; scripts/services/libvirt.sh starts the daemon at this URI.
export HOLDFAST_LIBVIRT_URI ?= qemu:///system
export HOLDFAST_LIBVIRT_DIR ?= $(HOLDFAST_RUN_DIR)/libvirt

.PHONY: services-up-libvirt services-down-libvirt bench-drivers
services-up-libvirt:
	@scripts/services/libvirt.sh up
services-down-libvirt:
	@scripts/services/libvirt.sh down

## bench-drivers: point-in-time read of 4 GiB per volume driver vs dd / rbd export, 1 % changed-extent read,
## and a full vs a 1 %-changed incremental backup through the engine (HOLDFAST_BENCH_SIZE_MIB sets the size).
bench-drivers:
	HOLDFAST_BENCH_SIZE_MIB=$${HOLDFAST_BENCH_SIZE_MIB:-4096} $(GO) test -count=1 -run '^$$' -bench . -benchtime 1x -timeout 20m ./activities/volume/bench/
