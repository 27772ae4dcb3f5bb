"""deploy/k8s cannot be applied here: these tests hold what matters in it to the server and the
image — ports, probes, drain time, the objects pointing at each other."""

from __future__ import annotations

from typing import Any

import grpc
import httpx
import kubernetes_validate
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.deploy.manifests import container, dockerfile, env_of, k8s_objects
from tests.serving import running_server
from turnstream.config import Settings, split_addr
from turnstream.server import SERVICE

OBJECTS = k8s_objects()
DEPLOYMENT = OBJECTS["Deployment", "turnstream"]
POD = DEPLOYMENT["spec"]["template"]["spec"]
SERVER = container(POD, "turnstream")
ENV = env_of(SERVER)
PORTS = {p["name"]: p["containerPort"] for p in SERVER["ports"]}
POD_LABELS = DEPLOYMENT["spec"]["template"]["metadata"]["labels"]
# What the server will run with: its defaults, then the manifest's TURNSTREAM_* values.
SETTINGS = Settings.from_env({k: v for k, v in ENV.items() if isinstance(v, str)})


# Native gRPC probes are GA from Kubernetes 1.27; the newest schemas the package knows too.
KUBERNETES_VERSIONS = ["1.27.0", kubernetes_validate.latest_version()]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(("kind", "name"), sorted(OBJECTS))
def test_every_object_is_valid_kubernetes(kind: str, name: str, version: str) -> None:
    """Strict: a misspelt or misplaced field (`readinesProbe`, a probe's `grpc.service` on
    the wrong level) is an error here, not a field the API server silently drops."""
    kubernetes_validate.validate(OBJECTS[kind, name], version, strict=True)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_ports_are_the_servers_and_the_images() -> None:
    expose, user, image_env = dockerfile()
    grpc_port, http_port = split_addr(SETTINGS.grpc_addr)[1], split_addr(SETTINGS.http_addr)[1]
    assert {"grpc": grpc_port, "http": http_port} == PORTS
    assert set(PORTS.values()) == expose
    # The image listens on every interface on the same ports (the defaults are loopback).
    image = Settings.from_env(image_env)
    assert split_addr(image.grpc_addr) == ("0.0.0.0", grpc_port)
    assert split_addr(image.http_addr) == ("0.0.0.0", http_port)
    assert split_addr(Settings().grpc_addr)[1] == grpc_port
    assert split_addr(Settings().http_addr)[1] == http_port
    # The pod runs as the image's user.
    security = POD["securityContext"]
    assert f"{security['runAsUser']}:{security['runAsGroup']}" == user
    assert security["runAsNonRoot"] is True


def test_readiness_is_native_grpc_health_of_a_service_the_server_reports() -> None:
    probe = SERVER["readinessProbe"]
    assert set(probe) & {"grpc", "httpGet", "exec", "tcpSocket"} == {"grpc"}
    assert probe["grpc"]["port"] == PORTS["grpc"]
    # The names the server sets (server.py: "" and the IngestService) follow the database and
    # the drain; any other name is NOT_FOUND and the pod would never be ready.
    assert probe["grpc"].get("service", "") in ("", SERVICE)
    # Reported unready quickly once draining (before the preStop sleep ends).
    assert probe["periodSeconds"] * probe["failureThreshold"] <= prestop_seconds() + 5


def test_liveness_does_not_follow_the_database() -> None:
    # gRPC health (any name) turns NOT_SERVING in a database outage: as liveness it would
    # restart every pod for it. /healthz only says the process answers.
    for name in ("livenessProbe", "startupProbe"):
        probe = SERVER[name]
        assert "grpc" not in probe, name
        assert probe["httpGet"]["path"] == "/healthz", name
        port = probe["httpGet"]["port"]
        assert port in ("http", PORTS["http"]), name


def prestop_seconds() -> int:
    pre_stop = SERVER["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        return int(pre_stop["sleep"]["seconds"])
    command = pre_stop["exec"]["command"]
    assert command[0] == "sleep", command
    return int(command[1])


def test_termination_grace_covers_prestop_and_the_drain() -> None:
    # SIGTERM comes after preStop; the drain then takes up to shutdown_grace. The kubelet's
    # SIGKILL must come later, with a margin for the interpreter's exit.
    assert prestop_seconds() >= 1
    grace = POD["terminationGracePeriodSeconds"]
    assert grace >= prestop_seconds() + SETTINGS.shutdown_grace + 2, (
        grace,
        prestop_seconds(),
        SETTINGS.shutdown_grace,
    )


def test_prometheus_scrapes_the_http_port() -> None:
    annotations = DEPLOYMENT["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == PORTS["http"]
    assert annotations["prometheus.io/path"] == "/metrics"
    assert SETTINGS.metrics is True


def test_database_url_comes_from_a_secret_and_migrations_from_the_job() -> None:
    ref = ENV["TURNSTREAM_DATABASE_URL"]["secretKeyRef"]
    assert ref["name"] and ref["key"]
    assert SETTINGS.auto_migrate is False
    job = OBJECTS["Job", "turnstream-migrate"]
    job_pod = job["spec"]["template"]["spec"]
    migrate = container(job_pod, "migrate")
    assert migrate["args"] == ["migrate"]
    assert migrate["image"] == SERVER["image"]
    assert env_of(migrate)["TURNSTREAM_DATABASE_URL"] == ENV["TURNSTREAM_DATABASE_URL"]
    assert job_pod["restartPolicy"] in ("OnFailure", "Never")


def test_every_setting_in_the_manifest_is_a_real_setting() -> None:
    # A misspelt TURNSTREAM_* variable would be silently ignored by the server.
    known = set(Settings().to_env()) | {"TURNSTREAM_DATABASE_URL", "TURNSTREAM_PRICES_FILE"}
    assert {k for k in ENV if k.startswith("TURNSTREAM_")} <= known


@pytest.mark.parametrize("name", ["turnstream", "turnstream-headless"])
def test_services_select_the_pods_and_name_the_grpc_port(name: str) -> None:
    service = OBJECTS["Service", name]
    assert selects(service["spec"]["selector"], POD_LABELS)
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    grpc: dict[str, Any] = ports["grpc"]
    # Istio and Linkerd treat the port as gRPC (HTTP/2) by its name prefix / appProtocol.
    assert grpc["appProtocol"] == "grpc"
    assert grpc["targetPort"] in ("grpc", PORTS["grpc"])
    assert grpc["port"] == PORTS["grpc"]
    if "http" in ports:
        assert ports["http"]["targetPort"] in ("http", PORTS["http"])


def test_headless_service_gives_clients_every_pod() -> None:
    assert OBJECTS["Service", "turnstream-headless"]["spec"]["clusterIP"] == "None"


def test_pdb_and_hpa_point_at_the_deployment() -> None:
    pdb = OBJECTS["PodDisruptionBudget", "turnstream"]
    assert selects(pdb["spec"]["selector"]["matchLabels"], POD_LABELS)
    assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable")
    assert DEPLOYMENT["spec"]["selector"]["matchLabels"] == pdb["spec"]["selector"]["matchLabels"]

    hpa = OBJECTS["HorizontalPodAutoscaler", "turnstream"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        DEPLOYMENT["apiVersion"],
        "Deployment",
        DEPLOYMENT["metadata"]["name"],
    )
    metrics = hpa["spec"]["metrics"]
    assert [m["resource"]["name"] for m in metrics if m["type"] == "Resource"] == ["cpu"]
    # Utilization is a share of the request: without a CPU request the HPA cannot scale.
    assert SERVER["resources"]["requests"]["cpu"]
    # A PDB of maxUnavailable 1 needs at least two pods to let anything drain.
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_the_pod_and_job_use_the_service_account() -> None:
    account = OBJECTS["ServiceAccount", "turnstream"]["metadata"]["name"]
    assert POD["serviceAccountName"] == account
    job_pod = OBJECTS["Job", "turnstream-migrate"]["spec"]["template"]["spec"]
    assert job_pod["serviceAccountName"] == account


async def test_the_probes_answer_on_a_real_server(sqlite_url: str) -> None:
    """The probes as the kubelet sends them, to a real server: gRPC health of the readiness
    probe's service, the liveness path, and the scrape path."""
    async with running_server(sqlite_url) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=SERVER["readinessProbe"]["grpc"]["service"])
            )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        path = SERVER["livenessProbe"]["httpGet"]["path"]
        metrics = DEPLOYMENT["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"]
        async with httpx.AsyncClient() as client:
            alive = await client.get(f"http://127.0.0.1:{server.http_port}{path}")
            scraped = await client.get(f"http://127.0.0.1:{server.http_port}{metrics}")
        assert alive.status_code == 200
        assert scraped.status_code == 200
        assert "grpc_server_handled_total" in scraped.text
