"""Local storage: atomic, content-addressed, confined to its folder."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path

import pytest

from imgcrunch import storage as storage_module
from imgcrunch.storage import LocalStorage, image_key, output_csv_key


def test_put_then_get(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put("csv/x/output.csv", b"a,b\r\n")
    assert storage.get("csv/x/output.csv") == b"a,b\r\n"
    assert storage.exists("csv/x/output.csv")
    assert (tmp_path / "csv" / "x" / "output.csv").read_bytes() == b"a,b\r\n"


def test_a_file_is_stored_and_read_back_a_piece_at_a_time(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    data = os.urandom(3 * storage_module.CHUNK_SIZE + 17)
    (tmp_path / "upload.csv").write_bytes(data)
    with (tmp_path / "upload.csv").open("rb") as file:
        file.read(100)  # wherever the file stands, all of it is stored
        storage.put_file("csv/x/input.csv", file)

    chunks = list(storage.read_chunks("csv/x/input.csv"))
    assert [len(chunk) for chunk in chunks] == [storage_module.CHUNK_SIZE] * 3 + [17]
    assert b"".join(chunks) == data
    with storage.opened("csv/x/input.csv") as file:
        file.seek(-17, os.SEEK_END)
        assert file.read() == data[-17:]
    assert list((tmp_path / "store" / ".partial").iterdir()) == []


def test_a_missing_file_is_not_found_before_anything_is_read(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    with pytest.raises(FileNotFoundError):
        storage.read_chunks("csv/none/output.csv")
    with pytest.raises(FileNotFoundError), storage.opened("csv/none/input.csv"):
        pass


def test_an_overwrite_replaces_the_whole_file(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put("k", b"long old content")
    storage.put("k", b"new")
    assert storage.get("k") == b"new"
    assert list((tmp_path / ".partial").iterdir()) == []


def test_keys_are_content_addressed_per_scope() -> None:
    scope, request = uuid.uuid4(), uuid.uuid4()
    assert image_key(scope, b"same", "jpg") == image_key(scope, b"same", "jpg")
    assert image_key(scope, b"same", "jpg") != image_key(scope, b"other", "jpg")
    assert image_key(scope, b"same", "jpg") != image_key(uuid.uuid4(), b"same", "jpg")
    assert image_key(scope, b"x", "jpg").startswith(f"images/{scope}/")
    assert image_key(scope, b"x", "jpg").endswith(".jpg")
    assert output_csv_key(request) == f"csv/{request}/output.csv"


def test_removing_keys_removes_those_files_only(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    scope = uuid.uuid4()
    keys = [image_key(scope, f"{n}".encode(), "jpg") for n in range(3)]
    for key in keys:
        storage.put(key, b"x")
    storage.remove([keys[0], keys[2], image_key(scope, b"never stored", "jpg")])
    assert [storage.exists(key) for key in keys] == [False, True, False]


@pytest.mark.parametrize("key", ["../escape", "/etc/passwd", "images/../../x"])
def test_keys_cannot_leave_the_folder(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError, match="invalid storage key"):
        LocalStorage(tmp_path / "root").put(key, b"x")


def test_partial_writes_of_a_dead_process_are_removed(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put("kept", b"x")
    partial = tmp_path / ".partial"
    (partial / "old").write_bytes(b"half")
    (partial / "fresh").write_bytes(b"half")
    an_hour_ago = time.time() - 3600
    os.utime(partial / "old", (an_hour_ago, an_hour_ago))
    assert storage.remove_partial_writes(older_than=600) == 1
    assert [path.name for path in partial.iterdir()] == ["fresh"]
    assert storage.remove_partial_writes() == 1
    assert storage.get("kept") == b"x"


def test_a_folder_removed_behind_its_back_is_made_again(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    storage.put("images/r1/a.jpg", b"first")
    shutil.rmtree(tmp_path / "images")
    shutil.rmtree(tmp_path / ".partial")
    storage.put("images/r1/b.jpg", b"second")
    assert storage.get("images/r1/b.jpg") == b"second"


def synced_paths(monkeypatch: pytest.MonkeyPatch) -> tuple[list[Path], list[Path]]:
    """What gets flushed from here on, through the real calls: the folders syncfs is called on,
    and the files and folders fsync is."""
    syncfs_on: list[Path] = []
    fsync_on: list[Path] = []
    real_syncfs, real_fsync = storage_module._SYNCFS, os.fsync

    def opened(fd: int) -> Path:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))

    def syncfs(fd: int) -> int:
        syncfs_on.append(opened(fd))
        assert real_syncfs is not None
        return real_syncfs(fd)

    def fsync(fd: int) -> None:
        fsync_on.append(opened(fd))
        real_fsync(fd)

    if real_syncfs is not None:
        monkeypatch.setattr(storage_module, "_SYNCFS", syncfs)
    monkeypatch.setattr(os, "fsync", fsync)
    return syncfs_on, fsync_on


BATCH_KEYS = [f"images/r1/{n}.jpg" for n in range(5)] + ["images/r2/0.jpg"]


@pytest.mark.skipif(storage_module._SYNCFS is None, reason="Linux's syncfs is not here")
def test_a_batch_written_without_waiting_is_synced_at_once_by_one_syncfs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = LocalStorage(tmp_path)
    syncfs_on, fsync_on = synced_paths(monkeypatch)
    for n, key in enumerate(BATCH_KEYS):
        storage.put(key, f"image {n}".encode(), durable=False)
    assert (syncfs_on, fsync_on) == ([], [])  # written without waiting for the disk
    storage.sync(BATCH_KEYS)
    storage.sync([])  # nothing to do: no flush
    assert (syncfs_on, fsync_on) == ([tmp_path], [])  # the whole batch in one flush
    assert [storage.get(key) for key in BATCH_KEYS] == [f"image {n}".encode() for n in range(6)]
    assert list((tmp_path / ".partial").iterdir()) == []


def test_without_syncfs_a_batch_is_synced_file_by_file_and_folder_by_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage_module, "_SYNCFS", None)  # as on a system without syncfs
    storage = LocalStorage(tmp_path)
    _, fsync_on = synced_paths(monkeypatch)
    for n, key in enumerate(BATCH_KEYS):
        storage.put(key, f"image {n}".encode(), durable=False)
    assert fsync_on == []
    storage.sync(BATCH_KEYS)
    files = [tmp_path / key for key in BATCH_KEYS]
    folders = {tmp_path / "images" / "r1", tmp_path / "images" / "r2"}
    assert fsync_on[: len(files)] == files  # each file, then each folder that holds one
    assert set(fsync_on[len(files) :]) == folders
    assert len(fsync_on) == len(files) + len(folders)
    assert [storage.get(key) for key in BATCH_KEYS] == [f"image {n}".encode() for n in range(6)]


def test_a_durable_write_is_synced_before_it_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = LocalStorage(tmp_path)
    _, fsync_on = synced_paths(monkeypatch)
    storage.put("csv/r1/output.csv", b"a,b\r\n")
    # The temp file's bytes before the rename, then the folder that holds the new name.
    assert len(fsync_on) == 2
    assert fsync_on[0].parent == tmp_path / ".partial"
    assert fsync_on[1] == tmp_path / "csv" / "r1"


def test_syncing_a_key_never_written_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage_module, "_SYNCFS", None)
    with pytest.raises(FileNotFoundError):
        LocalStorage(tmp_path).sync(["images/r1/missing.jpg"])
