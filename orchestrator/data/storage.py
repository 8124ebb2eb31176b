"""Object-store faults: a connection that fails is retried for a bounded time, then fails in one line.

Two paths reach the store. Our own reads (manifests, shards) go through fsspec and `retrying`; Ray's
checkpoint and Tune-state I/O goes through pyarrow, whose AWS SDK retries are counted in attempts
(orchestrator/train/checkpoint_storage.py picks the attempts that cover the same budget). Only
connection-class errors are retried: a missing key or a refused credential fails at once, and a corrupt
shard is the data pipeline's business.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 8.0


class StorageUnavailable(RuntimeError):
    """The store did not answer within the retry budget; the message names the URL."""


def is_transient(exc: BaseException) -> bool:
    """A refused, dropped or timed-out connection anywhere in the exception's chain."""
    import aiohttp
    import botocore.exceptions

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
