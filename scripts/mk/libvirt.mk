# libvirtd + virtlogd (QEMU under TCG, no systemd) for the file volume driver and attachment checks.
APT_PACKAGES += libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev \
                qemu-system-x86 qemu-utils qemu-block-extra pkg-config gcc
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

## bench-drivers: point-in-time read of 1 GiB per volume driver vs dd / rbd export, and 1 % changed-extent read.
bench-drivers:
	$(GO) test -count=1 -run '^$$' -bench . -benchtime 1x -timeout 20m ./activities/volume/bench/
