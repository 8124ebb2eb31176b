"""Process helpers for the local cluster (Linux /proc; stdlib only).

Every process of a cluster carries the marker variable CLUSTER_MARKER=<state dir> in its environment: services
get it at start and Ray's workers and job drivers inherit it from the raylet. Scanning /proc for it (plus the
descendants of marked processes) finds the whole cluster, including processes that left the head's process
group, and nothing of any other cluster.
"""

import contextlib
import os
import signal
import time
from pathlib import Path

CLUSTER_MARKER = "SPHERE_CLUSTER_DIR"


def is_alive(pid: int) -> bool:
    """True for a running process; a zombie (exited, not yet reaped) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)  # no /proc (not Linux): signal 0 only probes
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    # The state letter follows the parenthesised command name, which may itself contain spaces.
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _ancestors() -> set[int]:
    """This process and its ancestors: a sweep must never signal the shell or test that runs it."""
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            break
    return pids


def marked_pids(state_dir: Path) -> list[int]:
    """Pids of live processes whose environment holds CLUSTER_MARKER=<state_dir>, and their descendants:
    Ray's raylet starts its dashboard and runtime-env agents with an environment of its own making."""
    needle = f"{CLUSTER_MARKER}={state_dir}".encode()
    skip = _ancestors()
    marked: set[int] = set()
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        if pid in skip:
            continue
        try:
            environ = (entry / "environ").read_bytes()
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # gone meanwhile, or another user's process
            continue
        children.setdefault(parent, []).append(pid)
        if needle in environ.split(b"\0"):
            marked.add(pid)
    pending = list(marked)
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in marked:
                marked.add(child)
                pending.append(child)
    return sorted(pid for pid in marked if is_alive(pid))


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def group_members(pgid: int) -> list[int]:
    """Live processes of the process group `pgid`, its leader included if alive: a killed leader can leave
    children behind (MLflow's uvicorn worker) that keep the service's port."""
    members = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return sorted(members)


def stop_group(pid: int, timeout_s: float) -> bool:
    """SIGTERM the process group led by `pid` (started with start_new_session), SIGKILL it after `timeout_s`.

    Stops the group's members even when the leader is already gone. Returns True when something had to be
    killed.
    """
    members = group_members(pid)
    if not members:
        return False
    _signal_group(pid, signal.SIGTERM)
    if wait_gone(members, timeout_s):
        return False
    _signal_group(pid, signal.SIGKILL)
    wait_gone(members, 5.0)
    return True


def stop_pids(pids: list[int], timeout_s: float) -> None:
    """SIGTERM each pid, then SIGKILL whatever is still alive after `timeout_s`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if wait_gone(pids, timeout_s if sig == signal.SIGTERM else 5.0):
            return


def wait_gone(pids: list[int], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while any(is_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True
