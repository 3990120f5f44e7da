"""A small file system of a test's own (a tmpfs), to fill and free as an operator's disk fills
up. Mounting needs root: without it the tests that ask for one skip, saying why (and fail with
IMGCRUNCH_REQUIRE_SERVICES=1, as for a missing service)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import unavailable


@dataclass
class SmallDisk:
    path: Path

    @property
    def filler(self) -> Path:
        return self.path / "filler"

    def free_bytes(self) -> int:
        stat = os.statvfs(self.path)
        return stat.f_bavail * stat.f_frsize

    def fill(self, *, leave: int = 0) -> None:
        """Take the room but about `leave` bytes (the file system counts in pages)."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            while (room := self.free_bytes() - leave) > 0:
                try:
                    os.write(fd, b"\0" * min(room, 1 << 20))
                except OSError:  # full
                    break
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)


@contextlib.contextmanager
def _mounted(size: str) -> Iterator[SmallDisk]:
    path = Path(tempfile.mkdtemp(prefix="imgcrunch-test-disk-"))
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(path)], check=True
    )
    try:
        yield SmallDisk(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
        path.rmdir()


SmallDiskFactory = Callable[[str], AbstractContextManager[SmallDisk]]


@pytest.fixture
def small_disk() -> SmallDiskFactory:
    """`with small_disk("8m") as disk:` a tmpfs of that size (`mount -o size=`), unmounted
    afterwards."""
    if os.geteuid() != 0:
        unavailable("root, to mount a small file system to fill", PermissionError(os.geteuid()))
    return _mounted
