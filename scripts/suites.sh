# Sourced by scripts/test.sh and scripts/sanitize.sh: runs one suite each and keeps the tally that ends in
# "N passed, N failed". Needs $WORK (a scratch directory) set by the caller.

PASSED=0
FAILED=0
SUMMARY=()

# record SUITE PASSED FAILED
record() {
  PASSED=$((PASSED + $2)); FAILED=$((FAILED + $3))
  SUMMARY+=("$(printf '%-32s %5s passed %5s failed' "$1" "$2" "$3")")
}

# A suite that printed no count but failed still counts as one failure.
record_exit() { if [ "$2" -eq 0 ]; then record "$1" 1 0; else record "$1" 0 1; fi; }

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

# regress_suites TAG [MAKE_ARGS...] : pg_regress and the isolation specs on a throwaway instance, then pg_regress
# again on a database updated from 0.1.0 (make installcheck-update); TAG ("" or a
# word such as asan) names the suites in the summary. pg_regress runs as postgres: it gets a copy of the suites it
# can read wherever this checkout lives.
regress_suites() {
  local tag=$1; shift
  local label=${tag:+, $tag}
  local out="$WORK/regress${tag:+-$tag}" tree="$WORK/tree${tag:+-$tag}"
  echo "== pg_regress and isolation specs$label"
  mkdir -p "$out" "$tree"
  tar -cf - Makefile pg_diagnosis.control sql expected test/regress.conf test/regress_schedule test/isolation |
    tar -xf - -C "$tree"
  chown -R postgres: "$out" "$tree"
  (cd /tmp && runuser -u postgres -- make -s -C "$tree" installcheck REGRESS_OUT="$out" "$@") 2>&1 |
    tee "$WORK/regress.log" | grep -vE '^\s*$' | tail -60
  local kind line
  for kind in regress isolation; do
    # pg_regress prints " All N tests passed." or " M of N tests failed." once per run, regress first.
    line=$(grep -E 'tests (passed|failed)' "$WORK/regress.log" | sed -n "$([ $kind = regress ] && echo 1 || echo 2)p")
    if [[ "$line" =~ All\ ([0-9]+)\ tests\ passed ]]; then record "pg_regress ($kind$label)" "${BASH_REMATCH[1]}" 0
    elif [[ "$line" =~ ([0-9]+)\ of\ ([0-9]+)\ tests\ failed ]]; then
      record "pg_regress ($kind$label)" $((BASH_REMATCH[2] - BASH_REMATCH[1])) "${BASH_REMATCH[1]}"
      find "$out" -name regression.diffs -exec head -80 {} \;
    else record_exit "pg_regress ($kind$label)" 1; fi
  done
  # The same suites on a database created at 0.1.0 and updated (make installcheck-update).
  (cd /tmp && runuser -u postgres -- make -s -C "$tree" installcheck-update REGRESS_OUT="$out" "$@") 2>&1 |
    tee "$WORK/regress-update.log" | grep -vE '^\s*$' | tail -30
  line=$(grep -E 'tests (passed|failed)' "$WORK/regress-update.log" | head -1)
  if [[ "$line" =~ All\ ([0-9]+)\ tests\ passed ]]; then record "pg_regress (updated db$label)" "${BASH_REMATCH[1]}" 0
  elif [[ "$line" =~ ([0-9]+)\ of\ ([0-9]+)\ tests\ failed ]]; then
    record "pg_regress (updated db$label)" $((BASH_REMATCH[2] - BASH_REMATCH[1])) "${BASH_REMATCH[1]}"
    head -80 "$out/output_update/regression.diffs"
  else record_exit "pg_regress (updated db$label)" 1; fi
}

# node_suite NAME DIR COMMAND... : node --test prints "# pass N" / "# fail N" (TAP) or "ℹ pass N" / "ℹ fail N".
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

# Prints the table and the closing line; returns non-zero when anything failed.
summary() {
  echo
  echo "== summary"
  printf '%s\n' "${SUMMARY[@]}"
  echo "$PASSED passed, $FAILED failed"
  [ "$FAILED" -eq 0 ]
}

# merge_tally LOG : adds the summary table of another run of these scripts (its "== summary" rows) to this tally.
merge_tally() {
  local row
  if ! grep -qE '^[0-9]+ passed, [0-9]+ failed$' "$1"; then record_exit "$(basename "$1" .log)" 1; return; fi
  while IFS= read -r row; do
    [[ "$row" =~ ^(.*[^\ ])\ +([0-9]+)\ passed\ +([0-9]+)\ failed$ ]] &&
      record "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}" "${BASH_REMATCH[3]}"
  done < <(sed -n '/^== summary$/,$p' "$1" | sed '1d;$d')
}
