"""A sweep's runs end with its driver however it ends (orchestrator/tracking/run_end.py), on a real SQLite
tracking store shared with real driver processes: returned, raised, SIGTERM (`ray job stop`), SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from orchestrator.tracking import run_end

REPO = Path(__file__).resolve().parents[3]


def sweep_runs(tmp_path: Path) -> tuple[str, MlflowClient, str, str, str]:
    """(uri, client, parent, a running trial run, a finished trial run)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("sweep", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(exp).info.run_id
    running, finished = (
        client.create_run(exp, tags={"mlflow.parentRunId": parent}).info.run_id for _ in range(2)
    )
    client.set_terminated(finished, "FINISHED")
    return uri, client, parent, running, finished


def statuses(client: MlflowClient, *run_ids: str) -> list[str]:
    return [client.get_run(run_id).info.status for run_id in run_ids]


def test_a_sweep_that_returns_finishes_and_one_that_raises_fails_with_its_open_trials(tmp_path: Path) -> None:
    _, client, parent, running, finished = sweep_runs(tmp_path)
    with pytest.raises(ZeroDivisionError), run_end.ended_with_the_sweep(client, parent):
        _ = 1 / 0
    assert statuses(client, parent, running, finished) == ["FAILED", "FAILED", "FINISHED"]
    assert client.get_run(running).data.tags[run_end.END_REASON_TAG] == "the driver failed: ZeroDivisionError"

    client.update_run(parent, status="RUNNING")  # resubmitted
    with run_end.ended_with_the_sweep(client, parent):
        pass
    assert statuses(client, parent) == ["FINISHED"]


def driver(tmp_path: Path, uri: str, parent: str, then: str) -> subprocess.Popen[str]:
    """A driver process that holds the sweep's runs as the sweep CLI does (after ray.init has installed
    Ray's SIGTERM handler, sys.exit), says "ready", then runs `then`."""
    script = tmp_path / "driver.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, signal, sys, time
            from mlflow import MlflowClient
            from orchestrator.tracking.run_end import ended_with_the_sweep
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))  # Ray's driver handler
            with ended_with_the_sweep(MlflowClient({uri!r}), {parent!r}):
                print("ready", flush=True)
                {then}
            """
        )
    )
    process = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=REPO,
        env=os.environ | {"PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


def watchers(parent: str) -> list[str]:
    """The pids of watcher processes of this parent run."""
    found = subprocess.run(
        ["pgrep", "-f", f"run_end --pid .* --parent {parent}"], capture_output=True, text=True
    )
    return found.stdout.split()


def wait_for(condition: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not within {timeout_s} s"
        time.sleep(0.5)


@pytest.mark.slow
def test_sigterm_marks_the_runs_killed_within_rays_three_seconds(tmp_path: Path) -> None:
    uri, client, parent, running, finished = sweep_runs(tmp_path)
    process = driver(tmp_path, uri, parent, then="time.sleep(600)")
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == signal.SIGTERM  # Ray's handler: sys.exit(15)
    assert time.monotonic() - sent < 3.0  # before `ray job stop` would SIGKILL it
    assert statuses(client, parent, running, finished) == ["KILLED", "KILLED", "FINISHED"]
    assert "ray job stop" in client.get_run(parent).data.tags[run_end.END_REASON_TAG]


@pytest.mark.slow
def test_a_driver_killed_outright_has_its_runs_failed_by_the_watcher(tmp_path: Path) -> None:
    uri, client, parent, running, finished = sweep_runs(tmp_path)
    process = driver(tmp_path, uri, parent, then="os.kill(os.getpid(), signal.SIGKILL)")
    assert process.wait(timeout=30) == -signal.SIGKILL
    wait_for(lambda: statuses(client, parent)[0] != "RUNNING", timeout_s=60)
    assert statuses(client, parent, running, finished) == ["FAILED", "FAILED", "FINISHED"]
    wait_for(lambda: not watchers(parent), timeout_s=30)
    assert "died without ending its runs" in client.get_run(parent).data.tags[run_end.END_REASON_TAG]


@pytest.mark.slow
def test_the_watcher_leaves_runs_a_resubmitted_driver_took_over(tmp_path: Path) -> None:
    uri, client, parent, running, _ = sweep_runs(tmp_path)
    first = driver(tmp_path, uri, parent, then="time.sleep(600)")
    client.set_tag(parent, run_end.DRIVER_TAG, "another-host:1:1")  # the resubmission's driver holds it
    assert watchers(parent)
    first.kill()
    first.wait(timeout=30)
    wait_for(lambda: not watchers(parent), timeout_s=60)  # it noticed, read the tag, and left
    assert statuses(client, parent, running) == ["RUNNING", "RUNNING"]
