#!/usr/bin/env bash
# Checks that every workspace member opts in to the workspace lint policy (root Cargo.toml,
# `[workspace.lints]`) with
#     [lints]
#     workspace = true
# in its Cargo.toml.
#   scripts/check-lints.sh [MEMBER...]   members named here (as in `members = [...]`) are not
#                                        required to opt in yet; listed but opted in is reported, so
#                                        the exclusion can be dropped.
set -euo pipefail
cd "$(dirname "$0")/.."

excluded=" $* "
members=$(awk '
  /^\[workspace\]/ { ws = 1; next }
  /^\[/ { ws = 0 }
  ws && /^members[[:space:]]*=/ { in_list = 1 }
  in_list {
    line = $0
    while (match(line, /"[^"]+"/)) { print substr(line, RSTART + 1, RLENGTH - 2); line = substr(line, RSTART + RLENGTH) }
    if ($0 ~ /\]/) in_list = 0
  }' Cargo.toml)
[ -n "$members" ] || { echo "check-lints: no workspace members found in Cargo.toml" >&2; exit 1; }

opted_in() { # true if $1/Cargo.toml has `workspace = true` in its [lints] table
  awk '
    /^\[/ { in_lints = ($0 ~ /^\[lints\][[:space:]]*(#.*)?$/); next }
    in_lints && /^workspace[[:space:]]*=[[:space:]]*true[[:space:]]*(#.*)?$/ { found = 1 }
    END { exit !found }' "$1/Cargo.toml"
}

missing=0
for m in $members; do
  if opted_in "$m"; then
    case "$excluded" in *" $m "*) echo "check-lints: $m is opted in now; drop it from the exclusion list" >&2 ;; esac
  else
    case "$excluded" in
      *" $m "*) ;;
      *) echo "check-lints: $m/Cargo.toml lacks '[lints] workspace = true'" >&2; missing=1 ;;
    esac
  fi
done
exit $missing
