#!/usr/bin/env bash
# The main job on a fresh machine: build, start voice-sidecar on its embedded Realtime simulator (no
# API key, no network), and run the demo host, which streams a bundled speech sample through it, runs
# two tools in parallel and prints transcripts, events and timings.
#
# `scripts/demo.sh --translate LANG` runs a translation session instead: the same sample translated
# into LANG (es, pt, fr, ja, ru, zh, de, ko, hi, id, vi, it, en), source and translated transcripts
# printed as they stream, the translated audio written to target/demo/translation.wav.
set -euo pipefail
cd "$(dirname "$0")/.."
TRANSLATE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --translate) TRANSLATE=${2:?"--translate needs a language, e.g. --translate es"}; shift 2 ;;
    --translate=*) TRANSLATE=${1#--translate=}; shift ;;
    *) echo "usage: $0 [--translate LANG]" >&2; exit 2 ;;
  esac
done
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

if [ -n "$TRANSLATE" ]; then
  ./target/release/voice-demo --sidecar "http://$GRPC" --translate "$TRANSLATE" --out target/demo/translation.wav
  PREFIXES='"voice_translation_audio_seconds_total", "voice_translation_latency_seconds_sum", "voice_translation_latency_seconds_count", "voice_cost_microdollars_total", "voice_sessions_total"'
else
  ./target/release/voice-demo --sidecar "http://$GRPC" --tools-listen "$TOOLS" --out target/demo/reply.wav
  PREFIXES='"voice_response_latency_seconds_sum", "voice_response_latency_seconds_count", "voice_tool_call_duration_seconds_count", "voice_silence_seconds_sum", "voice_sessions_total"'
fi
echo
echo "metrics (excerpt) from http://$METRICS/metrics:"
python3 - "$METRICS" "$PREFIXES" <<'PY'
import ast, sys, urllib.request
text = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=5).read().decode()
prefixes = ast.literal_eval("(" + sys.argv[2] + ",)")
for line in text.splitlines():
    if line.startswith(prefixes):
        print("  " + line)
PY
