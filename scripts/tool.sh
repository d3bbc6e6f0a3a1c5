#!/usr/bin/env bash
# tool.sh NAME VERSION PACKAGE — build a Go tool from source through the module proxy, once per machine.
# The binary is cached in $HOLDFAST_TOOLS_CACHE/NAME-VERSION/ (outside the clone, so a fresh CI clone reuses
# it) and copied into bin/. Nothing is downloaded but Go modules.
set -euo pipefail
name=$1 version=$2 pkg=$3
cache=${HOLDFAST_TOOLS_CACHE:-$HOME/.cache/holdfast/tools}/$name-$version
bin_dir=${HOLDFAST_BIN_DIR:-$PWD/bin}
mkdir -p "$bin_dir"
if [[ ! -x $cache/$name ]]; then
  echo "tool.sh: building $name $version from source (first time on this machine; cached afterwards)" >&2
  mkdir -p "$cache.tmp"
  GOFLAGS=-buildvcs=false GOBIN=$cache.tmp go install -ldflags "-s -w" "$pkg@$version"
  rm -rf "$cache" && mv "$cache.tmp" "$cache"
fi
cp -f "$cache/$name" "$bin_dir/$name"
