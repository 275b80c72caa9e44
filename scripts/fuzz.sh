#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time each (issue 16, item 11).
#
#   scripts/fuzz.sh [SECONDS]     # per target, default 60; build time is not counted
#   FUZZ_TARGETS="resample server_event" scripts/fuzz.sh 30
#
# Works on stable: cargo-fuzz needs nightly-only flags (-Zsanitizer, -Cpasses=sancov), which
# RUSTC_BOOTSTRAP=1 unlocks. Installs cargo-fuzz (into $CARGO_HOME/bin) if it is missing. Fails on the
# first crash, leak, timeout or OOM; the reproducer is left in fuzz/artifacts/<target>/ — turn it into a
# unit test in the owning crate. Inputs the run finds are kept in a scratch copy of the corpus, not in
# fuzz/corpus/ (which holds the committed seeds), unless FUZZ_KEEP_CORPUS=1.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

targets="${FUZZ_TARGETS:-$(cargo fuzz list)}"
# -O: optimised with debug assertions (overflow checks) on, as cargo-fuzz does by default.
cargo fuzz build -O

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for t in $targets; do
    corpus="fuzz/corpus/$t"
    if [ "${FUZZ_KEEP_CORPUS:-0}" != 1 ]; then
        mkdir -p "$scratch/$t"
        cp -r "fuzz/corpus/$t/." "$scratch/$t/" 2>/dev/null || true
        corpus="$scratch/$t"
    fi
    echo "fuzz: $t for ${secs}s" >&2
    # -rss_limit_mb/-timeout: a single input using >2 GB or >10 s is a bug too.
    log="$scratch/$t.log"
    if ! cargo fuzz run -O "$t" "$corpus" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "fuzz: $t FAILED (reproducer in fuzz/artifacts/$t/)" >&2
        exit 1
    fi
    grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)|cov: ' "$log" | tail -n 4 >&2 || true
done
echo "fuzz: all targets clean (${secs}s each)" >&2
