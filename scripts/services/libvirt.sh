#!/usr/bin/env bash
# libvirt.sh up|down|status — virtlogd + libvirtd (system mode, QEMU under TCG) without systemd.
# State and PID files live in $HOLDFAST_RUN_DIR/libvirt; `down` stops only the processes named by those PID
# files. libvirtd listens on its local UNIX socket only (no TCP). Idempotent both ways.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RUN=${HOLDFAST_LIBVIRT_DIR:-${HOLDFAST_RUN_DIR:-$ROOT/.run}/libvirt}
URI=${HOLDFAST_LIBVIRT_URI:-qemu:///system}

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
answers() { timeout 5 virsh -c "$URI" version >/dev/null 2>&1; }

stop_pid() { # stop_pid FILE: TERM, wait up to 10 s, then KILL
  local f=$1 p
  [[ -f $f ]] || return 0
  p=$(cat "$f")
  if kill "$p" 2>/dev/null; then
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  fi
  rm -f "$f"
}

up() {
  command -v /usr/sbin/libvirtd >/dev/null || { echo "libvirt.sh: libvirtd missing: make deps" >&2; exit 1; }
  mkdir -p "$RUN"
  if alive "$RUN/libvirtd.pid" && answers; then echo "libvirt: already up ($URI)"; return 0; fi
  # libvirtd is one per machine (its state lives under /run/libvirt): a daemon that already answers, started
  # by another checkout or by the host, is used as it is and left running by `down`.
  if ! alive "$RUN/libvirtd.pid" && answers; then echo "libvirt: using the running libvirtd ($URI)"; return 0; fi
  # The qemu driver refuses to start unless its compiled-in user exists (normally made by a postinst we skip).
  getent group kvm >/dev/null || groupadd -r kvm
  getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
  getent passwd libvirt-qemu >/dev/null ||
    useradd -r -g libvirt-qemu -G kvm -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
  mkdir -p /etc/libvirt /var/log/libvirt/qemu /var/lib/libvirt
  # QEMU as root without relabelling: test images live in arbitrary directories (t.TempDir, .run).
  printf 'user = "root"\ngroup = "root"\ndynamic_ownership = 0\nremember_owner = 0\nsecurity_driver = "none"\n' \
    >/etc/libvirt/qemu.conf
  # virtlogd must run: QEMU's stdio goes through it, and system-mode libvirtd does not start it.
  alive "$RUN/virtlogd.pid" || /usr/sbin/virtlogd --daemon --pid-file "$RUN/virtlogd.pid"
  alive "$RUN/libvirtd.pid" ||
    LIBVIRT_LOG_OUTPUTS="3:file:$RUN/libvirtd.log" /usr/sbin/libvirtd --daemon --pid-file "$RUN/libvirtd.pid"
  for _ in $(seq 300); do answers && { echo "libvirt: up ($URI)"; return 0; }; sleep 0.1; done
  echo "libvirt.sh: libvirtd did not answer within 30 s; see $RUN/libvirtd.log" >&2
  exit 1
}

down() {
  # Domains left running by an interrupted test would outlive the daemon: destroy the transient test ones.
  if alive "$RUN/libvirtd.pid"; then
    for d in $(timeout 10 virsh -c "$URI" list --name 2>/dev/null | grep '^holdfast-test-' || true); do
      timeout 10 virsh -c "$URI" destroy "$d" >/dev/null 2>&1 || true
    done
  fi
  stop_pid "$RUN/libvirtd.pid"
  stop_pid "$RUN/virtlogd.pid"
  echo "libvirt: down"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) alive "$RUN/libvirtd.pid" && answers && echo "libvirt: up" || { echo "libvirt: down"; exit 1; } ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
