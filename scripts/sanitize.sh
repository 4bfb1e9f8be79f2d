#!/usr/bin/env bash
# The extension under AddressSanitizer and UndefinedBehaviorSanitizer: builds pg_diagnosis.so with both, runs the
# server with libasan preloaded (PostgreSQL itself is not instrumented; every pg_diagnosis frame is), runs the
# pg_regress and isolation suites and the worker's integration suites, then reinstalls the normal build.
# Any sanitizer report fails the run. Not part of the test command (it takes a few minutes).
#   bash scripts/sanitize.sh
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh >/dev/null
WORK=$(mktemp -d /tmp/pg_diagnosis-sanitize.XXXXXX)
chmod 755 "$WORK"
reports="$WORK/reports"
mkdir -p "$reports" && chmod 777 "$reports"
restore() { make -s clean >/dev/null; make -s -j2 >/dev/null 2>&1 && make -s install >/dev/null 2>&1; rm -rf "$WORK"; }
trap restore EXIT

flags="-fsanitize=address,undefined -fno-sanitize-recover=all -fsanitize-recover=pointer-overflow -fno-omit-frame-pointer"
make -s clean >/dev/null
make -s -j2 PG_CXXFLAGS="-std=c++17 -Wno-register -fexceptions $flags" SHLIB_LINK="-lcurl -lstdc++ $flags" >/dev/null &&
  make -s install >/dev/null || { echo "sanitized build failed"; exit 1; }

export LD_PRELOAD="$(gcc -print-file-name=libasan.so)"
# PostgreSQL's own allocations are not ours to judge at exit; RapidJSON 1.1.0's known report is suppressed.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:log_path=$reports/asan"
export UBSAN_OPTIONS="suppressions=$PWD/test/ubsan.supp:halt_on_error=1:print_stacktrace=1:log_path=$reports/ubsan"

status=0
mkdir -p "$WORK/regress" && chown postgres: "$WORK/regress"
runuser -u postgres -- make -s installcheck REGRESS_OUT="$WORK/regress" 2>&1 | grep -E "tests (passed|failed)" || status=1
grep -q "tests failed" <(runuser -u postgres -- cat "$WORK"/regress/regression.out "$WORK"/regress/isolation/regression.out 2>/dev/null) && status=1
unset LD_PRELOAD
# The harness starts its clusters with the environment it inherits; LD_PRELOAD goes to pg_ctl only.
(cd test && PGDIAG_SERVER_PRELOAD="$(gcc -print-file-name=libasan.so)" node --test --test-reporter=tap --test-concurrency=1 \
   integration/worker.test.mjs integration/worker_crash.test.mjs integration/security.test.mjs) 2>&1 | grep -E "^# (pass|fail)" || status=1
if ls "$reports"/* >/dev/null 2>&1; then
  echo "sanitizer reports:"; head -50 "$reports"/*
  status=1
fi
echo "sanitized extension: $([ $status -eq 0 ] && echo 'no sanitizer report, suites pass' || echo FAILED)"
exit $status
