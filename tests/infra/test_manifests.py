"""infra/ is a tested artifact: manifests parse, versions agree with pyproject.toml, entrypoints exist."""

import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.config.loader import load_sweep

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"


def _pins() -> dict[str, str]:
    """name -> version of every `name[extras]==version` requirement in pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for group in project["optional-dependencies"].values() for r in group]
    return {m[1]: m[2] for r in reqs if (m := re.match(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?==([^;\s]+)", r))}


def _yaml(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict), path
    return doc


def _containers(pod_template: dict[str, Any]) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = pod_template["spec"]["containers"]
    return containers


@pytest.mark.parametrize("path", sorted(INFRA.rglob("*.yaml")), ids=lambda p: str(p.relative_to(INFRA)))
def test_every_manifest_parses(path: Path) -> None:
    assert list(yaml.safe_load_all(path.read_text()))


def test_ray_version_image_tag_and_pyproject_pin_agree() -> None:
    ray_pin = _pins()["ray"]
    cluster = _yaml(INFRA / "kuberay" / "raycluster.yaml")
    spec = cluster["spec"]
    assert spec["rayVersion"] == ray_pin
    templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    images = [c["image"] for t in templates for c in _containers(t)]
    assert images and all(image.rsplit(":", 1)[1] == ray_pin for image in images), images
    # `make image` tags what it builds with the same version.
    build = subprocess.run(["make", "-sn", "image"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert f":{ray_pin} " in build.stdout, build.stdout


def test_image_installs_the_pinned_torch_and_the_project_without_run_time_installs() -> None:
    dockerfile = (INFRA / "docker" / "Dockerfile").read_text()
    assert f"ARG TORCH_VERSION={_pins()['torch']}" in dockerfile
    # dependencies from pyproject.toml before the code, so a code change does not reinstall them
    deps, code = (
        dockerfile.index("pip install -r /tmp/requirements.txt"),
        dockerfile.index("COPY --chown=ray:ray orchestrator"),
    )
    assert dockerfile.index("COPY pyproject.toml") < deps < code
    offline = r"^RUN pip install --no-deps --no-build-isolation --no-index \"\.\[orchestrator\]\""
    assert re.search(offline, dockerfile, re.M)  # the code layer downloads nothing
    assert re.search(r"^COPY --chown=ray:ray sweeps ", dockerfile, re.M)  # RayJob entrypoints read them here
    assert "SPHERE_PROJECT_DIR=/home/ray/app" in dockerfile and "ENV SPHERE_GIT_COMMIT=" in dockerfile
    assert '"optional-dependencies"]["orchestrator"]' in dockerfile  # never the dev extra (moto, pytest)
    build = subprocess.run(["make", "-sn", "image"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "--build-arg SPHERE_GIT_COMMIT=" in build.stdout


def test_every_ray_container_requires_the_token_from_the_secret_the_header_creates() -> None:
    text = (INFRA / "kuberay" / "raycluster.yaml").read_text()
    spec = _yaml(INFRA / "kuberay" / "raycluster.yaml")["spec"]
    templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    envs = [c.get("env", []) for t in templates for c in _containers(t)] + [spec["autoscalerOptions"]["env"]]
    token = {"secretKeyRef": {"name": "sphere-ray-auth", "key": "auth_token"}}  # KubeRay's key name
    for env in envs:
        assert {"name": "RAY_AUTH_MODE", "value": "token"} in env, env
        assert {"name": "RAY_AUTH_TOKEN", "valueFrom": token} in env, env  # never a literal value
    assert len(envs) == 3  # head, the GPU group, the autoscaler
    assert "#   kubectl create secret generic sphere-ray-auth --from-literal=auth_token=" in text


def test_rayjob_runs_an_existing_sweep_from_the_image_on_the_cluster() -> None:
    job = _yaml(INFRA / "kuberay" / "rayjob-sweep.yaml")["spec"]
    cluster_name = _yaml(INFRA / "kuberay" / "raycluster.yaml")["metadata"]["name"]
    assert job["clusterSelector"] == {"ray.io/cluster": cluster_name}
    assert "runtimeEnvYAML" not in job  # no working_dir zip, no pip at run time: the image has the code
    assert "activeDeadlineSeconds" not in job  # it would fail the RayJob but leave the Ray job on its GPUs
    match = re.search(r"python -m orchestrator\.sweep (sweeps/\S+\.yaml)$", job["entrypoint"])
    assert match, job["entrypoint"]
    assert load_sweep(ROOT / match[1]).kind == "train"


POD_IP = {"fieldRef": {"fieldPath": "status.podIP"}}


def test_tracking_server_pins_match_authenticates_and_listens_on_loopback_by_default() -> None:
    pins = _pins()
    dockerfile = (INFRA / "mlflow" / "Dockerfile").read_text()
    assert f"'mlflow[auth]=={pins['mlflow']}'" in dockerfile and f"boto3=={pins['boto3']}" in dockerfile
    compose = _yaml(INFRA / "mlflow" / "docker-compose.yaml")["services"]
    server, database = compose["mlflow"], compose["postgres"]
    database_uri = "postgresql://mlflow@127.0.0.1:${POSTGRES_PORT:-5432}/mlflow"
    assert f"--backend-store-uri={database_uri}" in server["command"]
    assert (
        "--app-name=basic-auth" in server["command"]
    )  # a server other machines reach takes no anonymous writes
    assert not any("PASSWORD" in arg for arg in server["command"])  # not in `ps`, not in a URI
    assert server["environment"]["PGPASSWORD"].startswith("${POSTGRES_PASSWORD")
    assert server["environment"]["MLFLOW_AUTH_ADMIN_PASSWORD"].startswith("${MLFLOW_AUTH_ADMIN_PASSWORD:?")
    assert server["environment"]["MLFLOW_S3_ENDPOINT_URL"] is None  # passed through only when set
    assert any(arg.startswith("--artifacts-destination=") for arg in server["command"])
    # Each listens on one address of the host's network: loopback unless MLFLOW_BIND names another.
    assert server["network_mode"] == database["network_mode"] == "host" and "ports" not in server
    assert "--host=${MLFLOW_BIND:-127.0.0.1}" in server["command"]
    assert database["command"] == ["postgres", "-c", "listen_addresses=127.0.0.1"]
    assert "0.0.0.0" not in (INFRA / "mlflow" / "docker-compose.yaml").read_text()
    # the Kubernetes server uses the same image, so the same pins, and the same auth app
    k8s = [
        d
        for d in yaml.safe_load_all((INFRA / "kuberay" / "mlflow.yaml").read_text())
        if d["kind"] == "Deployment"
    ]
    command = k8s[0]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--app-name=basic-auth" in command and not any("PASSWORD" in arg for arg in command)
    # In the pod: the server on the pod IP, port-forward's loopback relayed to it, no wildcard address.
    server_k8s, loopback = k8s[0]["spec"]["template"]["spec"]["containers"]
    assert "--host=$(POD_IP)" in command and {"name": "POD_IP", "valueFrom": POD_IP} in server_k8s["env"]
    relay = ["socat", "TCP-LISTEN:5000,bind=127.0.0.1,fork,reuseaddr", "TCP:$(POD_IP):5000"]
    assert loopback["command"] == relay
    assert {"name": "POD_IP", "valueFrom": POD_IP} in loopback["env"] and "socat" in dockerfile
    assert "0.0.0.0" not in (INFRA / "kuberay" / "mlflow.yaml").read_text()
    assert k8s[0]["spec"]["template"]["spec"]["containers"][0]["image"].endswith(
        f"sphere-mlflow:{pins['mlflow']}"
    )


def test_local_scripts_bind_loopback_only() -> None:
    scripts = [p for p in (INFRA / "local").iterdir() if p.suffix in {".py", ".sh"}] + [ROOT / "Makefile"]
    assert len(scripts) >= 3
    for path in scripts:
        text = path.read_text()
        assert "0.0.0.0" not in text and "--host ::" not in text, path
    assert 'HOST = "127.0.0.1"' in (INFRA / "local" / "cluster_services.py").read_text()


def test_ci_entry_point_runs_the_readme_test_command() -> None:
    ci = ROOT / ".ci" / "run"
    assert ci.stat().st_mode & 0o111, "not executable"
    lines = [line for line in ci.read_text().splitlines() if line and not line.startswith("#")]
    assert lines == ["set -euo pipefail", 'cd "$(dirname "$0")/.."', "make test"]
