#!/usr/bin/env bash
# s3.sh up|down|status — the two S3 servers the backup-store conformance suite runs against:
#   MinIO     on 127.0.0.1:9000 (console 9001)
#   versitygw on 127.0.0.1:9004 (posix backend)
# Idempotent: `up` leaves a healthy running server alone; `down` stops only the processes named by our own
# PID files under $HOLDFAST_RUN_DIR. Loopback only. Dev credentials, never used outside tests.
set -euo pipefail
cmd=${1:?usage: s3.sh up|down|status}
run=${HOLDFAST_RUN_DIR:-$PWD/.run}
bin=${HOLDFAST_BIN_DIR:-$PWD/bin}
access=${HOLDFAST_TEST_S3_ACCESS_KEY:-holdfast}
secret=${HOLDFAST_TEST_S3_SECRET_KEY:-holdfast-secret}
mkdir -p "$run"

running() { # NAME → 0 if its PID file names a live process
  local pidf=$run/$1.pid
  [[ -f $pidf ]] && kill -0 "$(cat "$pidf")" 2>/dev/null
}

wait_http() { # NAME URL → wait until URL answers at all (any HTTP status)
  local i
  for i in $(seq 1 150); do
    if curl -s -o /dev/null --max-time 1 "$2"; then return 0; fi
    if ! running "$1"; then echo "s3.sh: $1 exited; see $run/$1.log" >&2; tail -20 "$run/$1.log" >&2; return 1; fi
    sleep 0.2
  done
  echo "s3.sh: $1 not ready after 30 s; see $run/$1.log" >&2
  return 1
}

start() { # NAME URL CMD...
  local name=$1 url=$2; shift 2
  if running "$name"; then echo "s3.sh: $name already running (pid $(cat "$run/$name.pid"))"; return 0; fi
  if [[ ! -x $1 ]]; then echo "s3.sh: $1 missing: make ${1##*/}" >&2; return 1; fi
  nohup "$@" >"$run/$name.log" 2>&1 </dev/null &
  echo $! >"$run/$name.pid"
  wait_http "$name" "$url"
  echo "s3.sh: $name up (pid $(cat "$run/$name.pid")) at $url"
}

stop() { # NAME
  local pidf=$run/$1.pid pid i
  [[ -f $pidf ]] || return 0
  pid=$(cat "$pidf")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    echo "s3.sh: $1 stopped"
  fi
  rm -f "$pidf"
}

case $cmd in
  up)
    mkdir -p "$run/minio-data" "$run/versitygw-data"
    MINIO_ROOT_USER=$access MINIO_ROOT_PASSWORD=$secret MINIO_BROWSER=off MINIO_UPDATE=off \
      start minio http://127.0.0.1:9000/minio/health/live \
      "$bin/minio" server "$run/minio-data" --address 127.0.0.1:9000 --console-address 127.0.0.1:9001 --quiet
    ROOT_ACCESS_KEY=$access ROOT_SECRET_KEY=$secret \
      start versitygw http://127.0.0.1:9004/ \
      "$bin/versitygw" --port 127.0.0.1:9004 posix "$run/versitygw-data"
    ;;
  down) stop minio; stop versitygw ;;
  status) for n in minio versitygw; do running $n && echo "$n running" || echo "$n stopped"; done ;;
  *) echo "usage: s3.sh up|down|status" >&2; exit 2 ;;
esac
