"""Two kinds of failure: an image's own, and our infrastructure's (pure: no I/O).

An image fails only for its own reasons: the origin's answer, its bytes, the limits
(`http_errors.FetchError`, `codec.CodecError`). A full disk, a database or broker that is away,
a process out of memory, is never the image's fault: the work is handed back and tried again
later, and the request says why it is waiting.
"""

from __future__ import annotations

import errno

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

STORAGE_FULL = "storage full"
STORAGE_UNAVAILABLE = "storage unavailable"
DATABASE_UNAVAILABLE = "database unavailable"
OUT_OF_MEMORY = "out of memory"

_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


class InfrastructureFault(Exception):
    """Work could not be done for a reason of ours; nothing about the image is recorded.

    `reason` is one of the constants above, `detail` what happened, for the status and log.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    @property
    def waiting(self) -> str:
        """What the status shows while the request waits for it to clear."""
        return f"{self.reason}: {self.detail}"


def storage_fault(error: OSError) -> InfrastructureFault:
    """A write or read of our own storage failed."""
    reason = STORAGE_FULL if error.errno in _FULL else STORAGE_UNAVAILABLE
    return InfrastructureFault(reason, error.strerror or type(error).__name__)


def room_fault(free: int | None, floor: int) -> InfrastructureFault | None:
    """The storage has less room than IMGCRUNCH_MIN_FREE_BYTES: no work is claimed."""
    if free is None or free >= floor:
        return None
    return InfrastructureFault(
        STORAGE_FULL, f"{free} bytes free, below IMGCRUNCH_MIN_FREE_BYTES ({floor})"
    )


def infrastructure_fault(error: BaseException) -> InfrastructureFault | None:
    """The fault of ours that `error`, raised by the work loop's own steps, is; None if it is
    not one (a bug of ours, which only a bounded number of retries may excuse).

    Storage errors arrive as faults already (`storage_fault`, where storage is called), so an
    OSError left here is the database driver's own, raised before SQLAlchemy could wrap it (a
    refused or timed-out connection).
    """
    if isinstance(error, InfrastructureFault):
        return error
    if isinstance(error, MemoryError):
        return InfrastructureFault(OUT_OF_MEMORY, "a process ran out of memory")
    if isinstance(error, OperationalError | InterfaceError) or (
        isinstance(error, DBAPIError) and error.connection_invalidated
    ):
        return InfrastructureFault(DATABASE_UNAVAILABLE, _first_line(error.orig))
    if isinstance(error, OSError):
        return InfrastructureFault(DATABASE_UNAVAILABLE, _first_line(error))
    return None


def _first_line(error: BaseException | None) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
