"""A sweep's MLflow runs end with the sweep, however it ends: FINISHED, FAILED (an error, a killed driver, a
dead Ray head) or KILLED (`ray job stop`), never left RUNNING until a resubmission.

`ray job stop` sends SIGTERM to the driver and SIGKILL 3 s later (Ray's RAY_JOB_STOP_WAIT_TIME_S); Ray's own
SIGTERM handler raises SystemExit, and Tune's teardown outlasts those 3 s. So the handler installed here
marks the runs KILLED first, then hands over to Ray's. A driver that dies without running Python (kill -9,
the out-of-memory killer, a head whose GCS dies takes its drivers down) cannot mark anything itself: a small
watcher process, detached from the driver's process tree so that neither Ray's job stop nor the driver's
death reaches it, waits for the driver's pid to go and then marks what is still RUNNING as FAILED, unless a
resubmitted driver has taken the runs over by then (the parent's `driver.id` tag names the one that holds it).

    python -m orchestrator.tracking.run_end --pid PID --since START --parent RUN_ID --uri TRACKING_URI
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from mlflow import MlflowClient

END_REASON_TAG = "end.reason"
DRIVER_TAG = "driver.id"  # host:pid:start time of the driver that holds the parent run
WATCH_POLL_S = 2.0


def end_unfinished(client: MlflowClient, parent_run_id: str, status: str, reason: str) -> int:
    """Marks the parent run and every child run still RUNNING as `status`; returns how many it marked."""
    parent = client.get_run(parent_run_id)
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}' and attributes.status = 'RUNNING'",
    )
    unfinished = [run.info.run_id for run in children] + (
        [parent_run_id] if parent.info.status == "RUNNING" else []
    )
    for run_id in unfinished:
        client.set_tag(run_id, END_REASON_TAG, reason)
        client.set_terminated(run_id, status)
    return len(unfinished)


def end_quietly(client: MlflowClient, parent_run_id: str, status: str, reason: str) -> None:
    """end_unfinished on the way out of a failing driver: a tracking server that is down too is reported,
    never raised over the error that ends the sweep (the watcher tries again)."""
    try:
        end_unfinished(client, parent_run_id, status, reason)
    except Exception as exc:
        print(
            f"warning: could not mark the sweep's runs {status}: {type(exc).__name__}: {exc}", file=sys.stderr
        )


def driver_id(pid: int, since: int) -> str:
    return f"{socket.gethostname()}:{pid}:{since}"


@contextlib.contextmanager
def ended_with_the_sweep(client: MlflowClient, parent_run_id: str) -> Iterator[None]:
    """The block is the sweep: the parent run ends FINISHED when it returns, FAILED (with its unfinished
    trial runs) when it raises, KILLED on SIGTERM; a watcher covers the driver's death without Python."""
    stopped = False
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        nonlocal stopped
        if not stopped:
            stopped = True
            end_quietly(client, parent_run_id, "KILLED", "the driver was stopped (SIGTERM: ray job stop)")
        if callable(previous):
            previous(signum, frame)
        else:  # no handler before ours: die of the signal, as without one
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    pid = os.getpid()
    client.set_tag(parent_run_id, DRIVER_TAG, driver_id(pid, process_start(pid)))
    signal.signal(signal.SIGTERM, on_sigterm)
    watch_driver(client.tracking_uri, parent_run_id)
    try:
        yield
    except BaseException as exc:
        if not stopped:
            end_quietly(client, parent_run_id, "FAILED", f"the driver failed: {type(exc).__name__}")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    client.set_terminated(parent_run_id, "FINISHED")


def watch_driver(tracking_uri: str, parent_run_id: str) -> None:
    """Starts the watcher of this process, detached: a double fork leaves it with no parent among the job's
    processes, which Ray stops by walking the driver's children."""
    argv = [
        sys.executable,
        "-m",
        "orchestrator.tracking.run_end",
        "--pid",
        str(os.getpid()),
        "--since",
        str(process_start(os.getpid())),
        "--parent",
        parent_run_id,
        "--uri",
        tracking_uri,
    ]
    detach = "import subprocess, sys; subprocess.Popen(sys.argv[1:], start_new_session=True)"
    subprocess.run(
        [sys.executable, "-c", detach, *argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )


def process_start(pid: int) -> int:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat): with the pid, it
    names one process even after the pid is reused. 0 when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[19])


def watch(pid: int, since: int, parent_run_id: str, tracking_uri: str) -> None:
    """Waits for the driver (pid, start time) to go, then ends what it left RUNNING as FAILED, if the
    parent run is still its own."""
    while process_start(pid) == since:
        time.sleep(WATCH_POLL_S)

    client = MlflowClient(tracking_uri)
    if client.get_run(parent_run_id).data.tags.get(DRIVER_TAG) != driver_id(pid, since):
        return  # a resubmitted driver holds the runs now
    end_unfinished(
        client,
        parent_run_id,
        "FAILED",
        f"the driver (pid {pid}) died without ending its runs (killed, or its Ray head died)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.tracking.run_end", description=__doc__)
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--since", type=int, required=True)
    parser.add_argument("--parent", required=True)
    parser.add_argument("--uri", required=True)
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    watch(args.pid, args.since, args.parent, args.uri)
    return 0


if __name__ == "__main__":
    sys.exit(main())
