#!/usr/bin/env bash
# Generates the Go stubs for proto/voice/v1/sidecar.proto into voicepb/ (gitignored) with
# protoc-gen-go and protoc-gen-go-grpc. There is no system protoc on the project's machines: protoc
# comes from Maven Central (com.google.protobuf:protoc, fetched by mvn) and the two Go plugins are
# built by `go install` from the Go module proxy, all into .tools/ here.
set -euo pipefail
cd "$(dirname "$0")"
PROTOC_VERSION=4.36.2              # protoc 36.2
PROTOC_GEN_GO_VERSION=v1.36.12     # google.golang.org/protobuf
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2  # google.golang.org/grpc/cmd/protoc-gen-go-grpc

command -v go >/dev/null || { echo "go is required" >&2; exit 1; }
TOOLS=$PWD/.tools
mkdir -p "$TOOLS/bin"

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) classifier=linux-x86_64 ;;
  Linux-aarch64) classifier=linux-aarch_64 ;;
  Darwin-x86_64) classifier=osx-x86_64 ;;
  Darwin-arm64) classifier=osx-aarch_64 ;;
  *) echo "no protoc build for $(uname -s)-$(uname -m)" >&2; exit 1 ;;
esac
PROTOC=$TOOLS/protoc-$PROTOC_VERSION
if [[ ! -x $PROTOC ]]; then
  command -v mvn >/dev/null || { echo "mvn is required to fetch protoc from Maven Central" >&2; exit 1; }
  mvn -B -q org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy \
    -Dartifact="com.google.protobuf:protoc:$PROTOC_VERSION:exe:$classifier" \
    -DoutputDirectory="$TOOLS" -Dmdep.overWriteReleases=true
  mv "$TOOLS/protoc-$PROTOC_VERSION-$classifier.exe" "$PROTOC"
  chmod +x "$PROTOC"
fi

GOBIN=$TOOLS/bin go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION"
GOBIN=$TOOLS/bin go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC_VERSION"

# The proto has no go_package option: map it to this module's voicepb package here.
map=Mvoice/v1/sidecar.proto=voicehost/voicepb
rm -rf voicepb
PATH=$TOOLS/bin:$PATH "$PROTOC" -I ../../proto \
  --go_out=. --go_opt=module=voicehost --go_opt="$map" \
  --go-grpc_out=. --go-grpc_opt=module=voicehost --go-grpc_opt="$map" \
  voice/v1/sidecar.proto
echo "generated $(ls voicepb/*.go | tr '\n' ' ')"
