#!/usr/bin/env bash
# CI test of the Java host: start the sidecar on its simulator, then `mvn verify`, which generates the
# stubs (protoc and protoc-gen-grpc-java from Maven Central), builds, and runs the JUnit test against it.
set -euo pipefail
cd "$(dirname "$0")"
command -v java >/dev/null || { echo "java (17+) is required" >&2; exit 1; }
command -v mvn >/dev/null || { echo "mvn is required" >&2; exit 1; }
source ../sim-sidecar.sh
start_sim_sidecar
mvn -B --no-transfer-progress -Dsidecar.addr="$SIDECAR_ADDR" verify
