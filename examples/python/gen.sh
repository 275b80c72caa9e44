#!/usr/bin/env bash
# Generates the Python stubs for proto/voice/v1/sidecar.proto with grpcio-tools into voice_pb/
# (or the directory given as $1). Nothing generated is committed. Run it with the Python that has
# requirements.txt installed (default: python3; set PYTHON to pick another, e.g. .venv/bin/python).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
proto="$(cd "$here/../../proto" && pwd)"
out="${1:-$here/voice_pb}"
py="${PYTHON:-python3}"
rm -rf "$out"
mkdir -p "$out"
"$py" -m grpc_tools.protoc -I "$proto" \
  --python_out="$out" --grpc_python_out="$out" --pyi_out="$out" \
  "$proto/voice/v1/sidecar.proto"
echo "generated $(cd "$out" && find . -name '*.py' | sort | tr '\n' ' ')in $out"
