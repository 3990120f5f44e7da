"""The output formats: each one's encoder per effort, file extension and size limit."""

from __future__ import annotations

import enum
from typing import Any, Protocol

from imgcrunch.imaging import avif, jpeg, webp
from imgcrunch.imaging.effort import Effort


class Format(enum.StrEnum):
    JPEG = "jpeg"
    WEBP = "webp"
    AVIF = "avif"


class Encoder(Protocol):
    def save_options(self, quality: int, *, grey: bool = False) -> dict[str, Any]: ...

    def save(self, image: Any, quality: int, *, grey: bool = False) -> bytes: ...


_MODULES: dict[Format, Any] = {Format.JPEG: jpeg, Format.WEBP: webp, Format.AVIF: avif}


def encoder(format: Format, effort: Effort) -> Encoder:
    encoder: Encoder = _MODULES[format].encoder(effort)
    return encoder


def extension(format: Format) -> str:
    return str(_MODULES[format].EXTENSION)


def max_side(format: Format) -> int:
    return int(_MODULES[format].MAX_SIDE)
