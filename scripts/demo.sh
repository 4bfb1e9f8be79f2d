#!/usr/bin/env bash
# pg_diagnosis's main job (README "Run the demo"): installs what it needs, builds and installs the extension, then
# starts a throwaway cluster with pg_diagnosis preloaded and the reference MCP server, diagnoses a synthetic cohort
# with a live progress display and prints a summary. Leaves nothing running unless --keep.
#   bash scripts/demo.sh [--patients N] [--seed S] [--fhir] [--keep]
# --fhir: the cohort is charted as FHIR R4 Observation resources, read through diagnosis.fhir_context_pack.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "== building and installing pg_diagnosis"
if ! { make -j2 && make install; } >"$log" 2>&1; then
  tail -50 "$log"
  exit 1
fi
exec node demo/demo.mjs "$@"
