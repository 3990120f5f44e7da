"""Storage in an S3 bucket (AWS, or any S3-compatible store), through obstore.

obstore (Rust's object_store, the Apache Arrow project's) was chosen by what bench/s3_clients.py
measures: about twice aiobotocore's PUTs per second for a third of its CPU a PUT, with type
stubs of its own (bench/README.md). Credentials and region come from the standard AWS
variables and chain (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION,
instance and web-identity roles); none is ever logged.

Every call blocks, as the `Storage` protocol says: the pipeline runs them in worker threads.
Errors of the store come out as OSError (FileNotFoundError for a missing key), which the
pipeline counts as a fault of ours, never an image's.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import timedelta
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, BinaryIO, TypeVar
from urllib.parse import urlsplit

import obstore
from obstore.exceptions import BaseError, NotFoundError
from obstore.store import S3Store

from imgcrunch.storage import CHUNK_SIZE, IMMUTABLE, media_type

if TYPE_CHECKING:
    from obstore.store import RetryConfig

T = TypeVar("T")

# A store that is away is told apart from a slow one within seconds, not obstore's three
# minutes: the work loop's own backoff takes over from there.
_RETRIES: RetryConfig = {
    "max_retries": 4,
    "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=2)},
    "retry_timeout": timedelta(seconds=15),
}
_PROBE_PREFIX = ".imgcrunch-probe"
_DELETE_BATCH = 1000  # keys in one DeleteObjects call, S3's most


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/prefix` as (bucket, prefix); ValueError naming what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"an S3 storage URL is s3://bucket/prefix, not {url!r}")
    return parts.netloc, parts.path.strip("/")


class S3Storage:
    """A bucket, under an optional prefix. Objects are written whole by one PUT (multipart
    above 5 MiB, as a big CSV may be) with their Content-Type and an immutable Cache-Control."""

    writes_where_made = False  # a PUT waits on the network: never on a codec worker

    def __init__(self, url: str, *, endpoint: str | None = None) -> None:
        bucket, prefix = parse_s3_url(url)
        self.url = url
        options = {"allow_http": True} if endpoint and endpoint.startswith("http://") else {}
        self._store = S3Store(
            bucket,
            prefix=prefix or None,
            endpoint=endpoint,
            client_options=options,  # type: ignore[arg-type]
            retry_config=_RETRIES,
        )

    def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        # A PUT that has answered is durable: `durable` has nothing to add.
        attributes = {"Content-Type": media_type(key), "Cache-Control": IMMUTABLE}
        _stored(lambda: obstore.put(self._store, _checked(key), data, attributes=attributes))

    def put_file(self, key: str, file: BinaryIO) -> None:
        attributes = {"Content-Type": media_type(key), "Cache-Control": IMMUTABLE}
        file.seek(0)
        _stored(lambda: obstore.put(self._store, _checked(key), file, attributes=attributes))

    def sync(self, keys: Iterable[str]) -> None:
        return None

    def get(self, key: str) -> bytes:
        return _stored(lambda: bytes(obstore.get(self._store, _checked(key)).bytes()))

    def read_chunks(self, key: str) -> Iterator[bytes]:
        result = _stored(lambda: obstore.get(self._store, _checked(key)))
        stream = iter(result.stream(min_chunk_size=CHUNK_SIZE))

        def pieces() -> Iterator[bytes]:
            while (chunk := _stored(lambda: next(stream, None))) is not None:
                yield bytes(chunk)

        return pieces()

    @contextlib.contextmanager
    def opened(self, key: str) -> Iterator[BinaryIO]:
        chunks = self.read_chunks(key)
        with tempfile.TemporaryFile() as file:
            for chunk in chunks:
                file.write(chunk)
            file.seek(0)
            yield file

    def exists(self, key: str) -> bool:
        try:
            _stored(lambda: obstore.head(self._store, _checked(key)))
        except FileNotFoundError:
            return False
        return True

    def remove_request(self, request_id: uuid.UUID) -> None:
        _stored(lambda: self._remove_under(f"images/{request_id}/"))
        _stored(lambda: self._remove_under(f"csv/{request_id}/"))

    def remove(self, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = [_checked(key) for key in keys[start : start + _DELETE_BATCH]]
            _stored(functools.partial(obstore.delete, self._store, batch))

    def _remove_under(self, prefix: str) -> None:
        keys = [meta["path"] for batch in obstore.list(self._store, prefix) for meta in batch]
        if keys:  # batch deletes: up to a thousand keys a request
            obstore.delete(self._store, keys)

    def remove_partial_writes(self, *, older_than: float = 0.0) -> int:
        return 0  # a PUT is atomic, and a failed multipart upload is aborted by its writer

    def free_bytes(self) -> int | None:
        return None

    def check_writable(self) -> None:
        """Write and delete a probe: the bucket exists and these credentials may write."""
        probe = f"{_PROBE_PREFIX}/{uuid.uuid4().hex}"
        _stored(lambda: obstore.put(self._store, probe, b"imgcrunch"))
        _stored(lambda: obstore.delete(self._store, probe))

    def presigned_url(self, key: str, *, seconds: int) -> str | None:
        """A GET of `key` that needs no credentials, for `seconds`."""
        signed = _stored(
            lambda: obstore.sign(self._store, "GET", _checked(key), timedelta(seconds=seconds))
        )
        return str(signed)


def _checked(key: str) -> str:
    path = PurePosixPath(key)
    if path.is_absolute() or ".." in path.parts or not key:
        raise ValueError(f"invalid storage key {key!r}")
    return key


def _stored(call: Callable[[], T]) -> T:
    """The store's errors as OSError: FileNotFoundError for a missing key, EIO otherwise."""
    try:
        return call()
    except FileNotFoundError:
        raise
    except NotFoundError as error:
        raise FileNotFoundError(errno.ENOENT, "no such object", _first_line(error)) from error
    except BaseError as error:
        raise OSError(errno.EIO, f"S3: {_first_line(error)}") from error


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
