#!/usr/bin/env bash
# CPU and WAL per run of several commits side by side (docs/BENCHMARKS.md, "What each change bought"): builds each
# commit into a private PostgreSQL copy (scripts/private_pg.sh, from a temporary worktree) and runs bench/cpu.mjs
# against each in turn, ROUNDS times interleaved, so the machine's load falls on all of them alike.
#   bash bench/compare.sh [--rounds 2] [--runs 10000] COMMIT...      prints one JSON line per commit and round
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=2 runs=10000
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || { echo "usage: bash bench/compare.sh [--rounds N] [--runs N] COMMIT..." >&2; exit 2; }
scratch=$(mktemp -d /tmp/pgdiag-compare-XXXXXX)
chmod 755 "$scratch"   # the private copies run as postgres
trap 'for c in "${commits[@]}"; do git worktree remove --force "$scratch/src-$c" 2>/dev/null || true; done; rm -rf "$scratch"' EXIT
commits=()
declare -A bindir
for commit in "$@"; do
  c=$(git rev-parse --short "$commit")
  commits+=("$c")
  git worktree add -q --detach "$scratch/src-$c" "$c"
  bindir[$c]=$(cd "$scratch/src-$c" && bash scripts/private_pg.sh "$scratch/pg-$c" | tail -1)
done
for round in $(seq "$rounds"); do
  for c in "${commits[@]}"; do
    PGDIAG_PG_BINDIR=${bindir[$c]} node bench/cpu.mjs --runs "$runs" --label "$c round $round"
  done
done
