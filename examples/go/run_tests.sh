#!/usr/bin/env bash
# CI test of the Go host: generate the stubs, start the sidecar on its simulator, `go test` against it.
set -euo pipefail
cd "$(dirname "$0")"
command -v go >/dev/null || { echo "go is required" >&2; exit 1; }
./generate.sh
go vet ./...
source ../sim-sidecar.sh
start_sim_sidecar
go test -count=1 -v ./...
