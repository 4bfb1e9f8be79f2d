#!/usr/bin/env bash
# Installs everything pg_diagnosis needs to build, test, demo and benchmark on Debian 12: Debian packages with
# apt-get, then the Node packages of the reference MCP server and the test suites with npm ci. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  postgresql-15 postgresql-server-dev-15 postgresql-contrib
  postgresql-15-auto-failover pg-auto-failover-cli
  build-essential g++ make cmake pkg-config clang-14 libclang-rt-14-dev
  libcurl4-openssl-dev libssl-dev rapidjson-dev googletest libgtest-dev
  nodejs npm ca-certificates procps openssl
  debhelper postgresql-server-dev-all dpkg-dev fakeroot clang-format-14 git
)
missing=()
for p in "${PACKAGES[@]}"; do
  # nodejs/npm may come from elsewhere (Node 20 is preinstalled): only ask apt when the command is absent.
  case "$p" in
    nodejs) command -v node >/dev/null 2>&1 && continue ;;
    npm) command -v npm >/dev/null 2>&1 && continue ;;
  esac
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

for dir in mcp-server test test/conformance; do
  if [ -f "$dir/package-lock.json" ]; then
    echo "== npm ci in $dir"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
done
