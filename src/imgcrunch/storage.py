"""Where output files live. Keys are relative paths such as `images/<scope>/<sha256>.jpg`, the
scope being the owner's (requests from before re-runs used their own id)."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol, cast

CHUNK_SIZE = 1024 * 1024  # bytes a streamed read or write moves at a time


class Storage(Protocol):
    """Blocking calls: the pipeline runs them in its worker threads, never on the event loop.

    Where `writes_where_made` (a local disk, a mounted folder), an image is written by the
    codec worker that made it, saving a hand-off of its bytes; elsewhere (a bucket) the
    pipeline writes it, so that no codec worker waits on the network.
    """

    writes_where_made: bool

    def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        """Store `data` at `key`, atomically: a reader sees all of it or none. With
        `durable=False` it may not survive a crash of the machine until `sync` is called."""

    def sync(self, keys: Iterable[str]) -> None:
        """Make what `put(durable=False)` stored at these keys survive a crash of the machine."""

    def put_file(self, key: str, file: BinaryIO) -> None:
        """Store what `file` holds from its start at `key`, as `put` does, read a piece at a
        time: a catalog's CSV of a million rows is never in memory whole."""

    def get(self, key: str) -> bytes:
        """What is stored at `key`; FileNotFoundError if nothing is."""

    def read_chunks(self, key: str) -> Iterator[bytes]:
        """What is stored at `key`, a piece at a time; FileNotFoundError at once if nothing
        is (not at the first piece), so that a caller can answer before it streams."""

    def opened(self, key: str) -> AbstractContextManager[BinaryIO]:
        """What is stored at `key` as a file to read and seek in, on local disk (a bucket's
        object is copied to a temporary file first); FileNotFoundError if nothing is."""

    def exists(self, key: str) -> bool: ...

    def remove_request(self, request_id: uuid.UUID) -> None:
        """The request's own files: its kept and output CSVs, and its images if they were
        stored under its id (before re-runs). Shared images go by `remove`."""

    def remove(self, keys: Sequence[str]) -> None:
        """Remove what is stored at these keys; a key with nothing stored is no error."""

    def remove_partial_writes(self, *, older_than: float = 0.0) -> int:
        """Remove what writes that never finished (their process died) left behind, if older
        than `older_than` seconds; returns how many."""

    def free_bytes(self) -> int | None:
        """Room left for writes; None where the store has no such bound."""

    def check_writable(self) -> None:
        """Write and remove a small probe; OSError if the store takes no writes."""

    def presigned_url(self, key: str, *, seconds: int) -> str | None:
        """A URL that reads `key` without credentials for `seconds`; None where there is none."""


def open_storage(url: str, *, s3_endpoint: str | None = None, check: bool = True) -> Storage:
    """The storage `url` names: `file:///path` (a folder) or `s3://bucket/prefix`. With
    `check`, a first write and delete prove it usable (OSError if not)."""
    storage: Storage
    if url.startswith("s3://"):
        from imgcrunch.s3_storage import S3Storage  # only where a bucket is used: the s3 extra

        storage = S3Storage(url, endpoint=s3_endpoint)
    else:
        storage = LocalStorage(folder_of(url))
    if check:
        storage.check_writable()
    return storage


def folder_of(url: str) -> Path:
    """The folder of a `file://` URL (`file:///srv/images`, or `file://var` relative)."""
    if not url.startswith("file://"):
        raise ValueError(f"a storage URL is file:///path or s3://bucket/prefix, not {url!r}")
    return Path(url.removeprefix("file://"))


# How long a stored file may be kept by any cache: a key is named by its content, so never
# changes it.
IMMUTABLE = "public, max-age=31536000, immutable"


_MEDIA_TYPES = {
    ".jpg": "image/jpeg",
    ".webp": "image/webp",
    ".avif": "image/avif",
    ".csv": "text/csv; charset=utf-8",
}


def media_type(key: str) -> str:
    """The Content-Type of what is stored at `key`, by its extension."""
    return _MEDIA_TYPES.get(PurePosixPath(key).suffix, "application/octet-stream")


def image_key(scope: uuid.UUID, data: bytes, extension: str) -> str:
    """Named by the owner's scope and the content: processing an image twice, in one request
    or the next, writes the same file at the same URL, not a second one."""
    return f"images/{scope}/{hashlib.sha256(data).hexdigest()}.{extension}"


def input_csv_key(request_id: uuid.UUID) -> str:
    return f"csv/{request_id}/input.csv"


def output_csv_key(request_id: uuid.UUID) -> str:
    return f"csv/{request_id}/output.csv"


class LocalStorage:
    """A folder on local disk (or a shared volume). Writes are atomic: temp file, fsync, rename.

    Temp files live in one folder of their own, on the same file system so the rename is atomic,
    where the ones a killed process left behind are easy to find and remove.
    """

    writes_where_made = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self._partial = root / ".partial"

    def path(self, key: str) -> Path:
        relative = PurePosixPath(key)
        if relative.is_absolute() or ".." in relative.parts:
            raise ValueError(f"invalid storage key {key!r}")
        return self.root.joinpath(*relative.parts)

    def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        self._write(key, lambda file: file.write(data), durable=durable)

    def put_file(self, key: str, file: BinaryIO) -> None:
        file.seek(0)
        self._write(key, lambda target: shutil.copyfileobj(file, target, CHUNK_SIZE))

    def _write(
        self, key: str, write: Callable[[BinaryIO], object], *, durable: bool = True
    ) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        self._partial.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=self._partial)
        try:
            with os.fdopen(fd, "wb") as file:
                write(file)
                if durable:
                    file.flush()
                    os.fsync(file.fileno())
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        if durable:
            _fsync_folder(target.parent)

    def sync(self, keys: Iterable[str]) -> None:
        """One flush of the whole file system where Linux has `syncfs`, instead of an fsync per
        file: a batch's images cost one journal commit, not one each (2 ms apiece here)."""
        paths = [self.path(key) for key in keys]
        if not paths:
            return
        if _syncfs(self.root):
            return
        for path in paths:
            _fsync_path(path)
        for folder in {path.parent for path in paths}:
            _fsync_folder(folder)

    def get(self, key: str) -> bytes:
        path = self.path(key)
        if not path.is_file():  # a folder reads as IsADirectoryError; nothing is stored there
            raise FileNotFoundError(key)
        return path.read_bytes()

    def read_chunks(self, key: str) -> Iterator[bytes]:
        return _chunks_of(self.opened(key))

    @contextlib.contextmanager
    def opened(self, key: str) -> Iterator[BinaryIO]:
        path = self.path(key)
        if not path.is_file():
            raise FileNotFoundError(key)
        with path.open("rb") as file:
            yield file

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def remove_request(self, request_id: uuid.UUID) -> None:
        for folder in (f"images/{request_id}", f"csv/{request_id}"):
            shutil.rmtree(self.path(folder), ignore_errors=True)

    def remove(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.path(key).unlink(missing_ok=True)

    def free_bytes(self) -> int | None:
        return shutil.disk_usage(self.root).free

    def presigned_url(self, key: str, *, seconds: int) -> str | None:
        return None  # served by the API

    def check_writable(self) -> None:
        self._partial.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=self._partial, prefix="probe-")
        try:
            os.write(fd, b"imgcrunch")
        finally:
            os.close(fd)
            Path(probe).unlink(missing_ok=True)

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


def _chunks_of(opened: AbstractContextManager[BinaryIO]) -> Iterator[bytes]:
    """The file's pieces; opened now, so that a missing file raises here and not at the first
    piece."""
    file = opened.__enter__()

    def pieces() -> Iterator[bytes]:
        try:
            while chunk := file.read(CHUNK_SIZE):
                yield chunk
        finally:
            opened.__exit__(None, None, None)

    return pieces()


def _fsync_path(path: Path, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """A rename survives a crash once its folder is synced too."""
    with contextlib.suppress(OSError):  # not every OS opens folders (Windows)
        _fsync_path(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _libc_syncfs() -> Callable[[int], int] | None:
    try:
        syncfs = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):  # not Linux
        return None
    syncfs.argtypes = (ctypes.c_int,)
    syncfs.restype = ctypes.c_int
    return cast(Callable[[int], int], syncfs)


_SYNCFS = _libc_syncfs()


def _syncfs(root: Path) -> bool:
    """Flush every file of the file system that holds `root`; False where that is not possible."""
    if _SYNCFS is None:
        return False
    fd = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        if _SYNCFS(fd) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"syncfs: {os.strerror(error)}", str(root))
    finally:
        os.close(fd)
    return True
