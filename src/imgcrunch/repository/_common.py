"""What the repository's modules share."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    CursorResult,
)


def rowcount(result: Any) -> int:
    assert isinstance(result, CursorResult)
    return result.rowcount
