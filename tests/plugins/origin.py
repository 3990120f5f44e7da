"""The image origin: the test photos over real HTTP on 127.0.0.1, with routes that misbehave."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.imaging import DATA, MARKETPLACE, PHOTOS, heavily_compressed_photo, png_bomb
from tests.local_http import Handler, serve


@dataclass
class ImageServer:
    """Serves the test photos over real HTTP on 127.0.0.1, plus routes that misbehave.

    /photos/<name>      a photo (any query string is ignored, so `?n=1` makes distinct URLs)
    /marketplace/<name> a product shot of tests/data/marketplace (too small, off-white...)
    /held/<name>        a photo, once `release` is set (see the `held_origin` fixture)
    /logo.png           an RGBA PNG
    /compressed.jpg     a small photo at JPEG quality 20 with EXIF, XMP and an sRGB profile:
                        re-encoding it would not make it smaller
    /missing.jpg        404           /error.jpg     500
    /page.jpg           HTML served as image/jpeg
    /stall.jpg          headers, then silence for `stall_seconds`
    /slow.jpg?seconds=S a photo after S seconds of silence (any other query makes a distinct URL)

    Hostile ones:
    /drip.jpg           slowloris: a byte every 0.2 s, never silent long enough to time out a read
    /endless.jpg        a chunked body that never ends
    /short-length.jpg   Content-Length 2,000, then a whole photo (keep-alive: the rest is junk)
    /long-length.jpg    Content-Length of twice the photo, half of it, then hangs up
    /truncated.jpg      the first half of a photo, its length declared honestly
    /bomb.png           a real 50,000 x 50,000 PNG (tests/imaging.png_bomb)
    /not-http.jpg       a photo's bytes with no HTTP around them, then hangs up
    /redirect?to=<url>  302 to that URL (relative or absolute)
    /loop               302 to itself
    /flaky?fail=N&status=S&retry_after=T&key=K   S (default 503) for its first N hits, then a
                        photo; each distinct query string counts its own hits

    A hostile answer that the client never hangs up on goes on for HOSTILE_FOR seconds: a
    client that reports it any other way than by its own limit did not stop it.
    """

    base_url: str
    hits: Counter[str] = field(default_factory=Counter)  # path?query: requests for it
    first_asked: dict[str, float] = field(default_factory=dict)  # path?query: time.monotonic()
    delay: float = 0.0  # added before every photo, to stretch a request over time
    stall_seconds: float = 30.0
    release: threading.Event = field(default_factory=threading.Event)  # lets /held/ answer
    held: int = 0  # /held/ requests waiting for `release` right now
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def photo_urls(self, count: int, *, tag: str = "", held: bool = False) -> list[str]:
        """`count` distinct URLs of the photos, in turn; `held`: under /held/."""
        folder = "held" if held else "photos"
        names = [photo.name for photo in PHOTOS]
        return [self.url(f"/{folder}/{names[n % len(names)]}?n={tag}{n}") for n in range(count)]

    def hold(self) -> None:
        """/held/ photos wait from now on, until `release` is set."""
        self.release.clear()

    def _count_held(self, change: int) -> None:
        with self._lock:
            self.held += change


HOSTILE_FOR = 30.0


def _image_handler(state: ImageServer) -> type[Handler]:
    files = {f"/photos/{photo.name}": photo.read_bytes() for photo in PHOTOS}
    files["/logo.png"] = (DATA / "logo.png").read_bytes()
    files |= {f"/marketplace/{shot.name}": shot.read_bytes() for shot in MARKETPLACE}
    files["/compressed.jpg"] = heavily_compressed_photo()
    first_photo = files[f"/photos/{PHOTOS[0].name}"]

    class ImageHandler(Handler):
        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            query = parse_qs(urlsplit(self.path).query)
            state.hits[self.path] += 1
            state.first_asked.setdefault(self.path, time.monotonic())
            if path.startswith("/held/"):
                state._count_held(+1)
                try:
                    state.release.wait()
                finally:
                    state._count_held(-1)
                path = path.replace("/held/", "/photos/", 1)
            if path in files:
                if state.delay:
                    time.sleep(state.delay)
                kind = "image/png" if path.endswith(".png") else "image/jpeg"
                self.send(200, files[path], kind)
            elif path == "/slow.jpg":
                time.sleep(float(query["seconds"][0]))
                self.send(200, first_photo, "image/jpeg")
            elif path in _HOSTILE:
                getattr(self, _HOSTILE[path])()
            elif path == "/page.jpg":
                self.send(200, b"<!doctype html><html><body>Not here</body></html>", "image/jpeg")
            elif path == "/error.jpg":
                self.send(500, b"boom", "text/plain")
            elif path == "/redirect":
                self.send(302, headers={"Location": query["to"][0]})
            elif path == "/loop":
                self.send(302, headers={"Location": "/loop"})
            elif path == "/flaky":
                self._flaky(query)
            elif path == "/stall.jpg":
                self._head(200, "image/jpeg", length=100_000)
                time.sleep(state.stall_seconds)
            else:
                self.send(404, b"not found", "text/plain")

        def _drip(self) -> None:
            self._head(200, "image/jpeg", length=100_000)
            for byte in _endless(b"\xff"):
                self.wfile.write(byte)
                self.wfile.flush()
                time.sleep(0.2)

        def _endless(self) -> None:
            self._head(200, "image/jpeg", chunked=True)
            chunk = b"\xff" * 65536
            for data in _endless(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"):
                self.wfile.write(data)

        def _short_length(self) -> None:
            self._head(200, "image/jpeg", length=2000)
            self.wfile.write(first_photo)

        def _long_length(self) -> None:
            self._head(200, "image/jpeg", length=2 * len(first_photo))
            self.wfile.write(first_photo)
            self.close_connection = True

        def _truncated(self) -> None:
            self.send(200, first_photo[: len(first_photo) // 2], "image/jpeg")

        def _bomb(self) -> None:
            self.send(200, png_bomb(50_000, 50_000), "image/png")

        def _not_http(self) -> None:
            self.wfile.write(first_photo)
            self.close_connection = True

        def _head(self, status: int, kind: str, *, length: int = 0, chunked: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Content-Length", str(length))
            self.end_headers()

        def _flaky(self, query: dict[str, list[str]]) -> None:
            # Fails its first `fail` hits (per distinct URL) with `status`, then serves a photo.
            if state.hits[self.path] <= int(query["fail"][0]):
                headers = {"Retry-After": query["retry_after"][0]} if "retry_after" in query else {}
                self.send(int(query.get("status", ["503"])[0]), headers=headers)
            else:
                self.send(200, first_photo, "image/jpeg")

    return ImageHandler


_HOSTILE = {
    "/drip.jpg": "_drip",
    "/endless.jpg": "_endless",
    "/short-length.jpg": "_short_length",
    "/long-length.jpg": "_long_length",
    "/truncated.jpg": "_truncated",
    "/bomb.png": "_bomb",
    "/not-http.jpg": "_not_http",
}


def _endless(data: bytes) -> Iterator[bytes]:
    """`data` again and again, for HOSTILE_FOR seconds; a write to a client that hung up
    raises ConnectionError, which ends the handler quietly (QuietServer.handle_error)."""
    deadline = time.monotonic() + HOSTILE_FOR
    while time.monotonic() < deadline:
        yield data


@pytest.fixture(scope="session")
def image_server() -> Iterator[ImageServer]:
    state = ImageServer(base_url="")
    state.release.set()
    server = serve(_image_handler(state))
    state.base_url = server.base_url
    yield state
    state.release.set()
    server.stop()


OriginDelay = Callable[[float], ImageServer]


@pytest.fixture
def origin_delay(image_server: ImageServer) -> Iterator[OriginDelay]:
    """`origin_delay(seconds)` makes every photo of the origin wait that long before it is
    sent, from then until the test ends (or it is called again), and returns the origin."""

    def delay(seconds: float) -> ImageServer:
        image_server.delay = seconds
        return image_server

    yield delay
    image_server.delay = 0.0


@pytest.fixture
def held_origin(image_server: ImageServer) -> Iterator[ImageServer]:
    """The origin with its /held/ photos waiting until the test sets `release` (at the end of
    the test at the latest)."""
    image_server.hold()
    yield image_server
    image_server.release.set()
