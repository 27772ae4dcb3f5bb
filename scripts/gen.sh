#!/usr/bin/env bash
# Regenerates src/turnstream/v1/ from protos/. `-I protos` makes the Python import path equal the
# proto package (turnstream.v1), so no import rewriting is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
WKT=$("$PY" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')
out=src/turnstream/v1
rm -f "$out"/*_pb2*.py "$out"/*_pb2*.pyi
"$PY" -m grpc_tools.protoc -I protos -I third_party/googleapis -I "$WKT" \
  --python_out=src --grpc_python_out=src \
  --mypy_out=src --mypy_grpc_out=src \
  protos/turnstream/v1/*.proto
touch "$out/__init__.py"
