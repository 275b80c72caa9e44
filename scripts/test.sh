#!/usr/bin/env bash
# Runs every test of the workspace on a fresh machine: installs the test tools, then `cargo test`.
# Nothing is skipped silently: tests that need an external tool fail when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --test
cargo build -q --workspace --bins
cargo test --workspace --no-fail-fast "$@"
