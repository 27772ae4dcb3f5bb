"""Test support: the deploy files, loaded as data (the Kubernetes manifests by kind and name,
the Dockerfile's EXPOSE and USER, the Envoy bootstrap)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
ENVOY = ROOT / "deploy" / "envoy" / "envoy.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DESCRIPTOR = ROOT / "descriptor" / "turnstream.binpb"


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object the kustomization lists, by (kind, name)."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for resource in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / resource).read_text()):
            if doc is None:
                continue
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in out, f"{key} defined twice"
            out[key] = doc
    return out


def container(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in pod_spec["containers"] if c["name"] == name]
    assert len(found) == 1, f"no single container {name!r}"
    return found[0]


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    """name -> value (a string) or valueFrom (a dict)."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def dockerfile() -> tuple[set[int], str, dict[str, str]]:
    """(EXPOSEd ports, USER, ENV of the final stage)."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    final = text.split("\nFROM ")[-1]
    expose = {int(p) for m in re.findall(r"^EXPOSE (.+)$", final, re.M) for p in m.split()}
    user = re.findall(r"^USER (\S+)$", final, re.M)[-1]
    env: dict[str, str] = {}
    for line in re.findall(r"^ENV (.+)$", final, re.M):
        env.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    return expose, user, env


def envoy_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(ENVOY.read_text())
    return config


def seconds(duration: str) -> float:
    """A protobuf JSON Duration ("300s", "0.25s") in seconds."""
    assert duration.endswith("s"), duration
    return float(duration[:-1])
