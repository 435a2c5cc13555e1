"""The deployment in deploy/: kustomize overlays checked against what the processor really serves.

Each overlay is rendered with ``kubectl kustomize``; the tests then check the rendered objects
against ``processor.config`` (every variable known), against a real processor started with the
rendered environment (ports and probe paths served, the persistent queue on its volume), against
each other (selectors, names, ports, volumes), and with checkov (no failed checks; each skip
carries its reason).

The rendered YAML is read here with PyYAML (the "test" extra); checkov runs from its own venv
(.venv-scan, `make setup`). Both that venv and kubectl are required: a missing one fails the test
with what to do, it never skips.
"""

from __future__ import annotations

import importlib.util
import json
import os
import posixpath
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from processor.config import KNOWN_VARIABLES, VARIABLES
from processor.disk_queue import DB_NAME

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
OVERLAYS = ("single", "scaled")
CHECKOV = REPO / ".venv-scan" / "bin" / "checkov"
DEFAULTS = {v.name: v.default for v in VARIABLES}
# Container port name -> the variable holding that listener's address.
PORT_VARIABLES = {
    "otlp-grpc": "TRIAGE_GRPC_ENDPOINT",
    "otlp-http": "TRIAGE_HTTP_ENDPOINT",
    "admin": "TRIAGE_ADMIN_ENDPOINT",
}
WORKLOADS = ("Deployment", "StatefulSet")
START_TIMEOUT_S = 20.0
CHECKOV_TIMEOUT_S = 60.0
# Test-only packages that must stay out of the image (pyproject's "test" extra and what it pulls in).
TEST_ONLY = ("pytest", "opentelemetry-exporter-otlp", "pyyaml")
# The persistent queue's payload bound may use this share of its volume at most: the rest is for the
# filesystem (journal, blocks reserved for root) and SQLite (WAL file, page and index overhead).
QUEUE_VOLUME_SHARE = 0.75


# --- rendering ----------------------------------------------------------------------------------------------

def _need(path: Path, what: str) -> None:
    if not path.exists():
        pytest.fail(f"{path} is missing ({what}): run `make setup` to build the scan venv")


def _kubectl() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not on PATH: it renders the kustomize overlays (`kubectl kustomize`)")
    return kubectl


def load_yaml(text: str) -> list[dict[str, Any]]:
    """Every (non-empty) document in ``text``."""
    return [d for d in yaml.safe_load_all(text) if d]


def kustomize(directory: Path) -> str:
    result = subprocess.run(
        [_kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return result.stdout


@dataclass
class Rendered:
    """One overlay's rendered objects, with the look-ups the tests share."""

    overlay: str
    objects: list[dict[str, Any]]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.all(kind)
        assert len(found) == 1, f"{self.overlay}: expected one {kind}, found {len(found)}"
        return found[0]

    def named(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.all(kind) if o["metadata"]["name"] == name]
        assert found, f"{self.overlay}: no {kind} named {name!r}"
        return found[0]

    @property
    def workload(self) -> dict[str, Any]:
        """The Deployment (single) or StatefulSet (scaled) that runs the processor."""
        found = [o for o in self.objects if o["kind"] in WORKLOADS]
        assert len(found) == 1, f"{self.overlay}: expected one of {WORKLOADS}, found {len(found)}"
        return found[0]

    @property
    def pod(self) -> dict[str, Any]:
        return self.workload["spec"]["template"]

    @property
    def container(self) -> dict[str, Any]:
        containers = self.pod["spec"]["containers"]
        assert len(containers) == 1, "expected one container"
        return containers[0]

    def env(self) -> dict[str, str]:
        """The container's environment as Kubernetes builds it: envFrom ConfigMaps, then env."""
        env: dict[str, str] = {}
        for source in self.container.get("envFrom", []):
            assert set(source) == {"configMapRef"}, f"unexpected envFrom source {source}"
            env.update(self.named("ConfigMap", source["configMapRef"]["name"]).get("data", {}))
        for item in self.container.get("env", []):
            assert "value" in item, f"{item['name']}: only literal values are expected"
            env[item["name"]] = item["value"]
        return env

    def container_ports(self) -> dict[str, int]:
        return {p["name"]: p["containerPort"] for p in self.container["ports"]}

    def port_number(self, port: int | str) -> int:
        """A probe's or Service's port (a number, or a container port's name) as a number."""
        if isinstance(port, int):
            return port
        ports = self.container_ports()
        assert port in ports, f"{self.overlay}: no container port named {port!r}"
        return ports[port]

    def pod_labels(self) -> dict[str, str]:
        return self.pod["metadata"]["labels"]

    def volumes(self) -> dict[str, dict[str, Any]]:
        """The pod's volumes by name, with the StatefulSet's claim templates as claims of their own."""
        volumes = {v["name"]: v for v in self.pod["spec"].get("volumes", [])}
        for template in self.workload["spec"].get("volumeClaimTemplates", []):
            name = template["metadata"]["name"]
            assert name not in volumes, f"{self.overlay}: {name!r} is a pod volume and a claim template"
            volumes[name] = {"name": name, "volumeClaimTemplate": template}
        return volumes

    def claim_spec(self, volume: dict[str, Any]) -> dict[str, Any]:
        """The PersistentVolumeClaim spec behind a claim volume (a PVC object or a claim template)."""
        if "volumeClaimTemplate" in volume:
            return volume["volumeClaimTemplate"]["spec"]
        return self.named("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])["spec"]

    def queue_mount(self) -> dict[str, Any]:
        """The volume mount that holds TRIAGE_QUEUE_DIR (the deepest one containing it)."""
        queue_dir = self.env().get("TRIAGE_QUEUE_DIR", DEFAULTS["TRIAGE_QUEUE_DIR"])
        assert queue_dir.startswith("/"), f"{self.overlay}: TRIAGE_QUEUE_DIR={queue_dir!r} is not absolute"
        mounts = [m for m in self.container.get("volumeMounts", []) if is_under(queue_dir, m["mountPath"])]
        assert mounts, f"{self.overlay}: TRIAGE_QUEUE_DIR={queue_dir} is on no volume (the root is read-only)"
        return max(mounts, key=lambda m: len(m["mountPath"]))


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> Rendered:
    return Rendered(request.param, load_yaml(kustomize(DEPLOY / "overlays" / request.param)))


def address_port(env: dict[str, str], name: str) -> int:
    """The port of a TRIAGE_*_ENDPOINT as the processor reads it (the default when unset)."""
    value = env.get(name, DEFAULTS[name])
    return int(value.rpartition(":")[2])


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def is_under(path: str, directory: str) -> bool:
    """``path`` is ``directory`` or inside it (POSIX paths, ``..`` resolved)."""
    path, directory = posixpath.normpath(path), posixpath.normpath(directory)
    return path == directory or path.startswith(directory.rstrip("/") + "/")


QUANTITY_UNITS = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}


def quantity_bytes(quantity: str) -> int:
    """A Kubernetes storage quantity (e.g. ``2Gi``) in bytes."""
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(quantity))
    assert match, f"unexpected quantity {quantity!r}"
    return int(match[1]) * QUANTITY_UNITS[match[2] or ""]


# --- the overlays render, and their objects fit together ----------------------------------------------------

class TestRender:
    def test_overlay_has_the_expected_objects(self, rendered: Rendered) -> None:
        """Each overlay renders the full set of objects: `single` a Deployment and its queue's claim,
        `scaled` a StatefulSet (a claim per replica, from its template) and an autoscaler."""
        kinds = sorted(o["kind"] for o in rendered.objects)
        expected = [
            "ConfigMap", "ConfigMap", "Namespace", "NetworkPolicy", "PodDisruptionBudget",
            "Service", "Service", "ServiceAccount",
        ]
        if rendered.overlay == "single":
            expected += ["Deployment", "PersistentVolumeClaim"]
        else:
            expected += ["StatefulSet", "HorizontalPodAutoscaler"]
        assert kinds == sorted(expected)

    def test_every_object_is_in_the_namespace(self, rendered: Rendered) -> None:
        """Every namespaced object lands in the Namespace the overlay creates."""
        namespace = rendered.one("Namespace")["metadata"]["name"]
        for obj in rendered.objects:
            if obj["kind"] != "Namespace":
                where = f"{obj['kind']} {obj['metadata']['name']}"
                assert obj["metadata"].get("namespace") == namespace, where

    def test_configmaps_are_generated_with_a_content_hash(self, rendered: Rendered) -> None:
        """The workload refers to the hashed ConfigMap names, so a changed setting rolls the pods out."""
        names = {c["metadata"]["name"] for c in rendered.all("ConfigMap")}
        referenced = {s["configMapRef"]["name"] for s in rendered.container.get("envFrom", [])}
        referenced |= {v["configMap"]["name"] for v in rendered.pod["spec"]["volumes"] if "configMap" in v}
        assert referenced == names
        for name in names:
            assert re.fullmatch(r"otlp-triage-[a-z]+-[a-z0-9]{10}", name), f"{name}: no generator hash suffix"

    def test_changed_setting_changes_the_configmap_name(self, rendered: Rendered, tmp_path: Path) -> None:
        """An overlay on top that changes one value gets a new ConfigMap name in the workload."""
        overlay = tmp_path / "changed"
        overlay.mkdir()
        base = os.path.relpath(DEPLOY / "overlays" / rendered.overlay, overlay)
        (overlay / "kustomization.yaml").write_text(
            f"resources: [{base}]\n"
            "configMapGenerator:\n"
            "  - name: otlp-triage-env\n"
            "    behavior: merge\n"
            "    literals: [TRIAGE_MODE=shadow]\n"
        )
        changed = Rendered("changed", load_yaml(kustomize(overlay)))
        before = {s["configMapRef"]["name"] for s in rendered.container["envFrom"]}
        after = {s["configMapRef"]["name"] for s in changed.container["envFrom"]}
        assert before.isdisjoint(after)
        assert changed.env()["TRIAGE_MODE"] == "shadow"

    def test_selectors_pick_the_pods(self, rendered: Rendered) -> None:
        """The workload, both Services, the PDB and the NetworkPolicy all select the processor's pods."""
        labels = rendered.pod_labels()
        assert selects(rendered.workload["spec"]["selector"]["matchLabels"], labels)
        for service in rendered.all("Service"):
            assert selects(service["spec"]["selector"], labels), service["metadata"]["name"]
        assert selects(rendered.one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"], labels)
        assert selects(rendered.one("NetworkPolicy")["spec"]["podSelector"]["matchLabels"], labels)

    def test_service_account_exists_without_token(self, rendered: Rendered) -> None:
        """The pod runs as its own ServiceAccount and mounts no API token."""
        spec = rendered.pod["spec"]
        account = rendered.named("ServiceAccount", spec["serviceAccountName"])
        assert account["automountServiceAccountToken"] is False
        assert spec["automountServiceAccountToken"] is False

    def test_one_headless_service_for_trace_routing(self, rendered: Rendered) -> None:
        """One Service is headless (pod IPs in DNS, ready pods only), one has a cluster IP."""
        headless = [s for s in rendered.all("Service") if s["spec"].get("clusterIP") == "None"]
        assert len(headless) == 1
        assert not headless[0]["spec"].get("publishNotReadyAddresses", False)

    def test_replicas_and_autoscaling(self, rendered: Rendered) -> None:
        """`single` runs one replica; in `scaled` the HPA owns the StatefulSet's count (no spec.replicas
        to reset it)."""
        spec = rendered.workload["spec"]
        if rendered.overlay == "single":
            assert spec["replicas"] == 1
            return
        assert "replicas" not in spec
        hpa = rendered.one("HorizontalPodAutoscaler")["spec"]
        assert hpa["scaleTargetRef"] == {
            "apiVersion": "apps/v1", "kind": "StatefulSet", "name": rendered.workload["metadata"]["name"],
        }
        assert 2 <= hpa["minReplicas"] <= hpa["maxReplicas"]

    def test_disruption_budget_allows_drains(self, rendered: Rendered) -> None:
        """A node drain can always evict a pod (one at a time): the budget never blocks it."""
        spec = rendered.one("PodDisruptionBudget")["spec"]
        assert spec.get("maxUnavailable") == 1
        assert "minAvailable" not in spec


# --- every variable, port and probe is one the processor knows ----------------------------------------------

class TestAgainstTheProcessor:
    def test_every_variable_is_known(self, rendered: Rendered) -> None:
        """Every environment variable in the manifests is declared in processor.config."""
        unknown = set(rendered.env()) - KNOWN_VARIABLES
        assert not unknown, f"{rendered.overlay}: variables the processor does not know: {sorted(unknown)}"

    def test_every_configmap_key_reaches_the_processor(self, rendered: Rendered) -> None:
        """Env ConfigMap keys are valid variable names (kubelet would silently skip others)."""
        for source in rendered.container["envFrom"]:
            data = rendered.named("ConfigMap", source["configMapRef"]["name"]).get("data", {})
            assert all(re.fullmatch(r"[A-Z_][A-Z0-9_]*", key) for key in data), sorted(data)

    def test_container_ports_are_the_listen_addresses(self, rendered: Rendered) -> None:
        """Each container port is the port of its TRIAGE_*_ENDPOINT (set or default), and nothing else."""
        env = rendered.env()
        listening = {name: var for name, var in PORT_VARIABLES.items() if env.get(var, DEFAULTS[var])}
        expected = {name: address_port(env, var) for name, var in listening.items()}
        assert rendered.container_ports() == expected

    def test_services_expose_the_otlp_ports(self, rendered: Rendered) -> None:
        """Both Services expose OTLP gRPC and HTTP on the container's ports (OTLP's 4317 and 4318)."""
        ports = rendered.container_ports()
        for service in rendered.all("Service"):
            exposed = {}
            for port in service["spec"]["ports"]:
                exposed[port["name"]] = (port["port"], rendered.port_number(port["targetPort"]))
            assert exposed == {
                "otlp-grpc": (ports["otlp-grpc"], ports["otlp-grpc"]),
                "otlp-http": (ports["otlp-http"], ports["otlp-http"]),
            }, service["metadata"]["name"]

    def test_probes_and_scraping_use_the_admin_port(self, rendered: Rendered) -> None:
        """Liveness is /healthz, readiness /readyz, scraping /metrics: all on the admin port."""
        admin = rendered.container_ports()["admin"]
        container = rendered.container
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        for probe in ("livenessProbe", "readinessProbe"):
            assert rendered.port_number(container[probe]["httpGet"]["port"]) == admin
        annotations = rendered.pod["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == admin
        assert annotations["prometheus.io/path"] == "/metrics"

    def test_network_policy_admits_collectors_and_prometheus(self, rendered: Rendered) -> None:
        """OTLP ports only from Collector agent pods; the admin port only from Prometheus."""
        ports = rendered.container_ports()
        spec = rendered.one("NetworkPolicy")["spec"]
        assert spec["policyTypes"] == ["Ingress"]
        rules = {}
        for rule in spec["ingress"]:
            (peer,) = rule["from"]
            key = tuple(sorted(peer["podSelector"]["matchLabels"].items()))
            rules[key] = {rendered.port_number(p["port"]) for p in rule["ports"]}
        assert rules == {
            (("app.kubernetes.io/component", "otel-collector-agent"),): {
                ports["otlp-grpc"], ports["otlp-http"],
            },
            (("app.kubernetes.io/name", "prometheus"),): {ports["admin"]},
        }

    def test_grace_period_covers_the_drain(self, rendered: Rendered) -> None:
        """terminationGracePeriodSeconds >= preStop sleep + receivers' stop + drain timeout + a margin."""
        env = rendered.env()
        drain = float(env.get("TRIAGE_SHUTDOWN_TIMEOUT", DEFAULTS["TRIAGE_SHUTDOWN_TIMEOUT"]))
        receivers_stop = min(5.0, drain / 4)  # processor/service.py: Service.shutdown
        command = rendered.container["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        assert len(command) == 2
        pre_stop = float(command[1])
        grace = rendered.pod["spec"]["terminationGracePeriodSeconds"]
        assert grace >= pre_stop + receivers_stop + drain + 5

    def test_processor_serves_what_the_manifests_declare(self, rendered: Rendered, tmp_path: Path) -> None:
        """The processor, started with the rendered environment, serves every declared port and path."""
        env, local = local_environment(rendered, tmp_path)

        def here(port: int | str) -> int:
            number = rendered.port_number(port)
            assert number in local, f"port {number} is declared; the processor listens on {sorted(local)}"
            return local[number]

        ports = rendered.container_ports()
        with serving(env, tmp_path) as process:
            for probe in ("livenessProbe", "readinessProbe"):
                get = rendered.container[probe]["httpGet"]
                status, _ = http_get(here(get["port"]), get["path"])
                assert status == 200, f"{probe} {get['path']}: {status}"
            annotations = rendered.pod["metadata"]["annotations"]
            scrape = here(int(annotations["prometheus.io/port"]))
            status, metrics = http_get(scrape, annotations["prometheus.io/path"])
            assert status == 200
            assert "# TYPE triage_" in metrics
            # Every metric the deployment guide tells users to watch exists.
            for name in set(re.findall(r"\btriage_[a-z_]+\b", (DEPLOY / "README.md").read_text())):
                assert f"# TYPE {name} " in metrics, f"deploy/README.md names {name}: not in /metrics"
            # Both OTLP ports answer an (empty) export.
            assert http_post(here(ports["otlp-http"]), "/v1/logs") == 200
            grpc_export(here(ports["otlp-grpc"]))
            # SIGTERM: drains (nothing queued) and exits 0 within the grace period.
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=rendered.pod["spec"]["terminationGracePeriodSeconds"]) == 0
        assert not logged_errors(tmp_path)


def local_environment(rendered: Rendered, tmp_path: Path) -> tuple[dict[str, str], dict[int, int]]:
    """The rendered environment made runnable here: listeners on 127.0.0.1 and free ports, each volume
    mount a directory under ``tmp_path`` (ConfigMaps written into it, the queue's claim and the
    emptyDir empty) and every variable naming a path in a mount rewritten into that directory;
    returns (env, container port -> local port)."""
    env = rendered.env()
    local: dict[int, int] = {}
    for var in PORT_VARIABLES.values():
        value = env.get(var, DEFAULTS[var])
        if value:
            port = free_port()
            local[int(value.rpartition(":")[2])] = port
            env[var] = f"127.0.0.1:{port}"
    volumes = rendered.volumes()
    rewritten: set[str] = set()  # tmp_path itself may be under a mount path (/tmp): rewrite once
    # Deepest mount first, so that a path goes to the mount that holds it.
    for mount in sorted(rendered.container.get("volumeMounts", []), key=lambda m: -len(m["mountPath"])):
        volume = volumes[mount["name"]]
        directory = tmp_path / "mounts" / mount["mountPath"].lstrip("/")
        directory.mkdir(parents=True)
        if "configMap" in volume:
            data = rendered.named("ConfigMap", volume["configMap"]["name"]).get("data", {})
            for key, value in data.items():
                (directory / key).write_text(value)
        for name, value in list(env.items()):
            if name not in rewritten and value.startswith("/") and is_under(value, mount["mountPath"]):
                env[name] = str(directory / posixpath.relpath(posixpath.normpath(value), mount["mountPath"]))
                rewritten.add(name)
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"):
        if env.get(name):
            # A backend in the cluster is not reachable here; nothing is exported in this test anyway.
            env[name] = f"http://127.0.0.1:{free_port()}"
    return env, local


@contextmanager
def serving(env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m processor serve`` with exactly ``env`` (plus what the image sets), once ready."""
    env = {**env, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    admin = int(env["TRIAGE_ADMIN_ENDPOINT"].rpartition(":")[2])
    stderr = tmp_path / "stderr.log"
    with open(tmp_path / "stdout.log", "wb") as out, open(stderr, "wb") as err:
        command = [sys.executable, "-m", "processor", "serve"]
        process = subprocess.Popen(command, env=env, stdout=out, stderr=err)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while http_get(admin, "/readyz")[0] != 200:
            if process.poll() is not None:
                raise AssertionError(f"the processor exited with {process.returncode}:\n{stderr.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"not ready after {START_TIMEOUT_S:.0f}s:\n{stderr.read_text()}")
            time.sleep(0.05)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def logged_errors(tmp_path: Path) -> list[str]:
    """The lines of a process's stderr (from ``serving``) logged at ERROR or CRITICAL, or a traceback."""
    lines = (tmp_path / "stderr.log").read_text().splitlines()
    return [line for line in lines if re.search(r"\b(ERROR|CRITICAL)\b|^Traceback", line)]


def wait_for(condition: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, path: str) -> tuple[int, str]:
    """(status, body); status 0 when nothing answers yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError:
        return 0, ""


def grpc_export(port: int) -> None:
    """An empty OTLP/gRPC logs export; raises unless the answer is OK."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        export = channel.unary_unary(
            "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
            request_serializer=ExportLogsServiceRequest.SerializeToString,
            response_deserializer=ExportLogsServiceResponse.FromString,
        )
        export(ExportLogsServiceRequest(), timeout=5)


def http_post(port: int, path: str, body: bytes = b"") -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, headers={"Content-Type": "application/x-protobuf"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status


# --- the persistent queue: on a claim of its own per pod ---------------------------------------------------

class TestPersistentQueue:
    def test_queue_dir_is_on_a_writable_claim(self, rendered: Rendered) -> None:
        """TRIAGE_QUEUE_DIR is set, on a writable mount of a PersistentVolumeClaim: not on the read-only
        root, not in /tmp's emptyDir (gone with the pod), not in a ConfigMap."""
        assert rendered.container["securityContext"]["readOnlyRootFilesystem"] is True
        mount = rendered.queue_mount()
        assert mount.get("readOnly", False) is False, mount["name"]
        assert "subPath" not in mount, "the queue's lock and database go in the claim's own directory"
        volume = rendered.volumes()[mount["name"]]
        assert {"persistentVolumeClaim", "volumeClaimTemplate"} & set(volume), f"{mount['name']}: {volume}"

    def test_the_user_can_write_the_claim(self, rendered: Rendered) -> None:
        """fsGroup is the container's group: the kubelet makes the claim's filesystem writable by it."""
        pod = rendered.pod["spec"]["securityContext"]
        group = rendered.container["securityContext"].get("runAsGroup", pod.get("runAsGroup"))
        assert group is not None
        assert pod["fsGroup"] == group

    def test_each_pod_has_a_queue_of_its_own(self, rendered: Rendered) -> None:
        """One pod per claim. `single`: one replica and its PersistentVolumeClaim, replaced with Recreate
        (the old pod releases the volume and the queue's lock before the new one starts). `scaled`: a
        StatefulSet with a claim template (a claim per ordinal, kept when the HPA scales down),
        governed by the headless Service the Collector agents resolve."""
        workload = rendered.workload
        spec = workload["spec"]
        volume = rendered.volumes()[rendered.queue_mount()["name"]]
        if rendered.overlay == "single":
            assert workload["kind"] == "Deployment"
            assert spec["replicas"] == 1
            assert spec["strategy"] == {"type": "Recreate"}
            assert "persistentVolumeClaim" in volume
            return
        assert workload["kind"] == "StatefulSet"
        assert "volumeClaimTemplate" in volume
        assert not rendered.all("PersistentVolumeClaim"), "replicas cannot share one ReadWriteOnce claim"
        (headless,) = [s for s in rendered.all("Service") if s["spec"].get("clusterIP") == "None"]
        assert spec["serviceName"] == headless["metadata"]["name"]
        retention = spec.get("persistentVolumeClaimRetentionPolicy", {})
        assert retention.get("whenScaled", "Retain") == "Retain", "a scaled-away replica's queue is deleted"

    def test_claim_holds_the_queue_bound(self, rendered: Rendered) -> None:
        """The claim is ReadWriteOnce (one node's filesystem, as SQLite's WAL and the lock need), and
        TRIAGE_QUEUE_MAX_BYTES is at most QUEUE_VOLUME_SHARE of it: the queue pushes back before the
        filesystem is full."""
        claim = rendered.claim_spec(rendered.volumes()[rendered.queue_mount()["name"]])
        assert claim["accessModes"] in (["ReadWriteOnce"], ["ReadWriteOncePod"])
        size = quantity_bytes(claim["resources"]["requests"]["storage"])
        bound = int(rendered.env().get("TRIAGE_QUEUE_MAX_BYTES", DEFAULTS["TRIAGE_QUEUE_MAX_BYTES"]))
        assert bound <= QUEUE_VOLUME_SHARE * size, f"TRIAGE_QUEUE_MAX_BYTES={bound} on a {size}-byte claim"

    def test_processor_queues_on_the_volume(self, rendered: Rendered, tmp_path: Path) -> None:
        """Started with the rendered environment (the queue's mount a directory here), the processor
        keeps its SQLite queue there, forwards a record through it, refuses a second process on the
        same directory (hence Recreate in `single`, a claim per pod in `scaled`), exits 0 on SIGTERM
        and logs no error."""
        env, _ = local_environment(rendered, tmp_path)
        queue_dir = Path(env["TRIAGE_QUEUE_DIR"])
        assert is_under(str(queue_dir), str(tmp_path / "mounts")), "TRIAGE_QUEUE_DIR was not moved here"
        # No backend here: forwarded requests are printed to stdout.
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = env["OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"] = ""
        with serving(env, tmp_path) as process:
            assert (queue_dir / DB_NAME).is_file(), sorted(p.name for p in queue_dir.iterdir())
            marker = f"deploy-queue-{rendered.overlay}"
            assert http_post(address_port(env, "TRIAGE_HTTP_ENDPOINT"), "/v1/logs", one_record(marker)) == 200
            wait_for(lambda: marker in (tmp_path / "stdout.log").read_text(), "the record on stdout")
            ports = {var: f"127.0.0.1:{free_port()}" for var in PORT_VARIABLES.values() if env.get(var)}
            second = {**env, **ports}
            try:
                refused = subprocess.run(
                    [sys.executable, "-m", "processor", "serve"],
                    env=second, capture_output=True, text=True, timeout=START_TIMEOUT_S,
                )
            except subprocess.TimeoutExpired:
                pytest.fail("a second processor on the same TRIAGE_QUEUE_DIR kept running")
            assert refused.returncode == 2, refused.stderr
            assert "another otlp-triage process is using it" in refused.stderr
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=rendered.pod["spec"]["terminationGracePeriodSeconds"]) == 0
        assert not logged_errors(tmp_path)


def one_record(body: str) -> bytes:
    """An OTLP logs request (protobuf) with one record whose body is ``body``."""
    record = LogRecord(time_unix_nano=time.time_ns(), severity_number=9, severity_text="INFO")
    record.body.string_value = body
    logs = ResourceLogs(scope_logs=[ScopeLogs(log_records=[record])])
    return ExportLogsServiceRequest(resource_logs=[logs]).SerializeToString()


# --- hardening: security context, resources, the image -----------------------------------------------------

class TestHardening:
    def test_pod_and_container_security_context(self, rendered: Rendered) -> None:
        """Non-root with a high UID, read-only root, no privilege escalation, no capabilities, seccomp."""
        pod = rendered.pod["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
        context = rendered.container["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] >= 10000
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context.get("privileged", False) is False
        assert context["capabilities"] == {"drop": ["ALL"]}

    def test_resources_leave_room_for_the_queue(self, rendered: Rendered) -> None:
        """Requests and limits are set; the memory limit is at least twice the queue bound."""
        resources = rendered.container["resources"]
        for kind in ("requests", "limits"):
            assert set(resources[kind]) == {"cpu", "memory"}, kind
        limit = resources["limits"]["memory"]
        assert limit.endswith("Mi"), f"expected a limit in Mi, got {limit}"
        queue_mib = int(rendered.env().get("TRIAGE_MEMORY_LIMIT_MIB", DEFAULTS["TRIAGE_MEMORY_LIMIT_MIB"]))
        assert int(limit[:-2]) >= 2 * queue_mib

    def test_only_tmp_and_the_queue_are_writable(self, rendered: Rendered) -> None:
        """With the root filesystem read-only, the writable mounts are /tmp (an emptyDir) and the
        persistent queue's claim; the ConfigMap mount is read-only."""
        volumes = rendered.volumes()
        queue = rendered.queue_mount()
        for mount in rendered.container["volumeMounts"]:
            volume = volumes[mount["name"]]
            if "configMap" in volume:
                assert mount["readOnly"] is True, mount["name"]
            elif "emptyDir" in volume:
                assert mount["mountPath"] == "/tmp"
            else:
                assert mount == queue, f"{mount['name']}: a writable volume that is not the queue's"

    def test_image_matches_the_pod(self, rendered: Rendered) -> None:
        """The Dockerfile's user, exposed ports and command agree with the Deployment."""
        dockerfile = (DEPLOY / "Dockerfile").read_text()
        user = re.findall(r"^USER\s+(\d+)(?::(\d+))?\s*$", dockerfile, re.M)
        assert user, "the runtime stage must name a numeric USER"
        uid, gid = user[-1]
        assert int(uid) == rendered.container["securityContext"]["runAsUser"]
        assert int(gid or uid) == rendered.container["securityContext"]["runAsGroup"]
        (exposed,) = re.findall(r"^EXPOSE\s+(.+)$", dockerfile, re.M)
        assert sorted(int(p) for p in exposed.split()) == sorted(rendered.container_ports().values())
        assert re.search(r'^ENTRYPOINT \["otlp-triage"\]$', dockerfile, re.M)
        assert rendered.container["args"] == ["serve"]
        assert "command" not in rendered.container


class TestLock:
    def test_lock_pins_exactly_the_runtime_dependencies(self) -> None:
        """deploy/requirements.lock pins (==) every runtime dependency and nothing test-only."""
        pins = read_lock()
        spec = importlib.util.spec_from_file_location("deploy_lock", DEPLOY / "lock.py")
        assert spec is not None
        assert spec.loader is not None
        lock = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(lock)
        regenerate = "regenerate it: .venv/bin/python deploy/lock.py > deploy/requirements.lock"
        assert set(pins) == lock.runtime_closure(), regenerate
        assert not [name for name in pins if name.startswith(TEST_ONLY)]

    def test_lock_satisfies_the_project(self) -> None:
        """Every pinned version is within the range pyproject.toml declares."""
        pins = read_lock()
        project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
        for line in project["dependencies"]:
            requirement = Requirement(line)
            name = canonicalize_name(requirement.name)
            assert name in pins, f"{name} is not pinned"
            pinned = pins[name]
            assert requirement.specifier.contains(pinned, prereleases=True), f"{name}=={pinned} vs {line}"


def read_lock() -> dict[str, str]:
    pins = {}
    for line in (DEPLOY / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep, f"not an exact pin: {line}"
            assert version, f"not an exact pin: {line}"
            pins[canonicalize_name(name)] = version
    return pins


# --- the Collector examples point at the Services -----------------------------------------------------------

class TestCollectorExamples:
    def test_agent_routes_by_trace_id_to_the_headless_service(self, rendered: Rendered) -> None:
        """agent.yaml: loadbalancing by traceID, resolving the headless Service on its gRPC port."""
        (config,) = load_yaml((DEPLOY / "collector" / "agent.yaml").read_text())
        exporter = config["exporters"]["loadbalancing"]
        assert exporter["routing_key"] == "traceID"
        (headless,) = [s for s in rendered.all("Service") if s["spec"].get("clusterIP") == "None"]
        dns = exporter["resolver"]["dns"]
        assert dns["hostname"] == service_host(headless)
        assert dns["port"] == grpc_port(headless)
        assert config["service"]["pipelines"]["logs"]["exporters"] == ["loadbalancing"]

    def test_single_sends_to_the_service(self, rendered: Rendered) -> None:
        """single.yaml: a plain OTLP exporter to the cluster-IP Service's gRPC port."""
        (config,) = load_yaml((DEPLOY / "collector" / "single.yaml").read_text())
        (service,) = [s for s in rendered.all("Service") if s["spec"].get("clusterIP") != "None"]
        (name,) = config["service"]["pipelines"]["logs"]["exporters"]
        assert name.split("/")[0] == "otlp"
        assert config["exporters"][name]["endpoint"] == f"{service_host(service)}:{grpc_port(service)}"

    def test_gateway_receives_otlp_logs(self) -> None:
        """gateway.yaml: a logs pipeline from the OTLP receiver, as otlp-triage's backend."""
        (config,) = load_yaml((DEPLOY / "collector" / "gateway.yaml").read_text())
        pipeline = config["service"]["pipelines"]["logs"]
        assert pipeline["receivers"] == ["otlp"]
        assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")


def service_host(service: dict[str, Any]) -> str:
    return f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"


def grpc_port(service: dict[str, Any]) -> int:
    (port,) = [p["port"] for p in service["spec"]["ports"] if p["name"] == "otlp-grpc"]
    return port


# --- checkov ------------------------------------------------------------------------------------------------

def checkov(*args: str) -> dict[str, Any]:
    """Run checkov offline and return its JSON report (one framework)."""
    _need(CHECKOV, "the manifest and Dockerfile scanner")
    # BC_SKIP_MAPPING: do not fetch the guideline mappings from the Prisma Cloud API (the only
    # network call checkov makes without an API key); --skip-download for anything else.
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "LOG_LEVEL": "WARNING"}
    try:
        result = subprocess.run(
            [str(CHECKOV), *args, "--compact", "--skip-download", "--output", "json"],
            capture_output=True, text=True, env=env, timeout=CHECKOV_TIMEOUT_S, cwd=REPO,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"checkov took more than {CHECKOV_TIMEOUT_S:.0f}s (is it trying to reach the network?)")
    assert result.returncode in (0, 1), f"checkov failed to run:\n{result.stderr[-3000:]}"
    report = json.loads(result.stdout)
    assert isinstance(report, dict), "expected one framework's report"
    return report


def assert_clean(report: dict[str, Any]) -> None:
    summary = report["summary"]
    failed = [
        f"{c['check_id']} {c['check_name']} ({c['resource']})" for c in report["results"]["failed_checks"]
    ]
    assert not failed, "checkov failed checks:\n" + "\n".join(failed)
    assert summary["parsing_errors"] == 0
    assert summary["passed"] > 0
    assert summary["resource_count"] > 0
    for check in report["results"].get("skipped_checks", []):
        reason = check["check_result"].get("suppress_comment", "")
        assert len(reason) > 20, f"{check['check_id']} is skipped without a reason"


class TestCheckov:
    def test_manifests(self, tmp_path: Path) -> None:
        """Every overlay's rendered manifests pass checkov's Kubernetes checks (skips give reasons)."""
        for overlay in OVERLAYS:
            (tmp_path / f"{overlay}.yaml").write_text(kustomize(DEPLOY / "overlays" / overlay))
        assert_clean(checkov("--directory", str(tmp_path), "--framework", "kubernetes"))

    def test_dockerfile(self) -> None:
        """deploy/Dockerfile passes checkov's Dockerfile checks (skips give reasons)."""
        assert_clean(checkov("--file", str(DEPLOY / "Dockerfile"), "--framework", "dockerfile"))
