#!/usr/bin/env bash
# The main job on a fresh machine: build, start voice-sidecar on its embedded Realtime simulator (no
# API key, no network), and run the demo host, which streams a bundled speech sample through it, runs
# two tools in parallel and prints transcripts, events and timings.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
cargo build --release -q -p voice-sidecar -p voice-demo

GRPC=${VOICE_DEMO_GRPC:-127.0.0.1:50051}
TOOLS=${VOICE_DEMO_TOOLS:-127.0.0.1:50061}
METRICS=${VOICE_DEMO_METRICS:-127.0.0.1:9464}
mkdir -p target/demo
./target/release/voice-sidecar --backend sim --sim-config services/demo/sim-demo.toml \
  --listen "$GRPC" --metrics-listen "$METRICS" --log warn >target/demo/sidecar.log 2>&1 &
SIDECAR=$!
trap 'kill $SIDECAR 2>/dev/null || true' EXIT

./target/release/voice-demo --sidecar "http://$GRPC" --tools-listen "$TOOLS" --out target/demo/reply.wav
echo
echo "metrics (excerpt) from http://$METRICS/metrics:"
python3 - "$METRICS" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=5).read().decode()
for line in text.splitlines():
    if line.startswith(("voice_response_latency_seconds_sum", "voice_response_latency_seconds_count",
                        "voice_tool_call_duration_seconds_count", "voice_silence_seconds_sum", "voice_sessions_total")):
        print("  " + line)
PY
