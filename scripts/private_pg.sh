#!/usr/bin/env bash
# Builds this checkout's extension and installs it into a private copy of the PostgreSQL installation, so that
# several checkouts (or a build that must not replace the installed one) can be tested side by side; nothing
# installed is touched. PostgreSQL finds its lib and share directories relative to its own binary.
#   bash scripts/private_pg.sh PREFIX [MAKE ARGS...]     prints the private bin directory on its last line
# Then: PGDIAG_PG_BINDIR=<that bindir> for the node suites (test/lib/cluster.mjs), and
#       make installcheck bindir=<that bindir> for pg_regress.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=$(realpath -m "$1"); shift
PGBIN=$(pg_config --bindir)
PGSHARE=$(pg_config --sharedir)
BINDIR=$PREFIX$PGBIN
if [ ! -x "$BINDIR/postgres" ]; then
  mkdir -p "$PREFIX$(dirname "$(dirname "$PGBIN")")" "$PREFIX$(dirname "$PGSHARE")"
  cp -a "$(dirname "$PGBIN")" "$PREFIX$(dirname "$(dirname "$PGBIN")")/"
  cp -a "$PGSHARE" "$PREFIX$(dirname "$PGSHARE")/"
fi
make -j2 "$@" >/dev/null
make install DESTDIR="$PREFIX" "$@" >/dev/null
chmod -R a+rX "$PREFIX"
[ "$("$BINDIR/pg_config" --pkglibdir)" = "$PREFIX$(pg_config --pkglibdir)" ] ||
  { echo "the private PostgreSQL does not resolve its own library directory" >&2; exit 1; }
echo "$BINDIR"
