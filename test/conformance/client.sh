#!/usr/bin/env bash
# Runs the official MCP conformance suite (@modelcontextprotocol/conformance, npm) client scenarios against
# pg_diagnosis_mcp_check, the command-line program built on the worker's own MCP client, and prints one line per
# scenario and "conformance-client: N passed, N failed" (N = counted scenarios). Exits non-zero when one failed.
#   bash test/conformance/client.sh [BUILD_DIR]      (default build/; built here when missing)
#
# What runs: the suite's frozen client requirement set for 2026-07-28 (`--requirements 2026-07-28`, 32 scenarios,
# all counted) in one parallel run. The suite runs the scenarios it reports but never scores alongside; of those the
# two of the extension io.modelcontextprotocol/oauth-client-credentials are counted too (pg_diagnosis implements that
# extension), the others are printed with their result and not counted, as the suite itself does.
# A scenario passes when none of its checks is a FAILURE (the suite's own scoring for a requirement set); its
# WARNINGs are printed.
#
# Node 20: the suite declares Node >= 22 and imports fs.globSync (Node 22) in code the client runner never reaches;
# node20-globsync.mjs, preloaded with --import, gives only that package an fs that has it (as server.sh does).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
build=${1:-$root/build}
REVISION=2026-07-28
EXTENSIONS_COUNTED=(auth/client-credentials-jwt auth/client-credentials-basic)

if [ ! -x "$build/pg_diagnosis_mcp_check" ]; then
  echo "== building pg_diagnosis_mcp_check in $build"
  cmake -S "$root" -B "$build" >/dev/null && cmake --build "$build" -j2 --target pg_diagnosis_mcp_check >/dev/null ||
    { echo "building pg_diagnosis_mcp_check failed"; echo "conformance-client: 0 passed, 1 failed"; exit 1; }
fi
if [ ! -f "$here/node_modules/@modelcontextprotocol/conformance/dist/index.js" ]; then
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error) ||
    { echo "npm ci failed"; echo "conformance-client: 0 passed, 1 failed"; exit 1; }
fi
node=(node)
[ "$(node -p 'process.versions.node.split(".")[0]')" -lt 22 ] && node=(node --import "$here/node20-globsync.mjs")
cli="$here/node_modules/@modelcontextprotocol/conformance/dist/index.js"
export PGDIAG_MCP_CHECK="$build/pg_diagnosis_mcp_check"

work=$(mktemp -d /tmp/pg_diagnosis-conformance.XXXXXX)
trap '[ -n "${KEEP_CONFORMANCE_OUTPUT:-}" ] && echo "output kept in $work" || rm -rf "$work"' EXIT

# The scenarios the requirement set scores, as the suite lists them.
required=$("${node[@]}" "$cli" list --requirements "$REVISION" 2>/dev/null |
  sed -n '/^Client scenarios/,/^$/p' | sed -n 's/^  - //p')
[ -n "$required" ] || { echo "could not list the $REVISION requirement set"; echo "conformance-client: 0 passed, 1 failed"; exit 1; }

# One parallel run (the suite writes results/ into its working directory: keep it out of the checkout).
start=$(date +%s%N)
(cd "$work" && timeout 300 "${node[@]}" "$cli" client --command "$here/client-under-test.sh" \
  --requirements "$REVISION" -o "$work/out") >"$work/run.log" 2>"$work/run.err"
echo "suite run: exit $?, $(( ($(date +%s%N) - start) / 1000000 )) ms"

# One line per scenario from its checks.json (with the failed checks under a counted one), then "COUNTS passed failed".
node - "$work/out" "$required" "${EXTENSIONS_COUNTED[*]}" "$REVISION" <<'JS' >"$work/verdicts"
const fs = require('fs'), path = require('path');
const [out, requiredList, extensionList, revision] = process.argv.slice(2);
const results = new Map();
(function walk(dir) {
  for (const e of fs.existsSync(dir) ? fs.readdirSync(dir, { withFileTypes: true }) : []) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) walk(p);
    else if (e.name === 'checks.json')
      results.set(path.relative(out, dir).replace(/-\d{4}-\d\d-\d\dT[\d-]+Z$/, ''), JSON.parse(fs.readFileSync(p, 'utf8')));
  }
})(out);
const counted = [...requiredList.split('\n'), ...extensionList.split(' ')].filter(Boolean);
let passed = 0, failed = 0;
const line = (name, details) => {
  const checks = results.get(name);
  if (!checks) return { ok: false, text: `  FAIL  ${name} (did not run)` };
  const by = (s) => checks.filter((c) => c.status === s);
  const bad = by('FAILURE'), warned = by('WARNING');
  let text = `  ${bad.length ? 'FAIL' : 'PASS'}  ${name} (${by('SUCCESS').length} ok, ${bad.length} failed` +
    `${warned.length ? ', warnings: ' + warned.map((c) => c.id).join(' ') : ''})`;
  if (details) for (const c of bad) text += `\n        ${c.id}: ${c.errorMessage ?? c.details?.message ?? ''}`.slice(0, 170);
  return { ok: bad.length === 0, text };
};
console.log(`scenarios of the ${revision} requirement set and the client-credentials extension:`);
for (const name of counted) {
  const r = line(name, true);
  r.ok ? passed++ : failed++;
  console.log(r.text);
}
const others = [...results.keys()].filter((n) => !counted.includes(n)).sort();
if (others.length) console.log(`run by the suite but not scored by it for ${revision} (not counted here):`);
for (const name of others) console.log(line(name, false).text);
console.log(`COUNTS ${passed} ${failed}`);
JS
grep -v '^COUNTS ' "$work/verdicts"
read -r _ passed failed < <(grep '^COUNTS ' "$work/verdicts" || echo "COUNTS 0 1")
echo "conformance-client: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
