#!/usr/bin/env bash
# Rollover benchmark: N sessions of the load generator's conversation (1.5 s speech, 2.5 s silence,
# tools) against realtime-sim with a session cap of seconds, the sidecar rolling each call over to a
# new upstream session ahead of the cap. Reports the switch gap (last input frame sent on the old
# upstream socket -> first on the new, `voice_upstream_rollover_gap_seconds`) p50/p99, the
# rollovers by outcome, and the load generator's errors, with the machine's idle/steal.
#
#   scripts/bench-rollover.sh                    # 100 sessions, each rolled over at least once
#   BENCH_SESSIONS=200 BENCH_HOLD_SECS=12 scripts/bench-rollover.sh
#   BENCH_SKIP_BUILD=1 ...                       # use target/release as it is
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${BENCH_SESSIONS:-100}
HOLD=${BENCH_HOLD_SECS:-9}
CAP_MS=${BENCH_CAP_MS:-10000}
AFTER=${BENCH_ROLLOVER_AFTER_SECS:-4}
MARGIN=${BENCH_ROLLOVER_MARGIN_SECS:-2}
BIN="$ROOT/target/release"
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [[ "${BENCH_KEEP:-0}" == 1 ]] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT

if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  (cd "$ROOT" && cargo build --release -p voice-loadgen -p voice-sidecar -p realtime-sim)
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 200); do
    (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || { echo "process $2 exited" >&2; exit 1; }
    sleep 0.05
  done
  echo "port $1 never opened" >&2; exit 1
}

# The load test's simulator config, with the session cap.
# Top-level keys first: after the file's [[script]] tables a key would land inside the last one.
{ echo "session_max_duration_ms = $CAP_MS"; cat "$ROOT/services/loadgen/sim-load.toml"; } >"$WORK/sim.toml"
echo "sk-bench" >"$WORK/api-key"
SIM_PORT=$(free_port); GRPC_PORT=$(free_port); METRICS_PORT=$(free_port)
RUST_LOG=warn "$BIN/realtime-sim" --listen "127.0.0.1:$SIM_PORT" --config "$WORK/sim.toml" >"$WORK/sim.log" 2>&1 &
SIM_PID=$!; PIDS+=("$SIM_PID")
wait_port "$SIM_PORT" "$SIM_PID"
CAP_SECS=$(python3 -c "print($CAP_MS/1000)")
"$BIN/voice-sidecar" --listen "127.0.0.1:$GRPC_PORT" --backend openai \
  --realtime-url "ws://127.0.0.1:$SIM_PORT" --api-key-file "$WORK/api-key" \
  --metrics-listen "127.0.0.1:$METRICS_PORT" --log warn --max-sessions 5000 \
  --rollover-after-secs "$AFTER" --upstream-session-cap-secs "$CAP_SECS" --rollover-margin-secs "$MARGIN" \
  >"$WORK/sidecar.log" 2>&1 &
SC_PID=$!; PIDS+=("$SC_PID")
wait_port "$GRPC_PORT" "$SC_PID"
wait_port "$METRICS_PORT" "$SC_PID"

echo "== $N sessions, hold ${HOLD}s; upstream cap ${CAP_SECS}s, rollover after ${AFTER}s, forced at cap - ${MARGIN}s"
"$BIN/voice-loadgen" --sidecar "127.0.0.1:$GRPC_PORT" --metrics "127.0.0.1:$METRICS_PORT" \
  --sidecar-pid "$SC_PID" --sim-pid "$SIM_PID" --sessions "$N" --ramp-secs 2 --hold-secs "$HOLD" \
  --codec mulaw --tools --json "$WORK/run.json" --label "rollover" >"$WORK/run.txt"
python3 -c 'import sys,urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' \
  "http://127.0.0.1:$METRICS_PORT/metrics" >"$WORK/metrics.txt"

python3 - "$WORK/metrics.txt" "$WORK/run.json" "$N" <<'EOF'
import json, re, sys
text = open(sys.argv[1]).read()
run = json.load(open(sys.argv[2]))
n = int(sys.argv[3])

def series(name):
    out = []
    for line in text.splitlines():
        if line.startswith(name):
            m = re.match(r'(\w+)(\{[^}]*\})? (\S+)$', line)
            if m and m.group(1) == name:
                out.append((m.group(2) or "", float(m.group(3))))
    return out

buckets = []
for labels, v in series("voice_upstream_rollover_gap_seconds_bucket"):
    le = re.search(r'le="([^"]+)"', labels).group(1)
    buckets.append((float("inf") if le == "+Inf" else float(le), v))
buckets.sort()
count = next((v for _, v in series("voice_upstream_rollover_gap_seconds_count")), 0.0)
total = next((v for _, v in series("voice_upstream_rollover_gap_seconds_sum")), 0.0)

def quantile(q):
    # histogram_quantile: linear interpolation inside the bucket holding the q-th observation.
    if count == 0:
        return float("nan")
    rank, prev_le, prev_c = q * count, 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-9)
        prev_le, prev_c = le, c
    return prev_le

outcomes = {re.search(r'outcome="([^"]+)"', l).group(1): v for l, v in series("voice_upstream_rollovers_total")}
reconnects = next((v for _, v in series("voice_upstream_reconnects_total")), 0.0)
errs = run.get("errors", {})
dropped = run.get("sessions_dropped", 0)
machine = f"idle {run.get('machine_idle')}, steal {run.get('machine_steal')}"

print(f"rollovers: {int(count)} gaps recorded; outcomes {outcomes}; reconnects {int(reconnects)}")
print(f"switch gap: p50 {quantile(0.5)*1000:.1f} ms, p99 {quantile(0.99)*1000:.1f} ms, mean {total/max(count,1)*1000:.1f} ms")
print(f"load generator: sessions {run.get('sessions_established')}/{n} established, {dropped} dropped, "
      f"{run.get('tool_calls_answered')} tool calls, errors {errs}; machine {machine}")
ok = count >= n and outcomes.get("failed", 0) == 0 and reconnects == 0 and dropped == 0
print("verdict:", "OK" if ok else "FAILED (fewer rollovers than sessions, a failed rollover, or a reconnect)")
sys.exit(0 if ok else 1)
EOF
