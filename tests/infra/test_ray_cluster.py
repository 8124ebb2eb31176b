"""The cluster-launcher configs of infra/ray-cluster/ against Ray's own cluster-config schema
(ray-schema.json, the check `ray up` runs before it launches anything, after the same preparation), and
against the project's pins and defaults: aws-gpu.yaml with its IAM policies, onprem.yaml and the loopback
config derived from it."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_DIR = ROOT / "infra" / "ray-cluster"
CONFIG = CLUSTER_DIR / "aws-gpu.yaml"
ONPREM = CLUSTER_DIR / "onprem.yaml"


def _validate_as_ray_up_does(config: dict[str, Any]) -> dict[str, Any]:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(config)  # raises on any unknown or mistyped field
    prepared = prepare_config(config)  # what `ray up` validates (for on-premise: the node type it adds)
    validate_config(prepared)
    return prepared


def _ray_pin() -> str:
    pin = re.search(r'"ray\[[^]]*\]==([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pin
    return pin[1]


def _loopback() -> ModuleType:
    spec = importlib.util.spec_from_file_location("loopback", CLUSTER_DIR / "loopback.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["loopback"] = module
    spec.loader.exec_module(module)
    return module


def test_the_launcher_config_passes_rays_schema() -> None:
    _validate_as_ray_up_does(yaml.safe_load(CONFIG.read_text()))


def test_the_launcher_config_runs_the_projects_image_on_gpus_behind_loopback() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    assert config["docker"]["image"].endswith(f"/sphere-orchestrator:{_ray_pin()}")
    workers = {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}
    assert all(t["resources"]["GPU"] > 0 and t["min_workers"] == 0 for t in workers.values())  # autoscaled
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in CONFIG.read_text()
    assert not config["setup_commands"]  # the image carries the code and its pinned dependencies
    assert "AWS_SECRET_ACCESS_KEY" not in CONFIG.read_text()  # nodes take an instance profile's credentials
    # GPUs reach the container without the NVIDIA runtime being docker's default; the CPU head gets none.
    assert "--gpus all" in config["docker"]["worker_run_options"]
    assert not any("--gpus" in opt for opt in config["docker"]["run_options"])


def test_the_head_may_launch_gpu_nodes_and_every_node_pulls_the_image() -> None:
    """With its own instance profile the head gets none of Ray's default rights: its policy must let it run,
    tag and terminate instances and pass the workers' role, and every node must log in to the registry."""
    config = yaml.safe_load(CONFIG.read_text())
    region = config["provider"]["region"]
    types = config["available_node_types"]
    head_arn = types[config["head_node_type"]]["node_config"]["IamInstanceProfile"]["Arn"]
    worker_arns = {
        t["node_config"]["IamInstanceProfile"]["Arn"]
        for n, t in types.items()
        if n != config["head_node_type"]
    }
    assert head_arn not in worker_arns  # the workers get no right to launch instances
    (worker_arn,) = worker_arns
    worker_role = worker_arn.replace(
        ":instance-profile/", ":role/"
    )  # each profile holds the role of its name

    head_policy = json.loads((CLUSTER_DIR / "aws-head-policy.json").read_text())
    worker_policy = json.loads((CLUSTER_DIR / "aws-worker-policy.json").read_text())

    def allowed(policy: dict[str, Any], action: str) -> list[dict[str, Any]]:
        return [
            s
            for s in policy["Statement"]
            if s["Effect"] == "Allow"
            and action in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
        ]

    for action in ("ec2:RunInstances", "ec2:TerminateInstances", "ec2:DescribeInstances", "ec2:CreateTags"):
        (statement,) = allowed(head_policy, action)
        assert statement["Condition"]["StringEquals"]["aws:RequestedRegion"] == region
        assert not allowed(worker_policy, action)
    (pass_role,) = allowed(head_policy, "iam:PassRole")
    assert pass_role["Resource"] == worker_role

    registry, repository = config["docker"]["image"].rsplit(":", 1)[0].split("/", 1)
    assert registry.endswith(f".dkr.ecr.{region}.amazonaws.com")
    login = " ".join(config["initialization_commands"])
    assert f"aws ecr get-login-password --region {region} | docker login" in login and registry in login
    for policy in (head_policy, worker_policy):
        assert allowed(policy, "ecr:GetAuthorizationToken")
        (pull,) = allowed(policy, "ecr:BatchGetImage")
        assert (
            pull["Resource"].endswith(f":repository/{repository}") and f":ecr:{region}:" in pull["Resource"]
        )
        (objects,) = allowed(policy, "s3:PutObject")
        assert objects["Resource"] == "arn:aws:s3:::YOUR-BUCKET/*"


def test_the_onprem_config_passes_rays_schema_with_credentials_only_in_an_env_file() -> None:
    text = ONPREM.read_text()
    prepared = _validate_as_ray_up_does(yaml.safe_load(text))
    assert set(prepared["available_node_types"]) == {"local.cluster.node"}  # what Ray's provider adds
    docker = prepared["docker"]
    assert docker["image"].endswith(f"/sphere-orchestrator:{_ray_pin()}")
    assert any(opt.startswith("--env-file ") for opt in docker["run_options"])
    assert not re.search(r"AWS_[A-Z_]+=|MLFLOW_TRACKING_URI=|--env ", text)  # nothing secret inline
    assert "--dashboard-host=127.0.0.1" in " ".join(prepared["head_start_ray_commands"])
    assert "0.0.0.0" not in text


def test_the_loopback_config_is_onprem_yaml_on_127_0_0_1_and_passes_rays_schema(tmp_path: Path) -> None:
    loopback = _loopback()
    cluster_env = tmp_path / "env"
    secret = "s3cr3t-never-in-the-yaml"
    cluster_env.write_text(
        f"export AWS_ACCESS_KEY_ID=k\nexport AWS_SECRET_ACCESS_KEY={secret}\n"
        "export MLFLOW_TRACKING_URI=http://127.0.0.1:5000\nexport RAY_API_SERVER_ADDRESS=http://127.0.0.1:8265\n"
    )
    s = loopback.Settings.from_env({"LOOPBACK_DIR": str(tmp_path / "lb"), "CLUSTER_DIR": str(tmp_path)})
    config = loopback.cluster_config(s)
    prepared = _validate_as_ray_up_does(config)
    assert prepared["provider"] == {**config["provider"], "type": "local"}
    assert config["provider"]["head_ip"] != config["provider"]["worker_ips"][0]
    assert secret not in yaml.safe_dump(config)
    assert f"--env-file {s.env_file}" in config["docker"]["run_options"]
    # Every Ray service of both nodes on 127.0.0.1, on ports other than the default local cluster's.
    starts = [" ".join(config["head_start_ray_commands"]), " ".join(config["worker_start_ray_commands"])]
    for start in starts:
        assert "--node-ip-address=127.0.0.1" in start and "0.0.0.0" not in start
        assert not re.search(r"[:=](6379|8265|10001)\b", start)
    assert f"RAY_START_HOOK={loopback.HOOK}" in starts[1]
    assert config["docker"]["image"] == f"sphere-orchestrator:{_ray_pin()}"

    env = loopback.container_env(cluster_env)
    assert env["AWS_SECRET_ACCESS_KEY"] == secret and "RAY_API_SERVER_ADDRESS" not in env
    assert env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"


def test_the_loopback_hook_gives_the_worker_back_its_loopback_ip() -> None:
    """`ray start` (worker) has rewritten --node-ip-address=127.0.0.1 to the routable address by then; a head
    keeps what it was given."""
    from ray._private.parameter import RayParams

    spec = importlib.util.spec_from_file_location("loopback_hook", CLUSTER_DIR / "loopback_hook.py")
    assert spec and spec.loader
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    worker, head = (
        RayParams(node_ip_address="192.0.2.2", node_name="192.0.2.2"),
        RayParams(node_ip_address="10.0.0.5"),
    )
    hook.keep_loopback_node_ip(worker, False)
    hook.keep_loopback_node_ip(head, True)
    assert (worker.node_ip_address, worker.node_name, head.node_ip_address) == (
        "127.0.0.1",
        "127.0.0.1",
        "10.0.0.5",
    )
