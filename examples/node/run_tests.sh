#!/usr/bin/env bash
# CI test of the Node host: npm ci, start the sidecar on its simulator, run the host's test against it.
set -euo pipefail
cd "$(dirname "$0")"
command -v node >/dev/null || { echo "node is required" >&2; exit 1; }
command -v npm >/dev/null || { echo "npm is required" >&2; exit 1; }
source ../sim-sidecar.sh
npm ci --no-audit --no-fund --loglevel=error
start_sim_sidecar
node --test --test-reporter=spec test/
