"""faults: which failures are an image's own, and which are ours (never recorded against it)."""

from __future__ import annotations

import errno

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from imgcrunch.faults import (
    DATABASE_UNAVAILABLE,
    OUT_OF_MEMORY,
    STORAGE_FULL,
    STORAGE_UNAVAILABLE,
    InfrastructureFault,
    infrastructure_fault,
    room_fault,
    storage_fault,
)
from imgcrunch.http_errors import FetchError


def test_a_full_disk_is_storage_full_and_other_write_errors_storage_unavailable() -> None:
    full = storage_fault(OSError(errno.ENOSPC, "No space left on device"))
    assert (full.reason, full.waiting) == (STORAGE_FULL, "storage full: No space left on device")
    quota = storage_fault(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert quota.reason == STORAGE_FULL
    assert storage_fault(OSError(errno.EROFS, "Read-only file system")).reason == (
        STORAGE_UNAVAILABLE
    )


def test_the_database_away_is_ours_whether_or_not_sqlalchemy_wrapped_it() -> None:
    wrapped = OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))
    fault = infrastructure_fault(wrapped)
    assert fault is not None
    assert fault.reason == DATABASE_UNAVAILABLE
    assert "ConnectionRefusedError" in fault.detail
    raw = infrastructure_fault(ConnectionRefusedError(111, "Connect call failed"))
    assert raw is not None
    assert raw.reason == DATABASE_UNAVAILABLE
    assert infrastructure_fault(TimeoutError()) is not None


def test_memory_is_ours_and_a_fault_stays_itself() -> None:
    oom = infrastructure_fault(MemoryError())
    assert oom is not None
    assert oom.reason == OUT_OF_MEMORY
    full = storage_fault(OSError(errno.ENOSPC, "No space left on device"))
    assert infrastructure_fault(full) is full


@pytest.mark.parametrize(
    "error",
    [
        ValueError("a bug of ours"),
        KeyError("x"),
        IntegrityError("INSERT", {}, Exception("duplicate key")),  # a bug, not an outage
        FetchError("http_error", "HTTP 404"),  # the origin's answer: the image's own
    ],
)
def test_bugs_and_an_images_own_failures_are_not_faults_of_ours(error: Exception) -> None:
    assert infrastructure_fault(error) is None


def test_the_free_space_floor() -> None:
    assert room_fault(None, 1000) is None  # a store without such a bound
    assert room_fault(1000, 1000) is None
    below = room_fault(999, 1000)
    assert isinstance(below, InfrastructureFault)
    assert below.waiting == "storage full: 999 bytes free, below IMGCRUNCH_MIN_FREE_BYTES (1000)"
