"""User errors of the command-line tools: one line on stderr and exit status 2, never a traceback.

Each CLI (orchestrator.data, .generate, .evaluate, .evaluation) parses its flags first, with the
argparse types below, so a bad number is argparse's own one-line usage error before torch or mlflow is
imported. Its work then runs under `run`, which prints a user error as `error: <what>` and returns 2.
Storage URLs are used inside `reaching`: an unknown scheme or a missing fsspec backend is refused before
any work, and an unreachable store or refused credentials fail naming the flag and URL.

This module imports nothing heavy at its top, so a CLI can import it before parsing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from sphere_core.config import ConfigError

USER_ERROR_EXIT = 2
KNOWN_SCHEMES = "file (or a plain path), s3, gs, memory"
AWS_CREDENTIALS = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
REFUSED_CODES = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"}


class UserError(Exception):
    """A mistake in the invocation or its environment, phrased as one line that names the flag or URL."""


def at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer >= `minimum`; argparse reports anything else as a usage error naming the
    flag."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def run(work: Callable[[], int], renames: Sequence[tuple[str, str]] = ()) -> int:
    """work()'s exit status, or USER_ERROR_EXIT after printing a user error as one `error:` line.
    renames: (config field, flag) pairs applied in order: the config dataclasses name their fields, the
    user typed flags."""
    from orchestrator.data.storage import StorageUnavailable

    try:
        return work()
    except Exception as exc:
        if not isinstance(exc, (StorageUnavailable, UserError, ConfigError)):
            raise
        message = " ".join(str(exc).split("\n"))
        for field, flag in renames:
            message = message.replace(field, flag)
        print(f"error: {message}", file=sys.stderr)
        return USER_ERROR_EXIT


def utf8(data: bytes, where: str, error: type[ConfigError] = ConfigError) -> str:
    """`data` decoded, or `error` naming `where`, the line and the first byte that is not UTF-8 (a
    UnicodeDecodeError would be a traceback)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise error(
            f"{where}: line {line}: not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); save it "
            "as UTF-8"
        ) from None


def check_scheme(url: str, flag: str = "") -> None:
    """UserError unless fsspec knows `url`'s scheme and its backend package is installed."""
    import fsspec
    from fsspec.core import split_protocol
    from fsspec.registry import known_implementations

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
    import botocore.exceptions

    from orchestrator.data.storage import StorageUnavailable, exception_chain, is_transient

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
