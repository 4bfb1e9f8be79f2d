#!/usr/bin/env bash
# pg_diagnosis's test command (README "Run every test suite"; .ci/run calls it).
# Installs what it needs, builds the extension and the core, then runs every suite: the core's unit tests and a
# short fuzz run (ctest), pg_regress and the isolation specs on a throwaway instance, the reference MCP server's
# tests, and the integration, crash and chaos suites against a real cluster and the real MCP server.
# Ends with one line "N passed, N failed" and exits non-zero when anything failed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=$(mktemp -d /tmp/pg_diagnosis-test.XXXXXX)
chmod 755 "$WORK"
trap 'rm -rf "$WORK"' EXIT

PASSED=0
FAILED=0
SUMMARY=()

# record SUITE PASSED FAILED
record() {
  PASSED=$((PASSED + $2)); FAILED=$((FAILED + $3))
  SUMMARY+=("$(printf '%-28s %5s passed %5s failed' "$1" "$2" "$3")")
}

# A suite that printed no count but failed still counts as one failure.
record_exit() { if [ "$2" -eq 0 ]; then record "$1" 1 0; else record "$1" 0 1; fi; }

echo "== dependencies"
if ! scripts/deps.sh; then echo "installing dependencies failed"; record_exit dependencies 1; fi

echo "== build and install the extension"
if make -j2 >"$WORK/build.log" 2>&1 && make install >>"$WORK/build.log" 2>&1; then
  record_exit "extension build" 0
else
  tail -50 "$WORK/build.log"; record_exit "extension build" 1
fi

# ctest_suite NAME BUILD_DIR CMAKE_ARGS... : configure, build and run one ctest tree, recording its counts.
ctest_suite() {
  local name=$1 dir=$2; shift 2
  echo "== $name"
  if cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >"$WORK/cmake.log" 2>&1 &&
     cmake --build "$dir" -j2 >>"$WORK/cmake.log" 2>&1; then
    ctest --test-dir "$dir" --output-on-failure 2>&1 | tee "$WORK/ctest.log" | tail -12
    local total
    if total=$(grep -oE '[0-9]+ tests failed out of [0-9]+' "$WORK/ctest.log"); then
      local f t
      f=$(echo "$total" | awk '{print $1}'); t=$(echo "$total" | awk '{print $6}')
      record "$name" $((t - f)) "$f"
    else record_exit "$name" 1; fi
  else
    tail -50 "$WORK/cmake.log"; record_exit "$name (build)" 1
  fi
}

ctest_suite "core unit (ctest)" build
if command -v clang++-14 >/dev/null 2>&1; then
  CXX=clang++-14 ctest_suite "core fuzz (short)" build-fuzz -DPGDIAG_FUZZ=ON
fi

echo "== pg_regress and isolation specs"
# pg_regress runs as postgres: give it a copy of the suites it can read wherever this checkout lives.
mkdir -p "$WORK/regress" "$WORK/tree"
tar -cf - Makefile pg_diagnosis.control sql expected test/regress.conf test/regress_schedule test/isolation | tar -xf - -C "$WORK/tree"
chown -R postgres: "$WORK/regress" "$WORK/tree"
(cd /tmp && runuser -u postgres -- make -s -C "$WORK/tree" installcheck REGRESS_OUT="$WORK/regress") 2>&1 |
  tee "$WORK/regress.log" | grep -vE '^\s*$' | tail -60
for kind in regress isolation; do
  # pg_regress prints " All N tests passed." or " M of N tests failed." once per run, regress first.
  line=$(grep -E 'tests (passed|failed)' "$WORK/regress.log" | sed -n "$([ $kind = regress ] && echo 1 || echo 2)p")
  if [[ "$line" =~ All\ ([0-9]+)\ tests\ passed ]]; then record "pg_regress ($kind)" "${BASH_REMATCH[1]}" 0
  elif [[ "$line" =~ ([0-9]+)\ of\ ([0-9]+)\ tests\ failed ]]; then
    record "pg_regress ($kind)" $((BASH_REMATCH[2] - BASH_REMATCH[1])) "${BASH_REMATCH[1]}"
    find "$WORK/regress" -name regression.diffs -exec head -80 {} \;
  else record_exit "pg_regress ($kind)" 1; fi
done

# node --test prints "# pass N" / "# fail N" (TAP) or "ℹ pass N" / "ℹ fail N" (spec reporter).
node_suite() {
  local name=$1 dir=$2; shift 2
  echo "== $name"
  (cd "$dir" && "$@") 2>&1 | tee "$WORK/node.log" | tail -25
  local rc=${PIPESTATUS[0]}
  local p f
  p=$(grep -aE '^(# |ℹ )pass [0-9]+' "$WORK/node.log" | tail -1 | grep -oE '[0-9]+$')
  f=$(grep -aE '^(# |ℹ )fail [0-9]+' "$WORK/node.log" | tail -1 | grep -oE '[0-9]+$')
  if [ -n "$p" ] && [ -n "$f" ]; then
    [ "$rc" -ne 0 ] && [ "$f" -eq 0 ] && f=1
    record "$name" "$p" "$f"
  else record_exit "$name" "$rc"; fi
}

[ -f mcp-server/package.json ] && node_suite "reference MCP server" mcp-server npm test
[ -f test/package.json ] && node_suite "integration and chaos" test npm test

echo
echo "== summary"
printf '%s\n' "${SUMMARY[@]}"
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
