#!/usr/bin/env bash
# pg_diagnosis's test command (README "Run every test suite"; .ci/run calls it).
# Installs what it needs, builds and installs the extension, checks the formatting (scripts/format_check.sh),
# builds, installs and installchecks the Debian package (scripts/package_test.sh), then runs every suite: the
# core's unit tests and a short fuzz run (ctest), the MCP conformance suite's client scenarios against
# pg_diagnosis_mcp_check, pg_regress and the isolation specs on a throwaway instance (and pg_regress on a database
# updated from 0.1.0), the reference MCP server's tests and the conformance suite's server scenarios, and the
# integration (backup and upgrade included), crash and chaos suites against a real cluster and the real MCP server; then
# scripts/sanitize.sh runs pg_regress, the isolation specs and the integration suites again with the extension
# built under AddressSanitizer and UndefinedBehaviorSanitizer.
# Ends with one line "N passed, N failed" and exits non-zero when anything failed.
set -uo pipefail
cd "$(dirname "$0")/.."
WORK=$(mktemp -d /tmp/pg_diagnosis-test.XXXXXX)
chmod 755 "$WORK"
trap 'rm -rf "$WORK"' EXIT

. scripts/suites.sh

echo "== dependencies"
if scripts/deps.sh; then export PGDIAG_DEPS_INSTALLED=1  # scripts/sanitize.sh below need not check them again
else echo "installing dependencies failed"; record_exit dependencies 1; fi

echo "== build and install the extension"
if make -j2 >"$WORK/build.log" 2>&1 && make install >>"$WORK/build.log" 2>&1; then
  record_exit "extension build" 0
else
  tail -50 "$WORK/build.log"; record_exit "extension build" 1
fi

# The C++ is formatted as .clang-format says (scripts/format_check.sh; `make format` fixes it).
bash scripts/format_check.sh 2>&1 | tee "$WORK/format.log" | tail -40
merge_tally "$WORK/format.log"

# The Debian package built from a clean copy, installed, its files checked and installcheck run against it; then
# purged and make install's files put back (scripts/package_test.sh; its rows join this summary).
echo "== Debian package: bash scripts/package_test.sh"
bash scripts/package_test.sh 2>&1 | tee "$WORK/package.log"
merge_tally "$WORK/package.log"

ctest_suite "core unit (ctest)" build
if command -v clang++-14 >/dev/null 2>&1; then
  CXX=clang++-14 ctest_suite "core fuzz (short)" build-fuzz -DPGDIAG_FUZZ=ON
fi

# The official MCP conformance suite's client scenarios against pg_diagnosis_mcp_check (built in the ctest tree).
echo "== MCP conformance (client scenarios)"
bash test/conformance/client.sh "$PWD/build" 2>&1 | tee "$WORK/conformance.log"
if [[ "$(grep -E '^conformance-client: [0-9]+ passed, [0-9]+ failed$' "$WORK/conformance.log")" =~ ([0-9]+)\ passed,\ ([0-9]+)\ failed ]]; then
  record "MCP conformance (client)" "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"
else record_exit "MCP conformance (client)" 1; fi
# The same program against servers built on the official SDKs (v2 modern, v1 with tasks, server-everything).
echo "== MCP interop with the official SDKs"
bash test/conformance/interop.sh "$PWD/build" 2>&1 | tee "$WORK/interop.log"
if [[ "$(grep -E '^interop: [0-9]+ passed, [0-9]+ failed$' "$WORK/interop.log")" =~ ([0-9]+)\ passed,\ ([0-9]+)\ failed ]]; then
  record "MCP interop (official SDKs)" "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}"
else record_exit "MCP interop (official SDKs)" 1; fi

regress_suites ""

[ -f mcp-server/package.json ] && node_suite "reference MCP server" mcp-server npm test
# The official MCP conformance suite's server scenarios against the reference server (test/conformance/server.sh).
[ -f mcp-server/package.json ] && node_suite "MCP conformance (server)" . bash test/conformance/server.sh
[ -f test/package.json ] && node_suite "integration and chaos" test npm test

# The extension built with ASan and UBSan through the same pg_regress and integration suites (its own command,
# scripts/sanitize.sh; its rows join this summary).
echo "== sanitizer mode: bash scripts/sanitize.sh"
bash scripts/sanitize.sh 2>&1 | tee "$WORK/sanitizer-mode.log"
merge_tally "$WORK/sanitizer-mode.log"

summary
