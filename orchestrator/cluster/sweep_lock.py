"""One sweep per experiment at a time: a named Ray actor owned by the sweep's driver, so Ray frees it when the
driver ends, even by kill -9."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator

import ray

from orchestrator.cli_errors import Failed
from orchestrator.cluster.driver_node import on_this_node
from orchestrator.config.sweep_spec import SweepSpec

LOCK_NAMESPACE = "sphere-sweeps"  # the lock actors' namespace: a job's own namespace is anonymous


class SweepBusy(Failed):
    """The same sweep (same Tune experiment) is running in another driver; one line, exit 3."""

    exit_status = 3


def this_driver() -> str:
    """How a user finds this driver again: its Ray job's submission id, else its host and pid."""
    job_config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))
    submission_id = job_config.get("metadata", {}).get("job_submission_id")
    if submission_id:
        return f"Ray job {submission_id} (`ray job stop {submission_id}` stops it)"
    return f"the driver with pid {os.getpid()} on {socket.gethostname()}"


@contextlib.contextmanager
def sweep_lock(spec: SweepSpec) -> Iterator[None]:
    """A named actor per Tune experiment, owned by this driver, so Ray removes it when the driver ends, even
    by kill -9: a second driver of the same sweep is refused while this one lives (both would otherwise
    train the same trials into the same runs)."""

    @ray.remote(num_cpus=0)
    class SweepLock:
        def __init__(self, holder: str, since: str) -> None:
            self.holder, self.since = holder, since

        def describe(self) -> list[str]:
            return [self.holder, self.since]

    name = f"lock:{spec.experiment_name}"
    try:
        options = {"name": name, "namespace": LOCK_NAMESPACE, "scheduling_strategy": on_this_node()}
        lock = SweepLock.options(**options).remote(  # type: ignore[attr-defined]
            this_driver(), time.strftime("%Y-%m-%d %H:%M:%S %Z")
        )
        ray.get(lock.describe.remote())
    except ValueError:  # "The name ... is already taken"
        described: list[str] = ray.get(ray.get_actor(name, namespace=LOCK_NAMESPACE).describe.remote())
        holder, since = described
        raise SweepBusy(
            f"sweep {spec.experiment_name} is already running in {holder}, since {since}; wait "
            "for it, stop it, or pass --new-experiment to run this submission as a new experiment"
        ) from None
    try:
        yield
    finally:
        ray.kill(lock)
