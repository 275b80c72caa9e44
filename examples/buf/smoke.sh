#!/usr/bin/env bash
# buf curl smoke test: starts the sidecar on its simulator, lists its services and methods over gRPC
# reflection and calls grpc.health.v1.Health/Check, with the buf CLI pinned in package.json (npm).
# A missing toolchain (node/npm) fails the script; nothing is skipped.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

command -v npm >/dev/null || { echo "FAIL: npm not found (needed for @bufbuild/buf)" >&2; exit 1; }
BIN="${VOICE_SIDECAR_BIN:-target/debug/voice-sidecar}"
if [[ ! -x "$BIN" ]]; then
  echo "building $BIN"
  cargo build -q -p voice-sidecar
fi

(cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
BUF="$here/node_modules/.bin/buf"
"$BUF" --version

PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
URL="http://127.0.0.1:$PORT"
log="$(mktemp)"
"$BIN" --backend sim --listen "127.0.0.1:$PORT" --metrics-listen off --log warn >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$log"' EXIT

curl_grpc() { "$BUF" curl --protocol grpc --http2-prior-knowledge "$@"; }

for _ in $(seq 1 100); do
  curl_grpc --list-services "$URL" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { echo "FAIL: the sidecar exited:" >&2; cat "$log" >&2; exit 1; }
  sleep 0.1
done

fail=0
pass=0
check() { # name, output, expected substring
  if grep -qF -- "$3" <<<"$2"; then echo "ok: $1"; pass=$((pass + 1)); else echo "FAIL: $1 (no '$3' in: $2)" >&2; fail=$((fail + 1)); fi
}

services="$(curl_grpc --list-services "$URL")"
echo "$services"
check "reflection lists voice.v1.VoiceSidecar" "$services" "voice.v1.VoiceSidecar"
check "reflection lists voice.v1.ToolHost" "$services" "voice.v1.ToolHost"
check "reflection lists grpc.health.v1.Health" "$services" "grpc.health.v1.Health"

methods="$(curl_grpc --list-methods "$URL")"
echo "$methods"
check "reflection lists Converse" "$methods" "voice.v1.VoiceSidecar/Converse"

health="$(curl_grpc -d '{}' "$URL/grpc.health.v1.Health/Check")"
echo "$health"
check "Health/Check (server) is SERVING" "$health" '"status": "SERVING"'

health="$(curl_grpc -d '{"service":"voice.v1.VoiceSidecar"}' "$URL/grpc.health.v1.Health/Check")"
check "Health/Check voice.v1.VoiceSidecar is SERVING" "$health" '"status": "SERVING"'

echo "buf-smoke: $pass passed, $fail failed"
[[ $fail -eq 0 ]]
