#!/usr/bin/env bash
# The HA command (README "High availability", docs/RELIABILITY.md): pg_diagnosis under pg_auto_failover on one
# machine. Installs what it needs (scripts/deps.sh, pg_auto_failover from Debian's archive included), builds this
# checkout into a private copy of the PostgreSQL installation (scripts/private_pg.sh; nothing installed is
# touched) unless PGDIAG_PG_BINDIR names one already, then runs test/ha/ha.mjs: a monitor and two data nodes,
# three consecutive failovers (primary -> secondary -> primary ...) by killing the primary node while runs are in
# flight, and the checks that nothing was lost or done twice. Takes a few minutes; prints the figures and
# "ha: PASS" or "ha: FAIL (...)", and exits non-zero on failure.
#   bash scripts/ha.sh [--failovers 3] [--min-runs 3000] [--rate 40] [--cpu-seconds 60] [--latency-ms 1000]
#                      [--replication-quorum false]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${PGDIAG_DEPS_INSTALLED:-}" ] || scripts/deps.sh
if [ -z "${PGDIAG_PG_BINDIR:-}" ]; then
  PRIVATE=$(mktemp -d /tmp/pg_diagnosis-ha.XXXXXX)
  chmod 755 "$PRIVATE" # the postgres user runs the servers from it
  trap 'rm -rf "$PRIVATE"' EXIT
  echo "== build this checkout into a private PostgreSQL installation"
  PGDIAG_PG_BINDIR=$(bash scripts/private_pg.sh "$PRIVATE/pg" | tail -1)
  export PGDIAG_PG_BINDIR
fi
echo "== HA run (PostgreSQL of the data nodes: $PGDIAG_PG_BINDIR)"
cd test && node ha/ha.mjs "$@"
