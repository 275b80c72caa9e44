#!/usr/bin/env bash
# Soak test for voice-sidecar (issue 16, item 12): realtime-sim (upstream stand-in, with injected
# drops and errors and a tool ledger) + voice-sidecar + `voice-loadgen soak`, all on loopback. Keeps
# SOAK_SESSIONS sessions running for SOAK_SECS: callers with tools (answered by the load generator
# as the sidecar's ToolHost, some slowly) and barge-ins, and every 8th session a hostile host (no
# SessionStart, malformed bytes, oversized frames, stops reading, vanishes). Samples the sidecar's
# RSS, open fds and live tasks (voice_tasks_active) and ends with `voice-loadgen soak-verdict`:
# zero lost tool results, zero panics, RSS/fds/tasks flat, hostile hosts handled. Exits non-zero on
# a failed verdict.
#
# Environment (defaults in brackets):
#   SOAK_SECS          run time, s                                       [600]
#   SOAK_SESSIONS      concurrent sessions                               [300]
#   SOAK_PROFILE       release|debug: which binaries (target/<profile>)   [release]
#   SOAK_SKIP_BUILD    1: do not run cargo build                         [0]
#   SOAK_SAMPLE_SECS   seconds between samples                           [5]
#   SOAK_HOSTILE_EVERY every Nth session is hostile (0: none)            [8]
#   SOAK_SEED          seed of the load generator's random choices       [1]
#   SOAK_OUT           also write the summary table (Markdown) here      [unset]
#   SOAK_KEEP          1: keep the work directory (reports, logs)        [0]
#   SOAK_SIDECAR_ARGS  extra voice-sidecar flags, e.g. "--host-stall-timeout-ms 5000" [unset]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECS=${SOAK_SECS:-600}
SESSIONS=${SOAK_SESSIONS:-300}
PROFILE=${SOAK_PROFILE:-release}
BIN=$ROOT/target/$PROFILE
T_START=$(date +%s)

case "$PROFILE" in
  release) BUILD_FLAGS=(--release) ;;
  debug) BUILD_FLAGS=() ;;
  *) echo "SOAK_PROFILE must be release or debug, got $PROFILE" >&2; exit 2 ;;
esac
if [[ "${SOAK_SKIP_BUILD:-0}" != 1 ]]; then
  echo "== building $PROFILE binaries"
  (cd "$ROOT" && cargo build -q "${BUILD_FLAGS[@]}" -p voice-loadgen -p voice-sidecar -p realtime-sim)
fi
for b in voice-loadgen voice-sidecar realtime-sim; do
  [[ -x $BIN/$b ]] || { echo "missing $BIN/$b (build it or unset SOAK_SKIP_BUILD)" >&2; exit 1; }
done
T_BUILT=$(date +%s)

WORK=$(mktemp -d -t soak.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do
    [[ -n "$p" ]] && kill "$p" 2>/dev/null || true
  done
  if [[ "${SOAK_KEEP:-0}" == 1 ]]; then echo "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# Every session holds a socket or two in the sidecar; hostile hosts open connections of their own.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() { # port, pid
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    kill -0 "$2" 2>/dev/null || { echo "process $2 exited before listening on $1" >&2; return 1; }
    sleep 0.1
  done
  echo "nothing listening on 127.0.0.1:$1" >&2
  return 1
}

stop_proc() { # pid: SIGTERM, then wait (up to 30 s) before SIGKILL
  kill -TERM "$1" 2>/dev/null || return 0
  for _ in $(seq 1 300); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  echo "process $1 did not stop on SIGTERM: killing it" >&2
  kill -KILL "$1" 2>/dev/null || true
}

echo "sk-soak-not-a-real-key" > "$WORK/api-key"
chmod 600 "$WORK/api-key"
SIM_PORT=$(free_port); GRPC_PORT=$(free_port); METRICS_PORT=$(free_port)

RUST_LOG=warn "$BIN/realtime-sim" --listen "127.0.0.1:$SIM_PORT" \
  --config "$ROOT/services/loadgen/sim-soak.toml" --stats-json "$WORK/sim.json" \
  >"$WORK/sim.log" 2>&1 &
SIM_PID=$!; PIDS+=("$SIM_PID")
wait_port "$SIM_PORT" "$SIM_PID"
"$BIN/voice-sidecar" --listen "127.0.0.1:$GRPC_PORT" --backend openai \
  --realtime-url "ws://127.0.0.1:$SIM_PORT" --api-key-file "$WORK/api-key" \
  --metrics-listen "127.0.0.1:$METRICS_PORT" --log warn --max-sessions 5000 \
  --shutdown-grace-secs 5 ${SOAK_SIDECAR_ARGS:-} \
  >"$WORK/sidecar.log" 2>&1 &
SC_PID=$!; PIDS+=("$SC_PID")
wait_port "$GRPC_PORT" "$SC_PID"
wait_port "$METRICS_PORT" "$SC_PID"

echo "== soak: $SESSIONS sessions for $SECS s ($PROFILE binaries; sidecar pid $SC_PID)"
"$BIN/voice-loadgen" soak --sidecar "127.0.0.1:$GRPC_PORT" --metrics "127.0.0.1:$METRICS_PORT" \
  --sidecar-pid "$SC_PID" --secs "$SECS" --sessions "$SESSIONS" \
  --sample-secs "${SOAK_SAMPLE_SECS:-5}" --hostile-every "${SOAK_HOSTILE_EVERY:-8}" \
  --seed "${SOAK_SEED:-1}" --json "$WORK/soak.json"

kill -0 "$SC_PID" 2>/dev/null || { echo "the sidecar died during the soak" >&2; tail -20 "$WORK/sidecar.log" >&2; }
stop_proc "$SC_PID"
stop_proc "$SIM_PID" # writes $WORK/sim.json on SIGTERM
T_END=$(date +%s)

echo "== verdict"
VERDICT_ARGS=(--report "$WORK/soak.json" --sim-stats "$WORK/sim.json" --sidecar-log "$WORK/sidecar.log")
[[ -n "${SOAK_OUT:-}" ]] && VERDICT_ARGS+=(--markdown "$SOAK_OUT")
rc=0
"$BIN/voice-loadgen" soak-verdict "${VERDICT_ARGS[@]}" || rc=$?
echo "soak.sh: build $((T_BUILT - T_START)) s, soak $((T_END - T_BUILT)) s, total $((T_END - T_START)) s"
if [[ $rc != 0 ]]; then
  echo "soak.sh: FAILED (sidecar log: last lines below)" >&2
  grep -E "panicked|ERROR" "$WORK/sidecar.log" | head -20 >&2 || true
  SOAK_KEEP=1
fi
exit "$rc"
