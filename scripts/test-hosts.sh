#!/usr/bin/env bash
# Runs the example hosts' tests against the real sidecar on its simulator (each builds
# target/debug/voice-sidecar if missing; set VOICE_SIDECAR_BIN to use another binary).
# A missing toolchain fails the run; nothing is skipped. .ci/run calls the same scripts.
set -euo pipefail
cd "$(dirname "$0")/.."
examples/python/run_tests.sh
examples/twilio/run_tests.sh
examples/buf/smoke.sh
examples/node/run_tests.sh
examples/go/run_tests.sh
examples/java/run_tests.sh
