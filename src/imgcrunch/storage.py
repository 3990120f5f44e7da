"""Where output files live. Keys are relative paths such as `images/<request>/<sha256>.jpg`."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path, PurePosixPath
from typing import Protocol


class Storage(Protocol):
    """Blocking calls: the pipeline runs them in its worker threads, never on the event loop.

    `put` of an image runs on the codec thread that made it, so it must be quick, as a local
    disk or a mounted shared folder is; a slow remote store would leave that core idle.
    """

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def remove_request(self, request_id: uuid.UUID) -> None:
        """Every file of the request: its images and its kept and output CSVs."""


def image_key(request_id: uuid.UUID, data: bytes, extension: str) -> str:
    """Content-addressed, so processing an image twice writes the same file, not a second one."""
    return f"images/{request_id}/{hashlib.sha256(data).hexdigest()}.{extension}"


def input_csv_key(request_id: uuid.UUID) -> str:
    return f"csv/{request_id}/input.csv"


def output_csv_key(request_id: uuid.UUID) -> str:
    return f"csv/{request_id}/output.csv"


class LocalStorage:
    """A folder on local disk (or a shared volume). Writes are atomic: temp file, fsync, rename.

    Temp files live in one folder of their own, on the same file system so the rename is atomic,
    where the ones a killed process left behind are easy to find and remove.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._partial = root / ".partial"

    def path(self, key: str) -> Path:
        relative = PurePosixPath(key)
        if relative.is_absolute() or ".." in relative.parts:
            raise ValueError(f"invalid storage key {key!r}")
        return self.root.joinpath(*relative.parts)

    def put(self, key: str, data: bytes) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        self._partial.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=self._partial)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def remove_request(self, request_id: uuid.UUID) -> None:
        for folder in (f"images/{request_id}", f"csv/{request_id}"):
            shutil.rmtree(self.path(folder), ignore_errors=True)

    def remove_partial_writes(self, *, older_than: float = 0.0) -> int:
        """Delete temp files of writes that never finished (their process died)."""
        if not self._partial.is_dir():
            return 0
        cutoff = time.time() - older_than
        removed = 0
        for temp in self._partial.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if temp.stat().st_mtime <= cutoff:
                    temp.unlink()
                    removed += 1
        return removed
