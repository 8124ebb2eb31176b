"""Object-store faults: a connection that fails is retried for a bounded time, then fails in one line.

Two paths reach the store. Our own reads (manifests, shards) go through fsspec and `retrying`; Ray's
checkpoint and Tune-state I/O goes through pyarrow, whose AWS SDK retries are counted in attempts
(orchestrator/train/checkpoint_storage.py picks the attempts that cover the same budget). Only
connection-class errors are retried: a missing key or a refused credential fails at once, and a corrupt
shard is the data pipeline's business.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import aiohttp
import botocore.exceptions
import fsspec
from fsspec.core import split_protocol
from fsspec.registry import known_implementations

from orchestrator.cli_errors import UserError

T = TypeVar("T")
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 8.0


KNOWN_SCHEMES = "file (or a plain path), s3, gs, memory"
AWS_CREDENTIALS = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
REFUSED_CODES = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"}


class StorageUnavailable(UserError, RuntimeError):
    """The store did not answer within the retry budget; the message names the URL."""


def is_transient(exc: BaseException) -> bool:
    """A refused, dropped or timed-out connection anywhere in the exception's chain."""
    transient = (
        ConnectionError,
        TimeoutError,
        botocore.exceptions.ConnectionError,
        botocore.exceptions.HTTPClientError,
        aiohttp.ClientConnectionError,
    )
    return any(isinstance(cause, transient) for cause in exception_chain(exc))


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what caused it (raise ... from, or raised while handling), and so on."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        yield cause
        cause = cause.__cause__ or cause.__context__


class Backoff:
    """Exponential waits between attempts until `budget_s` has passed since the first failure (or the last
    `reset`, after progress), then StorageUnavailable naming the URL."""

    def __init__(self, url: str, budget_s: float, sleep: Callable[[float], None] = time.sleep) -> None:
        self.url, self.budget_s, self.sleep = url, budget_s, sleep
        self.deadline: float | None = None
        self.backoff = FIRST_BACKOFF_S

    def wait(self, exc: Exception) -> None:
        """Sleep before the next attempt after `exc`; re-raise it when it is not transient."""
        if not is_transient(exc):
            raise exc
        now = time.monotonic()
        if self.deadline is None:
            self.deadline = now + self.budget_s
        left = self.deadline - now
        if left <= 0:
            raise StorageUnavailable(
                f"{self.url}: storage unreachable for {self.budget_s:.0f} s ({type(exc).__name__}: {exc})"
            ) from exc
        self.sleep(min(self.backoff, left))
        self.backoff = min(self.backoff * 2, MAX_BACKOFF_S)

    def reset(self) -> None:
        self.deadline, self.backoff = None, FIRST_BACKOFF_S


def retrying(
    fn: Callable[[], T], *, url: str, budget_s: float, sleep: Callable[[float], None] = time.sleep
) -> T:
    """fn(), retried with exponential backoff while it fails transiently, for at most `budget_s` seconds."""
    backoff = Backoff(url, budget_s, sleep)
    while True:
        try:
            return fn()
        except Exception as exc:
            backoff.wait(exc)


def check_scheme(url: str, flag: str = "") -> None:
    """UserError unless fsspec knows `url`'s scheme and its backend package is installed."""
    protocol = split_protocol(url)[0] or "file"
    try:
        fsspec.get_filesystem_class(protocol)
    except ValueError:
        raise UserError(
            f"{_where(url, flag)}: unknown URL scheme {protocol!r} (known: {KNOWN_SCHEMES})"
        ) from None
    except ImportError:
        package = known_implementations[protocol]["class"].split(".")[0]
        raise UserError(
            f"{_where(url, flag)}: {protocol}:// URLs need {package}: pip install {package}"
        ) from None


@contextmanager
def reaching(url: str, flag: str = "") -> Iterator[None]:
    """Checks `url`'s scheme, then turns a failure to reach the store inside the block (unreachable,
    no or refused credentials, no such bucket) into a UserError naming the flag and URL."""
    check_scheme(url, flag)
    try:
        yield
    except Exception as exc:
        problem = storage_problem(exc, url)
        if problem is None:
            raise
        raise UserError(f"{_where(url, flag)}: {problem}") from exc


def storage_problem(exc: BaseException, url: str) -> str | None:
    """What went wrong reaching `url`, for the user; None when `exc` is no storage fault (a bug, or an
    error that already names its URL)."""
    if isinstance(exc, StorageUnavailable):
        return None
    s3 = url.startswith(("s3://", "s3a://"))
    for cause in exception_chain(exc):
        if isinstance(cause, botocore.exceptions.NoCredentialsError):
            return f"no credentials found: set {AWS_CREDENTIALS}"
        if isinstance(cause, botocore.exceptions.ClientError):
            code = str(cause.response.get("Error", {}).get("Code", ""))
            if code in REFUSED_CODES:
                return f"access refused ({code}): check {AWS_CREDENTIALS} and the bucket's policy"
            if code == "NoSuchBucket":
                return "no such bucket"
    if isinstance(exc, PermissionError):
        return f"access refused ({exc}){f': check {AWS_CREDENTIALS}' if s3 else ''}"
    if is_transient(exc):
        hint = ": check AWS_ENDPOINT_URL and that the store is up" if s3 else ""
        return f"storage unreachable ({type(exc).__name__}: {exc}){hint}"
    return None


def _where(url: str, flag: str) -> str:
    return f"{flag} {url}" if flag else url


# --- across a fork -----------------------------------------------------------------------------------
# A forked child (a DataLoader worker) inherits this process's cached filesystems, and fsspec drops its
# instance cache there. An s3fs instance then collected in the child closes the parent's aiohttp session from
# the child's own event loop, and asyncio prints "Task exception was never retrieved ... attached to a
# different loop" with its traceback. Holding every cached instance across the fork keeps them alive in the
# child, which ends with os._exit (a DataLoader worker does) and so never collects them; the parent lets go.
_held_across_fork: list[fsspec.AbstractFileSystem] = []


def _hold_cached_filesystems() -> None:
    classes, seen = [fsspec.AbstractFileSystem], []
    while classes:
        cls = classes.pop()
        seen.append(cls)
        classes.extend(cls.__subclasses__())
    _held_across_fork[:] = [fs for cls in seen for fs in cls.__dict__.get("_cache", {}).values()]


os.register_at_fork(before=_hold_cached_filesystems, after_in_parent=_held_across_fork.clear)
