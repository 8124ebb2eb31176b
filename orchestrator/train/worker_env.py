"""What reaches Ray's workers through their runtime env, and what never does.

Workers inherit the raylet's env, not the driver's: the settings in FORWARDED_ENV travel in their runtime
env. Never a credential: Ray writes runtime envs in plain text to its logs and job API. Workers take
credentials from their node (the local cluster's `ray start` env, an instance/pod role, a Kubernetes Secret).

Their allocator: Ray preloads the jemalloc it ships into its own services, and into its workers where the
node's Ray starts with RAY_LD_PRELOAD_ON_WORKERS=1 (the local cluster and the image do). A training step frees
and allocates the same activation buffers every step; glibc's malloc and jemalloc's default purge hand those
pages back to the kernel and fault them in again: a CPU step alone 1.12x slower, a trial alone 1.10x
(bench/bench_allocator.py, docs/benchmarks.md). Trial workers keep them (TRAIN_WORKER_MALLOC_CONF): their
memory stays at its peak, which a training process reaches every step anyway.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from ray.tune.execution import class_cache

from orchestrator import QUIET_ENV
from sphere_core.config import ConfigError

FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "SPHERE_GIT_COMMIT")
# Named only to be kept out: Ray Tune would copy them from the driver into every trial's runtime env.
KEPT_OUT_OF_RUNTIME_ENVS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
)

TRAIN_WORKER_MALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"  # read by jemalloc only, where preloaded
ALLOCATOR_TAG = "worker.allocator"


def worker_env(tracking_uri: str) -> dict[str, str]:
    if urlsplit(tracking_uri).password is not None:
        raise ConfigError(
            "tracking.uri: holds a password, which would reach Ray's logs with the workers' env (allowed: a "
            "URI without user:password@; set MLFLOW_TRACKING_USERNAME/PASSWORD or _TOKEN on the nodes)"
        )

    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    return {**env, **QUIET_ENV, "MLFLOW_TRACKING_URI": tracking_uri, "MALLOC_CONF": TRAIN_WORKER_MALLOC_CONF}


def preloaded_allocator(maps: Path = Path("/proc/self/maps")) -> str:
    """The malloc this process runs on: a preloaded jemalloc or tcmalloc, else the C library's ("system")."""
    try:
        mapped = maps.read_text()
    except OSError:
        return "unknown"  # no procfs (macOS drivers)
    return next((name for name in ("jemalloc", "tcmalloc") if f"/lib{name}" in mapped), "system")


def keep_credentials_out_of_trial_runtime_envs() -> None:
    """Ray Tune copies the driver's AWS credentials into every trial actor's runtime env
    (ray.tune.execution.class_cache.ENV_VARS_TO_PROPAGATE), and Ray writes runtime envs in plain text to
    runtime_env_agent.log. Trial actors take them from their node instead, like every other Ray worker."""
    class_cache.ENV_VARS_TO_PROPAGATE = set(class_cache.ENV_VARS_TO_PROPAGATE) - set(KEPT_OUT_OF_RUNTIME_ENVS)
