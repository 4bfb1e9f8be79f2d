#!/usr/bin/env bash
# Builds a released version of pg_diagnosis from this repository's history into a private copy of PostgreSQL
# (scripts/private_pg.sh of that version), so the upgrade test can fill a database with the released library and
# worker, then start the same data directory with the current build. Kept between runs: a second call only
# prints the bin directory.
#   bash scripts/old_release.sh COMMIT PREFIX      prints the private bin directory on its last line
set -euo pipefail
cd "$(dirname "$0")/.."
COMMIT=$(git rev-parse --verify --quiet "$1^{commit}") ||
  { echo "commit $1 (a released version) is not in this clone's history (git fetch --unshallow)" >&2; exit 1; }
PREFIX=$(realpath -m "$2")
if [ -f "$PREFIX/.built-$COMMIT" ]; then
  cat "$PREFIX/.built-$COMMIT"
  exit 0
fi
rm -rf "$PREFIX" "$PREFIX.src"
mkdir -p "$PREFIX.src"
git archive "$COMMIT" | tar -x -C "$PREFIX.src"
BINDIR=$(nice -n 10 bash "$PREFIX.src/scripts/private_pg.sh" "$PREFIX" | tail -1)
rm -rf "$PREFIX.src"
echo "$BINDIR" >"$PREFIX/.built-$COMMIT"
echo "$BINDIR"
