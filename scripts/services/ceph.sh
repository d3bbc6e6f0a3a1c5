#!/usr/bin/env bash
# ceph.sh up|down|status — a single-node Ceph (pacific): one mon, one mgr, one bluestore OSD on a sparse file,
# bound to 127.0.0.1 (mon 3300/6789, daemons 6800-6900), no auth, one rbd pool ($HOLDFAST_CEPH_POOL).
# State lives in $HOLDFAST_CEPH_DIR; `up` reuses an existing cluster (fast restart) and `down` stops only the
# daemons named by their PID files. Clients use CEPH_CONF=$HOLDFAST_CEPH_DIR/ceph.conf.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DIR=${HOLDFAST_CEPH_DIR:-${HOLDFAST_RUN_DIR:-$ROOT/.run}/ceph}
POOL=${HOLDFAST_CEPH_POOL:-holdfast}
export CEPH_CONF=$DIR/ceph.conf
t0=$SECONDS
say() { echo "ceph: [$((SECONDS - t0))s] $*"; }
alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
# Every CLI call is bounded: a cluster that lost its OSD makes clients hang rather than fail.
c() { timeout 20 ceph --connect-timeout 10 "$@"; }
wait_for() { # wait_for SECONDS WHAT CMD...
  local limit=$1 what=$2; shift 2
  for _ in $(seq $((limit * 4))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  echo "ceph.sh: $what not reached within ${limit}s; logs in $DIR/log" >&2
  exit 1
}

write_conf() {
  cat >"$CEPH_CONF" <<CONF
[global]
fsid = $(uuidgen)
mon host = [v2:127.0.0.1:3300,v1:127.0.0.1:6789]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
public network = 127.0.0.0/8
ms bind port min = 6800
ms bind port max = 6900
run dir = $DIR/run
admin socket = $DIR/run/\$cluster-\$name.asok
pid file = $DIR/run/\$name.pid
log file = $DIR/log/\$name.log
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon max pg per osd = 1000
mon warn on pool no redundancy = false
mon allow pool delete = true
mon allow pool size one = true
mon data avail crit = 0
mon data avail warn = 0
mon warn on insecure global id reclaim allowed = false
mon warn on insecure global id reclaim = false
auth allow insecure global id reclaim = false

[client]
# Empty: many clients (tests, qemu, rbd CLI) would otherwise clash on one admin socket.
admin socket =
log file = $DIR/log/client.log

[mon.a]
mon data = $DIR/mon
chdir = ""
mon cluster log file = $DIR/log/mon-cluster.log

[mgr.x]
mgr data = $DIR/mgr

[osd.0]
osd data = $DIR/osd
chdir = ""
# bluestore on a sparse file: memstore would keep every byte in RAM. 16 GiB so that tests never fill it
# (a full OSD hangs clients instead of failing them).
osd objectstore = bluestore
bluestore block path = $DIR/osd/block.file
bluestore block create = true
bluestore block size = 17179869184
bluestore fsck on mount = false
bluestore cache autotune = false
bluestore cache size = 268435456
osd memory target = 939524096
osd class load list = *
osd class default list = *
CONF
}

start_daemons() {
  alive "$DIR/run/mon.a.pid" || ceph-mon --id a
  wait_for 30 "mon answering" c -s
  alive "$DIR/run/mgr.x.pid" || ceph-mgr --id x
  alive "$DIR/run/osd.0.pid" || ceph-osd --id 0 2>/dev/null
  wait_for 60 "osd.0 up" bash -c "timeout 20 ceph osd dump 2>/dev/null | grep -q '^osd.0 up'"
}

up() {
  command -v ceph-mon >/dev/null || { echo "ceph.sh: ceph missing: make deps" >&2; exit 1; }
  if [[ -f $DIR/.ready ]] && alive "$DIR/run/mon.a.pid" && alive "$DIR/run/osd.0.pid"; then
    say "already up (CEPH_CONF=$CEPH_CONF)"; return 0
  fi
  if [[ -f $DIR/.ready ]]; then
    say "restarting the existing cluster"
    start_daemons
  else
    rm -rf "$DIR"; mkdir -p "$DIR"/{log,mon,osd,run,mgr}
    write_conf
    ceph-mon --id a --mkfs --keyring /dev/null
    touch "$DIR/mon/keyring"
    alive "$DIR/run/mon.a.pid" || ceph-mon --id a
    wait_for 30 "mon answering" c -s
    ceph-mgr --id x
    [[ $(c osd create) == 0 ]] || { echo "ceph.sh: expected osd id 0" >&2; exit 1; }
    c osd crush add osd.0 1 root=default >/dev/null
    ceph-osd --id 0 --mkfs >/dev/null 2>&1
    say "osd mkfs done"
    start_daemons
    c osd pool create "$POOL" 32 32 >/dev/null
    timeout 60 rbd pool init "$POOL"
    touch "$DIR/.ready"
  fi
  # The pool is usable once its placement groups are active: a bounded write proves it.
  wait_for 60 "pool $POOL writable" timeout 10 rados -p "$POOL" put holdfast-probe /dev/null
  say "up: pool $POOL (CEPH_CONF=$CEPH_CONF)"
}

down() {
  for f in "$DIR"/run/*.pid; do
    [[ -f $f ]] || continue
    kill "$(cat "$f")" 2>/dev/null || true
  done
  for f in "$DIR"/run/*.pid; do
    [[ -f $f ]] || continue
    p=$(cat "$f")
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
    rm -f "$f"
  done
  echo "ceph: down"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) alive "$DIR/run/mon.a.pid" && c -s ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
