# Single-node Ceph (mon + mgr + one bluestore OSD on a sparse file, 127.0.0.1) for the rbd volume driver.
APT_PACKAGES += ceph-mon ceph-osd ceph-mgr ceph-common librados-dev librbd-dev uuid-runtime
SERVICES += ceph
# Tests read HOLDFAST_CEPH_CONF (the cluster's ceph.conf) and create their own pools/images.
export HOLDFAST_CEPH_DIR  ?= $(HOLDFAST_RUN_DIR)/ceph
export HOLDFAST_CEPH_CONF ?= $(HOLDFAST_CEPH_DIR)/ceph.conf
export HOLDFAST_CEPH_POOL ?= holdfast

.PHONY: services-up-ceph services-down-ceph
services-up-ceph:
	@scripts/services/ceph.sh up
services-down-ceph:
	@scripts/services/ceph.sh down
