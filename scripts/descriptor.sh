#!/usr/bin/env bash
# Builds descriptor/turnstream.binpb: a FileDescriptorSet of the contract with every import and
# the source info (comments), for tools and dynamic clients that load a descriptor instead of
# .proto files (grpcurl -protoset, proto-loader's loadFileDescriptorSetFromBuffer, Java's
# DynamicMessage, Envoy's gRPC-JSON transcoder).
#
# google/rpc/status.proto and code.proto are added by name: ingest.proto does not import them, yet
# every client needs Status to decode the grpc-status-details-bin trailer of an error.
#
# The pinned grpcio-tools protoc builds it (not buf, which pyproject does not pin), so the bytes
# depend only on the sources and `make gen-check` can compare them.
#
#   scripts/descriptor.sh [OUT]    (default descriptor/turnstream.binpb)
set -euo pipefail
out=$(realpath -m "${1:-$(dirname "$0")/../descriptor/turnstream.binpb}")
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
WKT=$("$PY" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')
mkdir -p "$(dirname "$out")"
"$PY" -m grpc_tools.protoc -I protos -I third_party/googleapis -I "$WKT" \
  --include_imports --include_source_info \
  --descriptor_set_out="$out" \
  protos/turnstream/v1/*.proto google/rpc/status.proto google/rpc/code.proto
