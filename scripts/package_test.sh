#!/usr/bin/env bash
# The Debian package: builds postgresql-15-pg-diagnosis with dpkg-buildpackage from a clean copy of the tree (the
# files git tracks) in a temporary directory, installs it, checks that it carries exactly the files `make install`
# installs, and runs installcheck (pg_regress, also on a database updated from 0.1.0) against the installed package.
#   bash scripts/package_test.sh            install with dpkg -i (a CI machine); afterwards the package is purged
#                                           and `make install` of this tree puts the files back
#   bash scripts/package_test.sh --root DIR unpack with dpkg -x into a private copy of PostgreSQL in DIR instead,
#                                           leaving the system's PostgreSQL alone (a shared machine)
# Ends with "N passed, N failed" like the other stages.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=""
if [ "${1:-}" = "--root" ]; then ROOT=$(realpath -m "$2"); fi
WORK=$(mktemp -d /tmp/pg_diagnosis-package.XXXXXX)
chmod 755 "$WORK"
trap 'rm -rf "$WORK"' EXIT
. scripts/suites.sh

VERSION=$(dpkg-parsechangelog -l debian/changelog -S Version)
PGVERSION=$(cat debian/pgversions)
PACKAGE=postgresql-$PGVERSION-pg-diagnosis
DEB="$WORK/${PACKAGE}_${VERSION}_$(dpkg --print-architecture).deb"
PGBIN=$(pg_config --bindir)

echo "== package: dpkg-buildpackage -us -uc -b in a clean copy"
mkdir -p "$WORK/src"
git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$WORK/src"
if (cd "$WORK/src" && nice -n 10 dpkg-buildpackage -us -uc -b) >"$WORK/build.log" 2>&1 && [ -f "$DEB" ]; then
  record "package build ($(basename "$DEB"))" 1 0
else
  tail -40 "$WORK/build.log"; record_exit "package build" 1; summary; exit 1
fi

echo "== package: install"
if [ -n "$ROOT" ]; then
  # A private copy of the installation (as scripts/private_pg.sh makes) without this tree's make install in it.
  rm -rf "$ROOT"
  mkdir -p "$ROOT$(dirname "$(dirname "$PGBIN")")" "$ROOT$(dirname "$(pg_config --sharedir)")"
  cp -a "$(dirname "$PGBIN")" "$ROOT$(dirname "$(dirname "$PGBIN")")/"
  cp -a "$(pg_config --sharedir)" "$ROOT$(dirname "$(pg_config --sharedir)")/"
  rm -f "$ROOT$(pg_config --pkglibdir)/pg_diagnosis.so" "$ROOT$(pg_config --sharedir)"/extension/pg_diagnosis*
  dpkg -x "$DEB" "$ROOT" && chmod -R a+rX "$ROOT"
  installed=$?
  BINDIR=$ROOT$PGBIN
else
  dpkg -i "$DEB"
  installed=$?
  BINDIR=$PGBIN
fi
record_exit "package install" $installed

echo "== package: its files are the files make install installs"
# The package's files below PostgreSQL's directories, against a make install of the same tree into a DESTDIR.
dpkg-deb -c "$DEB" | awk '{print $NF}' | sed 's|^\./|/|' | grep -E '^/usr/(lib|share)/postgresql/' |
  grep -vE '/$' | sort >"$WORK/package.files"
make -s install DESTDIR="$WORK/make-install" >/dev/null 2>&1
(cd "$WORK/make-install" && find . -type f | sed 's|^\./|/|' | sort) >"$WORK/make-install.files"
if diff -u "$WORK/make-install.files" "$WORK/package.files"; then
  record "package files = make install" "$(wc -l <"$WORK/package.files")" 0
else
  record_exit "package files = make install" 1
fi
for f in $(cat "$WORK/package.files"); do
  [ -f "${ROOT}$f" ] || { echo "missing after install: $f"; record_exit "package file $f installed" 1; }
done

echo "== package: installcheck against the installed package"
regress_suites package bindir="$BINDIR"

if [ -z "$ROOT" ]; then
  echo "== package: purge, and put make install's files back"
  dpkg --purge "$PACKAGE" >/dev/null && make -s install >/dev/null
  record_exit "package purge and make install" $?
fi
summary
