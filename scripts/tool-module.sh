#!/usr/bin/env bash
# tool-module.sh NAME VERSION MODULE [PACKAGE_DIR] — like tool.sh, for a tool the proxy will not `go install`
# by version (kopia: the proxy refuses its version list, which `go install pkg@version` reads for the
# deprecation notice). The module is fetched with `go mod download` and built inside its directory, with its
# own go.mod and go.sum. Cached in $HOLDFAST_TOOLS_CACHE/NAME-VERSION/ and copied into bin/, as tool.sh.
set -euo pipefail
name=$1 version=$2 module=$3 pkg=${4:-.}
cache=${HOLDFAST_TOOLS_CACHE:-$HOME/.cache/holdfast/tools}/$name-$version
bin_dir=${HOLDFAST_BIN_DIR:-$PWD/bin}
mkdir -p "$bin_dir"
if [[ ! -x $cache/$name ]]; then
  echo "tool-module.sh: building $name $version from source (first time on this machine; cached afterwards)" >&2
  dir=$(GOFLAGS= go mod download -json "$module@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [[ -n $dir ]] || { echo "tool-module.sh: go mod download $module@$version gave no directory" >&2; exit 1; }
  rm -rf "$cache.tmp" && mkdir -p "$cache.tmp"
  (cd "$dir" && GOFLAGS="-buildvcs=false -mod=mod" go build -trimpath -ldflags "-s -w" -o "$cache.tmp/$name" "$pkg")
  rm -rf "$cache" && mv "$cache.tmp" "$cache"
fi
cp -f "$cache/$name" "$bin_dir/$name"
