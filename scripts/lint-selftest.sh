#!/usr/bin/env bash
# lint-selftest.sh — proves the layer rules in .golangci.yml bite. It writes one throwaway package per layer,
# each importing a layer above it (plus, in workflows, the two activities packages workflows may import),
# runs depguard over them, and fails unless every upward import is reported and the allowed ones are not.
# The packages live in new directories (no import cycle can hide the finding behind a type error) and are
# removed on exit, failure or interruption.
set -euo pipefail
cd "$(dirname "$0")/.."
lint=${HOLDFAST_BIN_DIR:-$PWD/bin}/golangci-lint
mod=github.com/holdfast/holdfast
name=zz_lintselftest_$$
dirs=(activities/$name workflows/$name workers/$name starter/$name)
cleanup() { for d in "${dirs[@]}"; do rm -rf "$d"; done; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# layer directory | upward (or allowed) import | list that must report it ("" = must not be reported)
cases=(
  "activities/$name|$mod/workers|activities"
  "activities/$name|$mod/workflows|activities"
  "workflows/$name|$mod/activities/agent|workflows"
  "workflows/$name|$mod/starter|workflows"
  "workflows/$name|$mod/activities|"
  "workflows/$name|$mod/activities/metrics|"
  "workers/$name|$mod/starter|workers"
  "starter/$name|$mod/cmd/holdfast/cli|starter"
)
for d in "${dirs[@]}"; do
  mkdir "$d"
  {
    echo "// Package $name is a throwaway written by scripts/lint-selftest.sh; delete it if you see it."
    echo "package $name"
    echo
    echo "import ("
    for c in "${cases[@]}"; do
      IFS='|' read -r dir imp _ <<<"$c"
      [[ $dir == "$d" ]] && echo "	_ \"$imp\""
    done
    echo ")"
  } >"$d/selftest.go"
done

status=0
out=$("$lint" run --enable-only depguard "${dirs[@]/#/./}" 2>&1) || status=$?
echo "$out"
if ((status == 0)); then
  echo "lint-selftest: FAIL: golangci-lint passed although upward imports were added" >&2
  exit 1
fi
failed=0
for c in "${cases[@]}"; do
  IFS='|' read -r dir imp list <<<"$c"
  pattern="^$dir/selftest.go:[0-9]+:[0-9]+: import '$imp' is not allowed from list"
  if [[ -n $list ]] && ! grep -qE "$pattern '$list'" <<<"$out"; then
    echo "lint-selftest: FAIL: $dir importing $imp was not reported by the '$list' rule" >&2
    failed=1
  elif [[ -z $list ]] && grep -qE "$pattern" <<<"$out"; then
    echo "lint-selftest: FAIL: $dir importing $imp was reported, but that import is allowed" >&2
    failed=1
  fi
done
((failed == 0)) || exit 1
echo "lint-selftest: ok: every upward import failed the lint, the allowed ones did not"
