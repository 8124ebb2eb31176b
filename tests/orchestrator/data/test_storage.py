"""Bounded retries of lost connections (orchestrator/data/storage.py); the shard reader riding out a real
outage is in tests/orchestrator/data/test_pipeline.py."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import botocore.exceptions
import pytest

from orchestrator.data.storage import StorageUnavailable, is_transient, retrying
from tests.fixtures.services import LocalCluster


def _refused() -> Exception:
    try:
        raise ConnectionRefusedError(111, "Connection refused")
    except ConnectionRefusedError as cause:
        try:
            raise botocore.exceptions.EndpointConnectionError(endpoint_url="http://x") from cause
        except botocore.exceptions.EndpointConnectionError as exc:
            return exc


def test_connection_errors_are_transient_anywhere_in_the_chain_and_nothing_else_is() -> None:
    assert is_transient(_refused())
    try:
        raise RuntimeError("wrapped") from _refused()
    except RuntimeError as wrapped:
        assert is_transient(wrapped)
    assert not is_transient(FileNotFoundError("s3://b/k"))
    assert not is_transient(PermissionError("AccessDenied"))
    assert not is_transient(ValueError("bad tar"))


def test_retrying_recovers_within_its_budget_and_then_names_the_url() -> None:
    slept: list[float] = []
    outcomes: Iterator[Exception | None] = iter([_refused(), _refused(), None])

    def flaky() -> str:
        failure = next(outcomes)
        if failure is not None:
            raise failure
        return "ok"

    assert retrying(flaky, url="s3://b/k", budget_s=60, sleep=slept.append) == "ok"
    assert slept == [0.5, 1.0]  # exponential backoff

    def down() -> None:
        raise _refused()

    with pytest.raises(
        StorageUnavailable, match=r"^s3://b/k: storage unreachable for 0 s \(EndpointConnection"
    ):
        retrying(down, url="s3://b/k", budget_s=0.0, sleep=slept.append)
    with pytest.raises(FileNotFoundError):  # not transient: no retry at all
        retrying(
            lambda: (_ for _ in ()).throw(FileNotFoundError("k")), url="u", budget_s=60, sleep=slept.append
        )


FORKED_CHILD_COLLECTS_THE_PARENTS_FILESYSTEM = """
import gc, os, sys, time
import fsspec
from fsspec.asyn import get_loop, sync
if sys.argv[1] == "with-orchestrator":
    import orchestrator.data.storage
fs, path = fsspec.core.url_to_fs("s3://sphere")
fs.ls(path)  # opens the session whose connections the child inherits
del fs
child = os.fork()
if child == 0:  # as a DataLoader worker: reads through fsspec's event loop, then ends with os._exit
    async def collect():
        gc.collect()
    sync(get_loop(), collect)  # the parent's instance, collected on the child's loop, schedules its close
    time.sleep(0.5)  # which then fails, and the failed task is collected: asyncio prints its traceback
    gc.collect()
    sys.stderr.flush()
    os._exit(0)
os.waitpid(child, 0)
"""


@pytest.mark.slow
@pytest.mark.parametrize("importing", ["with-orchestrator", "fsspec-alone"])
def test_a_forked_child_leaves_the_parents_s3_session_alone(
    local_cluster: LocalCluster, importing: str
) -> None:
    """fsspec alone prints a task's traceback from the child ("attached to a different loop"), which the
    storage module's fork hook prevents. Against the local cluster's store (with its own AWS variables, not
    the moto fixture's): moto's server does not keep the connection that the child then closes."""
    ran = subprocess.run(
        [sys.executable, "-c", FORKED_CHILD_COLLECTS_THE_PARENTS_FILESYSTEM, importing],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, **local_cluster.env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    printed = "attached to a different loop" in ran.stderr
    assert printed == (importing == "fsspec-alone"), ran.stderr[-3000:]
