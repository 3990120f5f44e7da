"""Waiting for what a test cannot be told of (a status to change, a process to go): the one
helper with a deadline. It raises when the deadline passes, so no caller can go on as if the
wait had succeeded."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

TIMEOUT = 60.0  # seconds: long, so that a loaded two-core machine never trips it
INTERVAL = 0.05


def wait_until(
    what: str,
    check: Callable[[], T | None],
    *,
    timeout: float = TIMEOUT,
    interval: float = INTERVAL,
) -> T:
    """Call `check` until it returns something true, and return that. After `timeout` seconds,
    AssertionError naming `what` and the last thing `check` returned."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}: {found!r}")
        time.sleep(interval)
