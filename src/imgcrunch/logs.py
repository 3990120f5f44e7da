"""Logging for the API and the workers: readable text by default, one JSON object per line with
`IMGCRUNCH_LOG_FORMAT=json`; every line carries the request and image it is about, if any.

The ids travel in context variables, set by the pipeline where work on a request or an image
begins: asyncio gives each task its own copy, so concurrent images never mix them up.
"""

from __future__ import annotations

import json
import logging
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Literal

request_id: ContextVar[uuid.UUID | None] = ContextVar("imgcrunch_request_id", default=None)
image_id: ContextVar[int | None] = ContextVar("imgcrunch_image_id", default=None)

# A line per image or per HTTP call from these is noise, not a log.
_QUIET = ("httpx", "pyvips", "alembic.runtime.plugins")


class _Ids(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        record.image_id = image_id.get()
        return True


class _Text(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s%(ids)s")

    def format(self, record: logging.LogRecord) -> str:
        ids = [
            f"{name}={value}"
            for name in ("request_id", "image_id")
            if (value := getattr(record, name, None)) is not None
        ]
        record.ids = f" [{' '.join(ids)}]" if ids else ""
        return super().format(record)


class _Json(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ("request_id", "image_id"):
            if (value := getattr(record, name, None)) is not None:
                line[name] = str(value) if isinstance(value, uuid.UUID) else value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure(log_format: Literal["text", "json"], level: int = logging.INFO) -> None:
    """One handler on the root logger, for our loggers, uvicorn's and Celery's alike."""
    handler = logging.StreamHandler()
    handler.setFormatter(_Json() if log_format == "json" else _Text())
    handler.addFilter(_Ids())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
