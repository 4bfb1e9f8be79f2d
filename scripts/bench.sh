#!/usr/bin/env bash
# pg_diagnosis's benchmark command (README "Benchmarks"; not part of the test command): installs what it needs,
# builds and installs the extension, then runs bench/bench.mjs, which prints a table and writes docs/BENCHMARKS.md
# and docs/bench-scaling.svg.   bash scripts/bench.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
(cd bench && npm ci --no-audit --no-fund --loglevel=error)
command -v gnuplot >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gnuplot-nox >/dev/null; }
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { make -j2 && make install; } >"$log" 2>&1; then
  tail -50 "$log"
  exit 1
fi
exec node bench/bench.mjs "$@"
