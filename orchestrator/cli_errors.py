"""User errors of the command-line tools: one line on stderr and exit status 2, never a traceback.

Each CLI (orchestrator.sweep, .data, .generate, .evaluation) parses its flags first, with the
argparse types below, so a bad number is argparse's own one-line usage error before torch or mlflow is
imported. Its work then runs under `run`, which prints a user error (a UserError, or a config's
ConfigError) as `error: <what>` and returns 2, and work that ran and failed (`Failed`) as one line with
its own exit status. Storage URLs are checked by orchestrator.data.storage's
`reaching`, whose errors are UserErrors too.

The bottom of orchestrator's layers: every layer may import it, and it imports nothing heavy.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from sphere_core.config import ConfigError

USER_ERROR_EXIT = 2


class UserError(Exception):
    """A mistake in the invocation or its environment, phrased as one line that names the flag or URL."""


class Failed(Exception):
    """Work that ran and cannot finish, for a reason one line states (a sweep with nothing sound to
    register, the same sweep running elsewhere); `run` prints it and exits with `exit_status`."""

    exit_status = 1


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
    try:
        return work()
    except Failed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_status
    except Exception as exc:
        if not isinstance(exc, (UserError, ConfigError)):
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
