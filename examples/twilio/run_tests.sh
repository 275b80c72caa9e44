#!/usr/bin/env bash
# CI for the Twilio bridge: venv + the pinned deps of examples/python/requirements.txt, stubs from
# proto/ (examples/python/gen.sh), then pytest: a Twilio-protocol client plays a call through the
# bridge and the real sidecar on its simulator. The sidecar binary is $VOICE_SIDECAR_BIN (default
# target/debug/voice-sidecar, relative to the repository root), built with cargo if missing.
# A missing python3 fails; nothing is skipped.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

command -v python3 >/dev/null || { echo "FAIL: python3 not found" >&2; exit 1; }
python3 -c 'import sys; assert sys.version_info >= (3, 9), sys.version' \
  || { echo "FAIL: Python >= 3.9 required" >&2; exit 1; }
export VOICE_SIDECAR_BIN="${VOICE_SIDECAR_BIN:-target/debug/voice-sidecar}"
if [[ ! -x "$VOICE_SIDECAR_BIN" ]]; then
  echo "building $VOICE_SIDECAR_BIN"
  cargo build -q -p voice-sidecar
fi

venv="$here/.venv"
[[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -r "$root/examples/python/requirements.txt"
PYTHON="$venv/bin/python" "$root/examples/python/gen.sh" "$here/voice_pb"
cd "$here"
exec "$venv/bin/python" -m pytest -v test_bridge.py "$@"
