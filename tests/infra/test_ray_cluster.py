"""infra/ray-cluster/aws-gpu.yaml against Ray's own cluster-launcher schema (ray-schema.json, the check
`ray up` runs before it launches anything), and against the project's pins and defaults."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "infra" / "ray-cluster" / "aws-gpu.yaml"


def test_the_launcher_config_passes_rays_schema() -> None:
    from ray.autoscaler._private.util import validate_config

    validate_config(yaml.safe_load(CONFIG.read_text()))  # raises on any unknown or mistyped field


def test_the_launcher_config_runs_the_projects_image_on_gpus_behind_loopback() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    ray_pin = re.search(r'"ray\[[^]]*\]==([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    assert ray_pin and config["docker"]["image"].endswith(f"/sphere-orchestrator:{ray_pin[1]}")
    workers = {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}
    assert all(t["resources"]["GPU"] > 0 and t["min_workers"] == 0 for t in workers.values())  # autoscaled
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in CONFIG.read_text()
    assert not config["setup_commands"]  # the image carries the code and its pinned dependencies
    assert "AWS_SECRET_ACCESS_KEY" not in CONFIG.read_text()  # nodes take an instance profile's credentials
