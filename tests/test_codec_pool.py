"""Where compression runs: worker processes that may die, and threads."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgcrunch.codec import CodecError, CodecOptions
from imgcrunch.codec_pool import ATTEMPTS, CodecCrashed, CodecPool, encode_and_store
from imgcrunch.imaging.variants import parse as parse_variants
from imgcrunch.storage import LocalStorage
from tests.imaging import decode, small_photo

pytestmark = pytest.mark.anyio


def die_the_first_time(marker: str) -> int:
    """Killed, as the OOM killer would, unless `marker` exists; then answers its pid."""
    if not os.path.exists(marker):
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getpid()


def die_every_time() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def pid() -> int:
    return os.getpid()


@pytest.fixture
def processes() -> Iterator[CodecPool]:
    pool = CodecPool(workers=1, processes=True)
    yield pool
    pool.shutdown()


async def test_processes_run_the_codec_away_from_this_process(
    processes: CodecPool, tmp_path: Path
) -> None:
    photo = bytes(small_photo().jpegsave_buffer(Q=95))
    storage = LocalStorage(tmp_path)
    request_id = uuid.uuid4()
    encoded = await processes.run(encode_and_store, storage, request_id, photo, CodecOptions())
    assert await processes.run(pid) != os.getpid()
    (output,) = encoded.outputs
    written = storage.get(output.key)
    assert len(written) == output.size < len(photo)
    assert output.key.startswith(f"images/{request_id}/")
    assert (output.width, output.height) == (200, 150)
    assert output.data is None  # written there, not carried back
    assert encoded.seconds > 0


async def test_every_variant_is_stored_under_its_own_format_and_key(
    processes: CodecPool, tmp_path: Path
) -> None:
    photo = bytes(small_photo().jpegsave_buffer(Q=95))
    variants = parse_variants("big=jpeg, small=100:webp, tile=64x64:pad:avif", max_pixels=10**8)
    options = CodecOptions(variants=variants)
    storage = LocalStorage(tmp_path)
    encoded = await processes.run(encode_and_store, storage, uuid.uuid4(), photo, options)
    sizes = [(output.width, output.height) for output in encoded.outputs]
    assert sizes == [(200, 150), (100, 75), (64, 64)]
    suffixes = [output.key.rsplit(".", 1)[1] for output in encoded.outputs]
    assert suffixes == ["jpg", "webp", "avif"]
    for output in encoded.outputs:
        assert len(storage.get(output.key)) == output.size


async def test_without_a_storage_the_bytes_come_back_to_be_written(processes: CodecPool) -> None:
    photo = bytes(small_photo().jpegsave_buffer(Q=95))
    options = CodecOptions(variants=parse_variants("a=jpeg, b=50:webp", max_pixels=10**8))
    encoded = await processes.run(encode_and_store, None, uuid.uuid4(), photo, options)
    for output in encoded.outputs:
        assert output.data is not None
        assert len(output.data) == output.size
        assert decode(output.data).width == output.width


async def test_an_image_refused_in_a_worker_process_keeps_its_reason(
    processes: CodecPool, tmp_path: Path
) -> None:
    with pytest.raises(CodecError) as refused:
        await processes.run(
            encode_and_store, LocalStorage(tmp_path), uuid.uuid4(), b"<html>", CodecOptions()
        )
    assert refused.value.code == "not_an_image"


async def test_a_worker_killed_mid_image_is_replaced_and_the_image_tried_again(
    processes: CodecPool, tmp_path: Path
) -> None:
    first = await processes.run(pid)
    survivor = await processes.run(die_the_first_time, str(tmp_path / "died"))
    assert survivor != first  # a new process did it
    assert await processes.run(pid) == survivor  # and stays for the next calls


async def test_an_image_whose_worker_dies_every_time_fails_in_the_end(
    processes: CodecPool,
) -> None:
    with pytest.raises(CodecCrashed, match=f"died {ATTEMPTS} times"):
        await processes.run(die_every_time)
    assert await processes.run(pid) > 0  # the pool still works for the others


async def test_threads_run_it_in_this_process() -> None:
    threads = CodecPool(workers=2, processes=False)
    try:
        assert await threads.run(pid) == os.getpid()
    finally:
        threads.shutdown()
