#!/usr/bin/env bash
# Load benchmark for voice-sidecar: realtime-sim (upstream stand-in) + voice-sidecar + voice-loadgen,
# all on loopback on this machine. Writes its results into BENCHMARKS.md at the repository root,
# replacing only the section between the `<!-- bench-load:begin -->` and `<!-- bench-load:end -->`
# markers (appended if the markers are missing), so the hand-written analysis around it is kept.
#
# For each session count: fresh simulator and sidecar processes, N concurrent 8 kHz µ-law sessions
# (in and out) ramped up, held, ended. Also measures the "physical floor" (base64 + JSON + loopback
# WebSocket write of one 20 ms frame) and reports the sidecar's per-frame cost against it.
#
# Environment overrides (defaults in brackets):
#   BENCH_SESSIONS        session counts to run, repeats allowed ["10 100 500 1000 1000 1000"]
#   BENCH_HOLD_SECS       hold (measurement) period per run, s  [30]
#   BENCH_RAMP_SECS       ramp-up period, s                     [max(2, N/100)]
#   BENCH_CODEC           loadgen codec (mulaw|alaw|pcm16|opus) [mulaw]
#   BENCH_TOOLS           1: sessions declare a tool (in-stream) [0]
#   BENCH_FLOOR_FRAMES    frames for the floor measurement      [200000]
#   BENCH_SIM_CONFIG      simulator config                      [services/loadgen/sim-load.toml]
#   BENCH_SKIP_BUILD      1: do not run cargo build             [0]
#   BENCH_MICRO           0: skip the audio micro-benchmarks (`cargo bench -p voice-audio`) [1]
#   BENCH_PROFILE         N: one extra N-session run (not in the table) with `perf record` of the sidecar [unset]
#   BENCH_OUT             write a standalone Markdown file instead of updating BENCHMARKS.md [unset]
#   BENCH_KEEP            1: keep the work directory (JSON reports, logs, /metrics after each run) [0]
#   BENCH_LOADGEN_ARGS    extra voice-loadgen flags, e.g. "--connections 1000" [unset]
#   BENCH_HARNESS_NICE    run the simulator and the load generator at this nice level, i.e. give
#                         the sidecar CPU priority as a Kubernetes CPU request would [unset]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SESSIONS=${BENCH_SESSIONS:-"10 100 500 1000 1000 1000"}
HOLD=${BENCH_HOLD_SECS:-30}
CODEC=${BENCH_CODEC:-mulaw}
TOOLS=${BENCH_TOOLS:-0}
FLOOR_FRAMES=${BENCH_FLOOR_FRAMES:-200000}
SIM_CONFIG=${BENCH_SIM_CONFIG:-$ROOT/services/loadgen/sim-load.toml}
OUT=${BENCH_OUT:-}
DOC=$ROOT/BENCHMARKS.md
PROFILE=${BENCH_PROFILE:-}
BIN=$ROOT/target/release

if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  echo "== building release binaries (slow on small machines)"
  (cd "$ROOT" && cargo build --release -p voice-loadgen -p voice-sidecar -p realtime-sim)
fi
for b in voice-loadgen voice-sidecar realtime-sim; do
  [[ -x $BIN/$b ]] || { echo "missing $BIN/$b" >&2; exit 1; }
done

WORK=$(mktemp -d -t bench-load.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do
    [[ -n "$p" ]] && kill "$p" 2>/dev/null || true
  done
  if [[ "${BENCH_KEEP:-0}" == 1 ]]; then echo "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# 1000 sessions need ~2 sockets each in the sidecar.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null \
    || echo $((20000 + RANDOM % 20000))
}

wait_port() { # port, pid
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$2" 2>/dev/null || { echo "process $2 exited before listening on $1" >&2; return 1; }
    sleep 0.1
  done
  echo "nothing listening on 127.0.0.1:$1" >&2
  return 1
}

stop_proc() { # pid
  kill -TERM "$1" 2>/dev/null || return 0
  for _ in $(seq 1 250); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
}

echo "sk-bench-not-a-real-key" > "$WORK/api-key"
chmod 600 "$WORK/api-key"

if [[ "${BENCH_MICRO:-1}" != 0 ]]; then
  # Codec/resampler micro-benchmarks (with libsoxr via Python `soxr` for comparison, when available);
  # they write crates/audio/BENCH_RESULTS.md, which goes into the generated section below.
  echo "== audio micro-benchmarks (cargo bench -p voice-audio)"
  python3 -c 'import soxr' 2>/dev/null || python3 -m pip install -q soxr numpy 2>/dev/null \
    || echo "(python soxr unavailable: no soxr comparison column)"
  (cd "$ROOT" && cargo bench -q -p voice-audio --bench conversions) || echo "audio micro-benchmarks failed" >&2
fi

echo "== physical floor"
"$BIN/voice-loadgen" floor --frame-bytes 160 --frames "$FLOOR_FRAMES" --json "$WORK/floor.json"

HNICE=()
[[ -n "${BENCH_HARNESS_NICE:-}" ]] && HNICE=(nice -n "$BENCH_HARNESS_NICE")
RUNS=()
# One run: fresh simulator and sidecar, N sessions. $2 = run index; $3 = 1 for the profiling run,
# which is extra: perf's sampling costs the sidecar CPU and perturbs its latency, so a profiled run
# is never one of the measured ones.
one_run() {
  local N=$1 K=$2 PROFILED=$3
  RAMP=${BENCH_RAMP_SECS:-$(( N / 100 > 2 ? N / 100 : 2 ))}
  SIM_PORT=$(free_port); GRPC_PORT=$(free_port); METRICS_PORT=$(free_port)
  echo "== $N sessions (ramp ${RAMP}s, hold ${HOLD}s)"
  RUST_LOG=warn "${HNICE[@]}" "$BIN/realtime-sim" --listen "127.0.0.1:$SIM_PORT" --config "$SIM_CONFIG" \
    >"$WORK/sim-$N.log" 2>&1 &
  SIM_PID=$!; PIDS+=("$SIM_PID")
  wait_port "$SIM_PORT" "$SIM_PID"
  "$BIN/voice-sidecar" --listen "127.0.0.1:$GRPC_PORT" --backend openai \
    --realtime-url "ws://127.0.0.1:$SIM_PORT" --api-key-file "$WORK/api-key" \
    --metrics-listen "127.0.0.1:$METRICS_PORT" --log warn --max-sessions 5000 \
    >"$WORK/sidecar-$N.log" 2>&1 &
  SC_PID=$!; PIDS+=("$SC_PID")
  wait_port "$GRPC_PORT" "$SC_PID"
  wait_port "$METRICS_PORT" "$SC_PID"

  PERF_PID=""
  if [[ "$PROFILED" == 1 ]]; then
    # Start sampling once the ramp is over; stop it before the sessions end.
    ( sleep $(( RAMP + 2 )); exec perf record -F 499 -g -p "$SC_PID" -o "$WORK/perf-$N.data" -- sleep "$(( HOLD > 4 ? HOLD - 2 : HOLD ))" ) \
      >"$WORK/perf-$N.log" 2>&1 &
    PERF_PID=$!
  fi

  EXTRA=()
  [[ "$TOOLS" == 1 ]] && EXTRA+=(--tools)
  # shellcheck disable=SC2206 # word splitting intended: extra flags for the load generator
  [[ -n "${BENCH_LOADGEN_ARGS:-}" ]] && EXTRA+=($BENCH_LOADGEN_ARGS)
  "${HNICE[@]}" "$BIN/voice-loadgen" --sidecar "127.0.0.1:$GRPC_PORT" --metrics "127.0.0.1:$METRICS_PORT" \
    --sidecar-pid "$SC_PID" --sim-pid "$SIM_PID" --sessions "$N" --ramp-secs "$RAMP" --hold-secs "$HOLD" \
    --codec "$CODEC" --json "$WORK/run-$K-$N.json" --label "$N sessions" "${EXTRA[@]}" | tee "$WORK/run-$K-$N.txt"
  [[ "$PROFILED" == 1 ]] || RUNS+=("$WORK/run-$K-$N.json")
  # The sidecar's metrics after the run, for a closer look (kept with BENCH_KEEP=1).
  python3 -c 'import sys,urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' \
    "http://127.0.0.1:$METRICS_PORT/metrics" >"$WORK/metrics-$K-$N.txt" 2>/dev/null || true

  if [[ -n "$PERF_PID" ]]; then
    wait "$PERF_PID" || true
    perf report -i "$WORK/perf-$N.data" --no-children --sort dso,symbol -g none --percent-limit 1 --stdio 2>/dev/null \
      | grep -v -e '^$' -e '^#' | cut -c1-150 | head -60 > "$WORK/perf-$N.txt" || true
  fi
  stop_proc "$SC_PID"
  stop_proc "$SIM_PID"
}

K=0
for N in $SESSIONS; do
  K=$((K + 1))
  one_run "$N" "$K" 0
done
if [[ -n "$PROFILE" ]]; then
  if command -v perf >/dev/null; then
    echo "== profiling run (not in the table)"
    one_run "$PROFILE" "profile" 1
  else
    echo "BENCH_PROFILE set but perf is not installed: no profile" >&2
  fi
fi

TABLE=$("$BIN/voice-loadgen" summarize --floor "$WORK/floor.json" "${RUNS[@]}")

CPU_MODEL=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
SECTION=$WORK/section.md
{
  echo "## Load benchmark (generated by \`scripts/bench-load.sh\`)"
  echo
  echo "Generated by \`scripts/bench-load.sh\` on $(date -u +%Y-%m-%dT%H:%MZ)."
  echo
  echo "- Machine: ${CPU_MODEL:-unknown CPU}, $(nproc) cores available ($(lscpu 2>/dev/null | sed -n 's/^CPU(s):[[:space:]]*//p' | head -1) logical CPUs), $(awk '/MemTotal/ {printf "%.1f GiB RAM", $2/1048576}' /proc/meminfo)"
  echo "- Kernel: $(uname -srm)"
  echo "- Sidecar: \`--backend openai\` against \`realtime-sim\` ($(basename "$SIM_CONFIG"): realtime_factor 4, short replies) on loopback, \`--log warn\`"
  echo "- Load: ${CODEC} 8 kHz in and out, 20 ms frames, 1.5 s speech / 2.5 s silence per caller turn, tools: $([[ $TOOLS == 1 ]] && echo in-stream || echo off); hold ${HOLD} s per run"
  echo "- Load generator: one pacer task per HTTP/2 connection (100 sessions each) on single-threaded runtime shards, callers spread over 2 ms phase slots"
  echo "- Simulator, sidecar and load generator share the same machine; their CPU is reported separately.$([[ -n "${BENCH_HARNESS_NICE:-}" ]] && echo " Simulator and load generator run at nice ${BENCH_HARNESS_NICE}.")"
  echo
  echo "$TABLE"
  echo
  echo "Notes:"
  echo "- *in/out p50/p99/max*: time inside the sidecar per frame, from \`voice_frame_processing_seconds\` bucket deltas over the hold (bucket-interpolated; max is the upper bound of the highest non-empty bucket). *out* is observed per upstream audio delta (100 ms = 5 host frames)."
  echo "- *sidecar CPU per frame*: sidecar user+system CPU during the hold ÷ audio frames it handled (in + out, from \`voice_audio_frames_total\`); includes gRPC, WebSocket, JSON and all control traffic. The floor ratio compares it with the send floor."
  echo "- *out p99.9 · host stalls*: the out-direction tail, and how often (and how long in total) sessions waited on a full host queue during the hold (\`voice_host_stall_seconds\`): backpressure from the path to the host — the sidecar's own HTTP/2 writer or a load generator that is not reading. Waiting is counted in *out*; nothing is dropped."
  echo "- *machine idle / steal*: share of all CPU time during the hold that was idle, and that the hypervisor gave to other guests (\`/proc/stat\`). Steal slows every process at once; tails of runs with steal above a few percent say more about the host than about the sidecar."
  echo "- *RSS KiB/session*: (VmRSS during the hold − VmRSS before any session) ÷ sessions."
  echo "- *speech end → first audio*: client-observed, includes the VAD's 500 ms silence and the simulator's think time."
  for f in "$WORK"/perf-*.txt; do
    [[ -s "$f" ]] || continue
    echo
    echo "### Sidecar profile ($(basename "$f" .txt | sed 's/perf-//') sessions, perf record -g, top symbols)"
    echo
    echo '```'
    head -60 "$f"
    echo '```'
  done
  if [[ "${BENCH_MICRO:-1}" != 0 && -s "$ROOT/crates/audio/BENCH_RESULTS.md" ]]; then
    echo
    echo "### Audio conversion micro-benchmarks (\`cargo bench -p voice-audio\`, same run)"
    echo
    sed '1{/^# /d}' "$ROOT/crates/audio/BENCH_RESULTS.md"
  fi
} > "$SECTION"

if [[ -n "$OUT" ]]; then
  cp "$SECTION" "$OUT"
else
  OUT=$DOC
  BEGIN='<!-- bench-load:begin -->'
  END='<!-- bench-load:end -->'
  [[ -f "$DOC" ]] || printf '# Benchmarks\n' > "$DOC"
  if grep -qF "$BEGIN" "$DOC" && grep -qF "$END" "$DOC"; then
    # Replace what lies between the markers, keep everything else.
    awk -v begin="$BEGIN" -v end="$END" -v section="$SECTION" '
      $0 == begin { print; while ((getline line < section) > 0) print line; skip = 1; next }
      $0 == end { skip = 0 }
      !skip { print }
    ' "$DOC" > "$WORK/doc.md"
  else
    { cat "$DOC"; echo; echo "$BEGIN"; cat "$SECTION"; echo "$END"; } > "$WORK/doc.md"
  fi
  cp "$WORK/doc.md" "$DOC"
fi
echo
echo "== results written to $OUT"
cat "$SECTION"
