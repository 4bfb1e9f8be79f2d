#!/usr/bin/env bash
# pg_diagnosis's benchmark command (README "Benchmarks"; not part of the test command): installs what it needs,
# builds the extension into a private copy of the PostgreSQL installation (scripts/private_pg.sh; the system
# installation is never touched), then runs bench/bench.mjs against it, which prints a table and writes
# docs/BENCHMARKS.md, docs/bench-scaling.svg and docs/bench-latency.svg.
#   bash scripts/bench.sh [--quick]        PGDIAG_BENCH_PREFIX: where the private copy goes (/tmp/pg-bench)
#   PGDIAG_PG_BINDIR=<bin dir>: use that (already built) installation instead and build nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
(cd bench && npm ci --no-audit --no-fund --loglevel=error)
command -v gnuplot >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gnuplot-nox >/dev/null; }
command -v prlimit >/dev/null 2>&1 || { echo "prlimit (util-linux) is missing" >&2; exit 1; }
if [ -z "${PGDIAG_PG_BINDIR:-}" ]; then
  log=$(mktemp)
  trap 'rm -f "$log"' EXIT
  if ! PGDIAG_PG_BINDIR=$(bash scripts/private_pg.sh "${PGDIAG_BENCH_PREFIX:-/tmp/pg-bench}" 2>"$log" | tail -1); then
    tail -50 "$log"
    exit 1
  fi
  export PGDIAG_PG_BINDIR
fi
exec node bench/bench.mjs "$@"
