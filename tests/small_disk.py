"""A small filesystem of its own (a tmpfs), to fill and free as an operator's disk fills up.

Mounting needs root; where the tests do not run as root, the tests that need one skip,
saying why.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


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
        """Take the room but about `leave` bytes (the filesystem counts in pages)."""
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
def small_disk(size: str) -> Iterator[SmallDisk]:
    """A tmpfs of `size` (`mount -o size=`, such as `8m`), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem to fill needs root")
    path = Path(tempfile.mkdtemp(prefix="imgcrunch-test-disk-"))
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "tmpfs", str(path)], check=True
    )
    try:
        yield SmallDisk(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
        path.rmdir()
