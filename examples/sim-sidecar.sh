# Sourced by examples/*/run_tests.sh: starts the real sidecar on its embedded simulator (the demo's
# script: one question answered with calendar_lookup + crm_update in parallel) on a free loopback
# port, exports SIDECAR_ADDR=127.0.0.1:PORT, and kills it when the sourcing script exits.
# The binary: $VOICE_SIDECAR_BIN, else target/debug/voice-sidecar (built if missing).
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VOICE_SIDECAR_BIN=${VOICE_SIDECAR_BIN:-$REPO_ROOT/target/debug/voice-sidecar}
if [[ ! -x $VOICE_SIDECAR_BIN ]]; then
  (cd "$REPO_ROOT" && cargo build -q -p voice-sidecar)
fi
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
SIDECAR_LOG=$(mktemp -t voice-sidecar-XXXXXX.log)
start_sim_sidecar() {
  local port
  port=$(free_port)
  export SIDECAR_ADDR=127.0.0.1:$port
  "$VOICE_SIDECAR_BIN" --backend sim --sim-config "$REPO_ROOT/services/demo/sim-demo.toml" \
    --listen "$SIDECAR_ADDR" --metrics-listen off --log warn >"$SIDECAR_LOG" 2>&1 &
  SIDECAR_PID=$!
  trap 'kill "$SIDECAR_PID" 2>/dev/null || true; wait "$SIDECAR_PID" 2>/dev/null || true' EXIT
  # Wait until it accepts connections (or has died).
  for _ in $(seq 1 100); do
    if ! kill -0 "$SIDECAR_PID" 2>/dev/null; then
      echo "voice-sidecar exited at start:" >&2
      cat "$SIDECAR_LOG" >&2
      return 1
    fi
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null; then
      echo "voice-sidecar (sim) listening on $SIDECAR_ADDR, log $SIDECAR_LOG"
      return 0
    fi
    sleep 0.1
  done
  echo "voice-sidecar did not listen on $SIDECAR_ADDR" >&2
  cat "$SIDECAR_LOG" >&2
  return 1
}
