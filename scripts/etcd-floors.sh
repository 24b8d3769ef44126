#!/usr/bin/env bash
# The etcd store's files (src/store/etcd/*.rs) import each other in floors, never in a loop.
#
# Builds the graph of references between the files: `super::NAME` and
# `crate::store::etcd::NAME` in a child file (grouped `use super::{a, b::c}` too; NAME a sibling
# file, or else an item of mod.rs), and `NAME::` of a child in mod.rs. Comment lines are left
# out, and so is `use super::*` (a test module naming its own file). Prints each file's floor
# (1 + the highest floor it imports from) and its imports; fails, naming the files, on a loop.
# Usage: scripts/etcd-floors.sh [DIR]   (default src/store/etcd; runs in CI)
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-src/store/etcd}

declare -A is_mod
for f in "$dir"/*.rs; do is_mod[$(basename "$f" .rs)]=1; done

# The code of a file as one line, without comments and test-module globs.
code() { grep -vE '^\s*//|use super::\*;' "$1" | tr '\n' ' '; }

edges=$(
  for f in "$dir"/*.rs; do
    from=$(basename "$f" .rs)
    if [ "$from" = mod ]; then
      for m in "${!is_mod[@]}"; do
        [ "$m" != mod ] && code "$f" | grep -qE "(^|[^:a-z_])$m::" && echo "mod $m"
      done
      continue
    fi
    code "$f" | grep -oE '(super|crate::store::etcd)::(\{[^}]*\}|[A-Za-z_][A-Za-z0-9_]*)' \
      | sed -E 's/^(super|crate::store::etcd):://; s/^\{//; s/\}$//' | tr ',' '\n' \
      | sed -E 's/^\s+//; s/::.*//; s/\s.*//' | grep -v '^$' \
      | while read -r name; do
          if [ -n "${is_mod[$name]:-}" ]; then echo "$from $name"; else echo "$from mod"; fi
        done
  done | awk '$1 != $2' | sort -u
)

# tsort fails on a loop and names its members on stderr.
if ! order=$(printf '%s\n' "$edges" | tsort 2>/tmp/etcd-floors.$$); then
  cat /tmp/etcd-floors.$$ >&2
  rm -f /tmp/etcd-floors.$$
  echo "etcd-floors: the files of $dir import each other in a loop (above)" >&2
  exit 1
fi
rm -f /tmp/etcd-floors.$$

# tsort lists importers before what they import: floors from the end of its order.
declare -A floor
for m in $(printf '%s\n' "$order" | tac) "${!is_mod[@]}"; do
  [ -n "${floor[$m]:-}" ] && continue
  f=1
  for d in $(printf '%s\n' "$edges" | awk -v m="$m" '$1 == m { print $2 }'); do
    [ $((floor[$d] + 1)) -gt $f ] && f=$((floor[$d] + 1))
  done
  floor[$m]=$f
done
for m in "${!floor[@]}"; do
  deps=$(printf '%s\n' "$edges" | awk -v m="$m" '$1 == m { print $2 }' | tr '\n' ' ')
  printf '%s %-8s <- %s\n' "${floor[$m]}" "$m" "${deps:--}"
done | sort -n -k1,1 -k2,2
echo "etcd-floors: $(printf '%s\n' "$edges" | grep -c .) imports between ${#is_mod[@]} files, no loop"
