#!/usr/bin/env bash
# Sanitizer mode (README "Tests", docs/RELIABILITY.md): pg_diagnosis built with AddressSanitizer and
# UndefinedBehaviorSanitizer runs pg_regress, the isolation specs and the integration, crash and chaos suites on
# real clusters, and the core's unit tests run under the same sanitizers. Any sanitizer report from any process
# fails the run. Ends with one line "N passed, N failed" and exits non-zero when anything failed.
#
# Nothing installed is touched: the sanitized library goes into a private copy of the PostgreSQL installation in a
# temporary directory (PostgreSQL finds its lib and share directories relative to its own binary), and that copy's
# `postgres` is a wrapper that loads the sanitizer runtimes into the server processes only.
#   bash scripts/sanitize.sh [--keep] [--chaos "CHAOS ARGS"]
#     --keep   leave the work directory (builds, reports) in /tmp
#     --chaos  also run the chaos run against the sanitized server, e.g.
#              --chaos "--runs 3000 --worker-kills 20 --immediate-restarts 20 --server-restarts 20"
set -uo pipefail
cd "$(dirname "$0")/.."
KEEP=0
CHAOS_ARGS=
while [ $# -gt 0 ]; do
  case "$1" in
    --keep) KEEP=1; shift ;;
    --chaos) CHAOS_ARGS=$2; shift 2 ;;
    *) echo "unknown argument: $1"; exit 2 ;;
  esac
done
WORK=$(mktemp -d /tmp/pg_diagnosis-sanitize.XXXXXX)
chmod 755 "$WORK"
trap '[ $KEEP = 1 ] && echo "work directory kept: $WORK" || rm -rf "$WORK"' EXIT

. scripts/suites.sh

# PGDIAG_DEPS_INSTALLED: scripts/test.sh has just installed them.
if [ -z "${PGDIAG_DEPS_INSTALLED:-}" ]; then
  echo "== dependencies"
  if ! scripts/deps.sh; then record_exit dependencies 1; summary; exit 1; fi
fi

# clang, not gcc: gcc splits ASan and UBSan into two runtimes and its UBSan then ignores log_path; clang's ASan
# runtime carries UBSan, so every finding of a process lands in one report file.
SANITIZE="-fsanitize=address,undefined -shared-libasan -fno-omit-frame-pointer -Wno-unknown-warning-option"
SAN_CC=clang-14 SAN_CXX=clang++-14
ASAN_RUNTIME=$($SAN_CC -print-resource-dir 2>/dev/null)/lib/linux/libclang_rt.asan-x86_64.so
PGBIN=$(pg_config --bindir)
PGSHARE=$(pg_config --sharedir)
PRIVATE=$WORK/pg                 # the private PostgreSQL installation mirrors the real paths under this prefix
BINDIR=$PRIVATE$PGBIN
REPORTS=$WORK/reports            # sanitizer reports, one file per reporting process
STARTS=$WORK/server-starts       # one line per server started from the private installation
mkdir -p "$REPORTS" && touch "$STARTS" && chown postgres: "$REPORTS" "$STARTS"

# Builds the sanitized library in a copy of the tree and installs it into the private PostgreSQL.
build_private_postgres() {
  mkdir -p "$WORK/src" "$PRIVATE$(dirname "$(dirname "$PGBIN")")" "$PRIVATE$(dirname "$PGSHARE")"
  # Sources only: objects of an ordinary build in this checkout would otherwise be linked as they are.
  tar --exclude='*.o' --exclude='*.d' --exclude='*.so' --exclude='*.bc' -cf - Makefile pg_diagnosis.control src include sql |
    tar -xf - -C "$WORK/src"
  cp -a "$(dirname "$PGBIN")" "$PRIVATE$(dirname "$(dirname "$PGBIN")")/"
  cp -a "$PGSHARE" "$PRIVATE$(dirname "$PGSHARE")/"
  make -C "$WORK/src" -j2 CC=$SAN_CC CXX=$SAN_CXX SANITIZE="$SANITIZE" &&
    make -C "$WORK/src" install DESTDIR="$PRIVATE" || return 1
  [ -f "$ASAN_RUNTIME" ] || { echo "no ASan runtime at $ASAN_RUNTIME"; return 1; }
  gcc -shared -fPIC -O2 -o "$WORK/asan_early_init.so" test/sanitize/asan_early_init.c -ldl || return 1
  cp test/ubsan.supp "$WORK/ubsan.supp"

  # The server runs the real binary with the sanitizer runtimes preloaded. ASan's leak check stays off in the
  # server: it flags PostgreSQL's own once-per-process allocations and then fails the startup process
  # (docs/RELIABILITY.md); the core's leaks are checked by LeakSanitizer and valgrind in its unit tests. UBSan
  # reports and continues, so one run collects every report.
  mv "$BINDIR/postgres" "$BINDIR/postgres.bin"
  cat >"$BINDIR/postgres" <<EOF
#!/bin/sh
# pg_diagnosis sanitizer mode (scripts/sanitize.sh): the server with ASan and UBSan runtimes preloaded.
case "\$*" in *--boot*|*--single*) ;; *-D*) echo "\$*" >>"$STARTS" ;; esac
LD_PRELOAD="$ASAN_RUNTIME $WORK/asan_early_init.so" \\
ASAN_OPTIONS="detect_leaks=0:log_path=$REPORTS/sanitizer" \\
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=0:suppressions=$WORK/ubsan.supp:log_path=$REPORTS/sanitizer" \\
exec "\$(dirname "\$0")/postgres.bin" "\$@"
EOF
  chmod 755 "$BINDIR/postgres"
  chmod -R a+rX "$WORK"
  # PostgreSQL must resolve its library directory inside the private copy, or the sanitized build is not the one
  # that runs.
  [ "$("$BINDIR/pg_config" --pkglibdir)" = "$PRIVATE$(pg_config --pkglibdir)" ]
}

echo "== build the extension with ASan+UBSan into a private PostgreSQL installation"
if build_private_postgres >"$WORK/build.log" 2>&1; then
  record_exit "sanitized extension build" 0
else
  tail -50 "$WORK/build.log"; record_exit "sanitized extension build" 1; summary; exit 1
fi

# Control: a server started from the private installation runs the instrumented library with both runtimes, in
# the worker too; otherwise the suites below would prove nothing.
sanitized_server_control() {
  # Unix socket only, in its own directory: the port number cannot collide with anything.
  local data=$WORK/control port=5432
  mkdir -p "$data" && chown postgres: "$data"
  (cd /tmp && runuser -u postgres -- "$BINDIR/initdb" -D "$data/db" -U postgres --auth=trust --no-sync >/dev/null) || return 1
  printf "shared_preload_libraries = 'pg_diagnosis'\nlisten_addresses = ''\nunix_socket_directories = '%s'\nport = %s\n" \
    "$data" "$port" >>"$data/db/postgresql.conf"
  (cd /tmp && runuser -u postgres -- "$BINDIR/pg_ctl" -D "$data/db" -l "$data/log" -w start >/dev/null) || return 1
  local pid rc=0
  pid=$(psql -h "$data" -p "$port" -U postgres -Atc "CREATE EXTENSION pg_diagnosis; SELECT pid FROM diagnosis.worker_status()" | tail -1)
  local so=$PRIVATE$(pg_config --pkglibdir)/pg_diagnosis.so
  local asan_calls ubsan_calls
  asan_calls=$(nm -D "$so" | grep -c '__asan_report_')
  ubsan_calls=$(nm -D "$so" | grep -c '__ubsan_handle_')
  echo "worker $pid maps: $(grep -oE '/[^ ]*(clang_rt|pg_diagnosis)[^ ]*' "/proc/$pid/maps" | sort -u | tr '\n' ' ')"
  echo "pg_diagnosis.so calls $asan_calls ASan report and $ubsan_calls UBSan handler functions"
  grep -qF "$ASAN_RUNTIME" "/proc/$pid/maps" && grep -qF "$so" "/proc/$pid/maps" &&
    [ "$asan_calls" -gt 0 ] && [ "$ubsan_calls" -gt 0 ] || rc=1
  (cd /tmp && runuser -u postgres -- "$BINDIR/pg_ctl" -D "$data/db" -m fast -w stop >/dev/null)
  return $rc
}
echo "== control: the server and its worker run the sanitized library"
if sanitized_server_control; then record_exit "sanitized server (control)" 0; else record_exit "sanitized server (control)" 1; fi

ctest_suite "core unit (ASan+UBSan)" "$WORK/build-asan" -DPGDIAG_SANITIZE=ON

regress_suites asan bindir="$BINDIR"

# server_starts: servers started so far from the private installation (its `postgres -D ...`).
server_starts() { wc -l <"$STARTS"; }
before=$(server_starts)
export PGDIAG_PG_BINDIR=$BINDIR
# The suites that drive the extension's own code paths (claims, calls in both eras, tasks, crashes, recovery,
# cancels, hostile input, FHIR packs, dump and restore, chaos). The high-availability, upgrade and demo suites run
# in the plain stage only: under the sanitizers they would re-run pg_auto_failover, a build of 0.1.0 from history and
# the demo cohort for minutes without reaching code the others do not.
SANITIZED_SUITES=(worker worker_crash security sql_corpus hostile durable liveness fhir backup workflow chaos_short)
[ -f test/package.json ] && node_suite "integration and chaos (asan)" test \
  node --test --test-reporter=tap --test-concurrency=1 $(printf "integration/%s.test.mjs " "${SANITIZED_SUITES[@]}")

if [ -n "$CHAOS_ARGS" ]; then
  echo "== chaos run (asan): $CHAOS_ARGS"
  # shellcheck disable=SC2086 # the arguments are words on purpose
  (cd test && node chaos/chaos.mjs $CHAOS_ARGS) 2>&1 | tail -20
  record_exit "chaos run (asan)" "${PIPESTATUS[0]}"
fi
unset PGDIAG_PG_BINDIR
echo "servers started under the sanitizers: $(server_starts) in all, $(($(server_starts) - before)) by the node suites"
# Control: the integration suites really ran the private installation.
[ $(($(server_starts) - before)) -gt 0 ]; record_exit "sanitized integration (control)" $?

# findings_in DIR: one line per ASan, UBSan or LSan finding in the report files in DIR (ASan and UBSan share one
# log_path in a process that has both, so a file may hold several).
FINDING='ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer'
findings_in() { grep -hE "$FINDING" "$1"/* 2>/dev/null; }

# Control: a program with one heap overflow and one signed overflow, run with the server's options, leaves two
# findings that findings_in sees; otherwise "no sanitizer report" below would prove nothing.
report_detection_control() {
  mkdir -p "$WORK/control-reports"
  printf '%s\n' '#include <stdlib.h>' 'int main(int argc, char **argv) {' \
    '  int big = 2147483647 - 1 + argc; big += argc;' '  char *p = malloc(4); p[argc + 3] = (char) big; return p[0]; }' >"$WORK/overflow.c"
  $SAN_CC $SANITIZE -O0 -o "$WORK/overflow" "$WORK/overflow.c" || return 1
  LD_PRELOAD="$ASAN_RUNTIME" ASAN_OPTIONS="detect_leaks=0:log_path=$WORK/control-reports/sanitizer" \
    UBSAN_OPTIONS="halt_on_error=0:log_path=$WORK/control-reports/sanitizer" "$WORK/overflow"
  [ "$(findings_in "$WORK/control-reports" | wc -l)" -eq 2 ]
}
echo "== control: a sanitizer finding is detected"
if report_detection_control; then record_exit "report detection (control)" 0; else record_exit "report detection (control)" 1; fi

echo "== sanitizer reports from the suites"
findings=$(findings_in "$REPORTS" | wc -l)
if [ "$findings" -eq 0 ]; then
  echo "none ($(find "$REPORTS" -type f | wc -l) report files)"
  record "no sanitizer report" 1 0
else
  for f in $(grep -lE "$FINDING" "$REPORTS"/*); do echo "--- $f"; head -60 "$f"; done
  record "no sanitizer report" 0 "$findings"
fi

summary
