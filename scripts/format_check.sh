#!/usr/bin/env bash
# The C++ is formatted as .clang-format says, checked with Debian's clang-format-14 (scripts/deps.sh installs it).
#   bash scripts/format_check.sh         prints what clang-format would change; "N passed, N failed" (one per file)
#   bash scripts/format_check.sh --fix   reformats the files in place (`make format`)
# The files are the C++ git tracks (src/, include/, test/unit/, test/fuzz/, bench/); the PostgreSQL C in
# test/sanitize/ keeps pgindent's layout.
set -uo pipefail
cd "$(dirname "$0")/.."
CLANG_FORMAT=${CLANG_FORMAT:-clang-format-14}
WORK=$(mktemp -d /tmp/pg_diagnosis-format.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
. scripts/suites.sh

mapfile -t files < <(git ls-files '*.cpp' '*.hpp')
if [ "${1:-}" = "--fix" ]; then
  exec "$CLANG_FORMAT" -i "${files[@]}"
fi

echo "== formatting ($CLANG_FORMAT, ${#files[@]} files)"
ok=0 bad=0
for f in "${files[@]}"; do
  if "$CLANG_FORMAT" "$f" | diff -u --label "$f" --label "$f (clang-format)" "$f" - >"$WORK/diff"; then
    ok=$((ok + 1))
  else
    bad=$((bad + 1))
    head -40 "$WORK/diff"
  fi
done
[ "$bad" -gt 0 ] && echo "run 'make format' to reformat"
record "formatting (clang-format)" "$ok" "$bad"
summary
