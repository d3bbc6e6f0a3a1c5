#!/usr/bin/env bash
# apt-install.sh PKG... — install missing Debian packages (no-op when all are present). Needs root (or sudo
# without a password) only when something is missing; otherwise it says what to run, and fails.
set -euo pipefail
missing=()
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "deps: all ${#} Debian packages present" >&2
  exit 0
fi
as=()
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    as=(sudo -n)
  else
    echo "deps: missing Debian packages: ${missing[*]}" >&2
    echo "deps: installing them needs root. Run: sudo make deps   (or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi
echo "deps: installing ${#missing[@]} Debian packages with apt-get (first time on this machine): ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${as[@]}" apt-get update -qq
"${as[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
