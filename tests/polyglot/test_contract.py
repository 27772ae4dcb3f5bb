"""The contract as other languages get it: the committed descriptor set (descriptor/) is what the
protos build today, holds everything a dynamic client needs, and every file of turnstream.v1
names its package for each generator."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

REPO = Path(__file__).resolve().parents[2]
DESCRIPTOR = REPO / "descriptor" / "turnstream.binpb"


def load(path: Path) -> descriptor_pb2.FileDescriptorSet:
    return descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())


def test_the_committed_descriptor_set_is_what_the_protos_build(tmp_path: Path) -> None:
    built = tmp_path / "turnstream.binpb"
    subprocess.run(
        [REPO / "scripts" / "descriptor.sh", built],
        env={**os.environ, "PYTHON": sys.executable},
        check=True,
    )
    assert built.read_bytes() == DESCRIPTOR.read_bytes(), "run `make gen` and commit descriptor/"


def test_the_descriptor_set_holds_the_services_their_imports_and_google_rpc_status() -> None:
    files = {f.name: f for f in load(DESCRIPTOR).file}
    assert {
        "turnstream/v1/ingest.proto",
        "turnstream/v1/records.proto",
        "google/protobuf/struct.proto",
        "google/protobuf/timestamp.proto",
        "google/protobuf/duration.proto",
        "google/protobuf/any.proto",
        "google/rpc/status.proto",
        "google/rpc/error_details.proto",
        "google/rpc/code.proto",
    } <= set(files)
    ingest = files["turnstream/v1/ingest.proto"]
    assert [s.name for s in ingest.service] == ["IngestService"]
    # Source info: the comments travel with the descriptor (grpcurl describe shows them).
    comments = [loc.leading_comments for loc in ingest.source_code_info.location]
    assert any("IngestService receives the records" in c for c in comments)


def test_every_turnstream_file_names_its_package_for_each_generator() -> None:
    for f in load(DESCRIPTOR).file:
        if not f.name.startswith("turnstream/"):
            continue
        o = f.options
        outer = Path(f.name).stem.capitalize() + "Proto"
        assert (o.go_package, o.java_package, o.java_outer_classname) == (
            "turnstream.dev/gen/go/turnstream/v1;turnstreamv1",
            "dev.turnstream.v1",
            outer,
        ), f.name
        assert o.java_multiple_files, f.name
        assert (o.csharp_namespace, o.php_namespace, o.ruby_package, o.objc_class_prefix) == (
            "Turnstream.V1",
            "Turnstream\\V1",
            "Turnstream::V1",
            "TXX",
        ), f.name
