#!/usr/bin/env bash
# Builds examples/go offline, the way a Go developer without network access would: Go stubs
# generated from protos/ by protoc (the pinned one of grpcio-tools) with protoc-gen-go and
# protoc-gen-go-grpc, compiled in GOPATH mode against the Go packages Debian ships in
# /usr/share/gocode (golang-google-grpc-dev, golang-google-protobuf-dev,
# golang-google-genproto-dev). No go.mod, no module download.
#
#   scripts/build-go-example.sh OUT_DIR    -> OUT_DIR/worker (OUT_DIR/gopath holds the sources)
#
# The stubs are generated here, not committed: protoc-gen-go's output carries its own version and
# Debian's plugins are not pinned, so committed stubs would be "stale" on every machine with
# another plugin release. Generating them on each build also proves go_package is right: no M
# flags are passed.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: $0 OUT_DIR}
PY=${PYTHON:-.venv/bin/python}
system_gopath=${TURNSTREAM_SYSTEM_GOPATH:-/usr/share/gocode}
missing=$(scripts/ensure-polyglot.sh --print-missing | grep -v -x -e nodejs -e npm || true)
if [[ -n "$missing" ]]; then
  echo "build-go-example: missing Debian packages:" $missing >&2
  echo "  install them as root: scripts/ensure-polyglot.sh (or apt-get install -y" $missing")" >&2
  exit 1
fi

mkdir -p "$out"
out=$(cd "$out" && pwd)
gopath="$out/gopath"
rm -rf "$gopath"
mkdir -p "$gopath/src/turnstream.dev/examples"
WKT=$("$PY" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')
# Files land at $gopath/src/<go_package>, where GOPATH mode finds the import path.
"$PY" -m grpc_tools.protoc -I protos -I third_party/googleapis -I "$WKT" \
  --go_out="$gopath/src" --go-grpc_out="$gopath/src" protos/turnstream/v1/*.proto
cp -r examples/go "$gopath/src/turnstream.dev/examples/worker"
cd "$gopath/src/turnstream.dev/examples/worker"
GOPATH="$gopath:$system_gopath" GO111MODULE=off GOFLAGS= GOPROXY=off go vet .
GOPATH="$gopath:$system_gopath" GO111MODULE=off GOFLAGS= GOPROXY=off go build -o "$out/worker" .
