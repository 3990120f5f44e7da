"""A product feed's image origin, whose files change between runs, over real HTTP on 127.0.0.1.

Three kinds, as origins are:
- `both`: sends `ETag` and `Last-Modified`, and answers `If-None-Match` (preferred, as RFC
  9110 says) or `If-Modified-Since` with 304;
- `last_modified`: Python's own `http.server` serving a folder: `Last-Modified` from the file's
  mtime, 304 to `If-Modified-Since`, no ETag;
- `none`: neither, and every GET answered 200 with the whole file.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from functools import partial
from http.server import SimpleHTTPRequestHandler
from pathlib import Path
from typing import Any, Literal

import pytest

from tests.local_http import Handler, QuietServer, serve

Kind = Literal["both", "last_modified", "none"]


@dataclass
class CatalogOrigin:
    kind: Kind
    folder: Path
    base_url: str = ""
    answers: Counter[int] = field(default_factory=Counter)  # status: how many
    body_bytes: int = 0  # sent in answers' bodies, all told
    conditional: int = 0  # requests that carried If-None-Match or If-Modified-Since
    _versions: dict[str, int] = field(default_factory=dict)  # name: times it was changed
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, name: str, data: bytes) -> str:
        """Serve `data` at /<name> from now on (new bytes at the same URL); its URL."""
        path = self.folder / name
        path.write_bytes(data)
        version = self._versions[name] = self._versions.get(name, -1) + 1
        # Last-Modified has whole seconds: each version a minute after the one before.
        stamp = 1_700_000_000 + 60 * version
        os.utime(path, (stamp, stamp))
        return self.url(name)

    def url(self, name: str) -> str:
        return f"{self.base_url}/{name}"

    def count(self, status: int, sent: int, conditional: bool) -> None:
        with self._lock:
            self.answers[status] += 1
            self.body_bytes += sent
            self.conditional += conditional

    def reset_counts(self) -> None:
        with self._lock:
            self.answers.clear()
            self.body_bytes = 0
            self.conditional = 0


def _validating_handler(origin: CatalogOrigin) -> type[Handler]:
    class ValidatingHandler(Handler):
        def do_GET(self) -> None:
            path = origin.folder / self.path.lstrip("/").split("?")[0]
            asked = self.headers.get("If-None-Match"), self.headers.get("If-Modified-Since")
            conditional = any(asked)
            if not path.is_file():
                origin.count(404, 0, conditional)
                self.send(404, b"", "text/plain")
                return
            data = path.read_bytes()
            headers = {}
            if origin.kind == "both":
                etag = f'"{hashlib.sha256(data).hexdigest()[:20]}"'
                modified = formatdate(path.stat().st_mtime, usegmt=True)
                headers = {"ETag": etag, "Last-Modified": modified}
                # If-None-Match wins where both are sent (RFC 9110, 13.2.2).
                fresh = asked[0] == etag if asked[0] else asked[1] == modified
                if conditional and fresh:
                    origin.count(304, 0, conditional)
                    self.send(304, headers=headers)
                    return
            origin.count(200, len(data), conditional)
            self.send(200, data, "image/jpeg", headers=headers)

    return ValidatingHandler


class _StandardLibraryHandler(SimpleHTTPRequestHandler):
    """http.server's own, counting what it answers and sends; quiet, and HTTP/1.1."""

    protocol_version = "HTTP/1.1"
    origin: CatalogOrigin

    def send_response(self, code: int, message: str | None = None) -> None:
        self._status = code
        super().send_response(code, message)

    def copyfile(self, source: Any, outputfile: Any) -> None:
        data = source.read()
        self._sent = len(data)
        outputfile.write(data)

    def handle_one_request(self) -> None:
        self._status, self._sent = 0, 0
        super().handle_one_request()
        if self._status:
            conditional = bool(self.headers and self.headers.get("If-Modified-Since"))
            self.origin.count(self._status, self._sent, conditional)

    def log_message(self, format: str, *args: Any) -> None:
        pass


CatalogOriginFactory = Callable[[Kind], CatalogOrigin]


@pytest.fixture
def catalog_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CatalogOriginFactory]:
    """`catalog_origin(kind)`: an origin of that kind, serving files this test puts there."""
    servers: list[QuietServer] = []

    def start(kind: Kind) -> CatalogOrigin:
        origin = CatalogOrigin(kind, tmp_path_factory.mktemp(f"origin-{kind}"))
        if kind == "last_modified":
            handler: Any = type("Handler", (_StandardLibraryHandler,), {"origin": origin})
            server = serve(partial(handler, directory=str(origin.folder)))  # type: ignore[arg-type]
        else:
            server = serve(_validating_handler(origin))
        origin.base_url = server.base_url
        servers.append(server)
        return origin

    yield start
    for server in servers:
        server.stop()
