"""Fixtures: a real HTTP image server, a webhook receiver, and real `imgcrunch serve` processes."""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from imgcrunch.signing import WebhookVerificationError, verify
from tests import servers
from tests.imaging import heavily_compressed_photo, png_bomb
from tests.service_process import ServiceProcess

DATA = Path(__file__).parent / "data"
PHOTOS = sorted((DATA / "photos").glob("*.jpg"))

# Tests that start real processes (a service, Celery workers, a browser, an S3 server) are slow:
# `pytest -m "not slow"` leaves them out, for a quick run while working; `make test` runs all.
_SLOW_FIXTURES = frozenset({"service", "make_service", "scale_out", "page", "s3_server", "bucket"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- PostgreSQL and Redis -------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres() -> Iterator[servers.Postgres]:
    server = servers.connect_postgres()
    yield server
    server.drop_all()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[servers.Redis]:
    server = servers.connect_redis()
    yield server
    server.clean()


@dataclass(frozen=True)
class Bucket:
    """The session's bucket on its S3 server, under a prefix of this test's own."""

    server: servers.SeaweedS3
    name: str
    prefix: str

    def storage_url(self, prefix: str | None = None) -> str:
        return f"s3://{self.name}/{self.prefix if prefix is None else prefix}"

    def stored(self) -> list[str]:
        """Every key under this test's prefix, relative to it."""
        found = self.server.keys(self.name, f"{self.prefix}/")
        return [key.removeprefix(f"{self.prefix}/") for key in found]

    def settings(self) -> dict[str, str]:
        """make_service's settings for it; the credentials are in the environment."""
        return {"storage_url": self.storage_url(), "s3_endpoint_url": self.server.endpoint}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.SeaweedS3]:
    """SeaweedFS, started once a session (about ten seconds), with one bucket; each test takes
    a prefix of its own in it (a new bucket costs SeaweedFS seven volumes)."""
    server = servers.SeaweedS3.start_in(tmp_path_factory.getbasetemp())
    server.create_bucket(SESSION_BUCKET)
    yield server
    server.remove()


SESSION_BUCKET = "imgcrunch-tests"


@pytest.fixture
def bucket(s3_server: servers.SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> Bucket:
    """A fresh prefix in the session's bucket, with the server's credentials in this process's
    AWS variables (and so in those of the services it starts)."""
    for key, value in s3_server.credentials.items():
        monkeypatch.setenv(key, value)
    return Bucket(s3_server, SESSION_BUCKET, f"t-{uuid.uuid4().hex[:12]}")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each kind, for tests that must hold on both."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
    postgres: servers.Postgres = request.getfixturevalue("postgres")
    return postgres.new_database()


# --- the image server -----------------------------------------------------------------------


@dataclass
class ImageServer:
    """Serves the test photos over real HTTP on 127.0.0.1, plus routes that misbehave.

    /photos/<name>      a photo (any query string is ignored, so `?n=1` makes distinct URLs)
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
    """

    base_url: str
    hits: Counter[str] = field(default_factory=Counter)
    first_asked: dict[str, float] = field(default_factory=dict)  # path?query: time.monotonic()
    delay: float = 0.0  # added before every photo, to stretch a request over time
    stall_seconds: float = 30.0

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def photo_urls(self, count: int, *, tag: str = "") -> list[str]:
        names = [photo.name for photo in PHOTOS]
        return [self.url(f"/photos/{names[n % len(names)]}?n={tag}{n}") for n in range(count)]


def _image_handler(server_state: ImageServer) -> type[BaseHTTPRequestHandler]:
    files = {f"/photos/{photo.name}": photo.read_bytes() for photo in PHOTOS}
    files["/logo.png"] = (DATA / "logo.png").read_bytes()
    files["/compressed.jpg"] = heavily_compressed_photo()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            server_state.hits[self.path] += 1
            server_state.first_asked.setdefault(self.path, time.monotonic())
            if path in files:
                if server_state.delay:
                    time.sleep(server_state.delay)
                kind = "image/png" if path.endswith(".png") else "image/jpeg"
                self._send(200, files[path], kind)
            elif path == "/slow.jpg":
                time.sleep(float(parse_qs(urlsplit(self.path).query)["seconds"][0]))
                self._send(200, files[f"/photos/{PHOTOS[0].name}"], "image/jpeg")
            elif path in _HOSTILE:
                getattr(self, _HOSTILE[path])()
            elif path == "/page.jpg":
                self._send(200, b"<!doctype html><html><body>Not here</body></html>", "image/jpeg")
            elif path == "/error.jpg":
                self._send(500, b"boom", "text/plain")
            elif path == "/redirect":
                self._redirect(parse_qs(urlsplit(self.path).query)["to"][0])
            elif path == "/loop":
                self._redirect("/loop")
            elif path == "/flaky":
                self._flaky(parse_qs(urlsplit(self.path).query))
            elif path == "/stall.jpg":
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", "100000")
                self.end_headers()
                time.sleep(server_state.stall_seconds)
            else:
                self._send(404, b"not found", "text/plain")

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
            self.wfile.write(files[f"/photos/{PHOTOS[0].name}"])

        def _long_length(self) -> None:
            photo = files[f"/photos/{PHOTOS[0].name}"]
            self._head(200, "image/jpeg", length=2 * len(photo))
            self.wfile.write(photo)
            self.close_connection = True

        def _truncated(self) -> None:
            photo = files[f"/photos/{PHOTOS[0].name}"]
            self._send(200, photo[: len(photo) // 2], "image/jpeg")

        def _bomb(self) -> None:
            self._send(200, png_bomb(50_000, 50_000), "image/png")

        def _not_http(self) -> None:
            self.wfile.write(files[f"/photos/{PHOTOS[0].name}"])
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
            if server_state.hits[self.path] <= int(query["fail"][0]):
                self.send_response(int(query.get("status", ["503"])[0]))
                if "retry_after" in query:
                    self.send_header("Retry-After", query["retry_after"][0])
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self._send(200, files[f"/photos/{PHOTOS[0].name}"], "image/jpeg")

        def _redirect(self, location: str) -> None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _send(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


_HOSTILE = {
    "/drip.jpg": "_drip",
    "/endless.jpg": "_endless",
    "/short-length.jpg": "_short_length",
    "/long-length.jpg": "_long_length",
    "/truncated.jpg": "_truncated",
    "/bomb.png": "_bomb",
    "/not-http.jpg": "_not_http",
}
_HOSTILE_FOR = 30.0  # seconds a hostile answer goes on if the client never hangs up


def _endless(data: bytes) -> Iterator[bytes]:
    """`data` again and again, for _HOSTILE_FOR seconds; a write to a client that hung up
    raises ConnectionError, which ends the handler quietly (_Server.handle_error)."""
    deadline = time.monotonic() + _HOSTILE_FOR
    while time.monotonic() < deadline:
        yield data


class _Server(ThreadingHTTPServer):
    """A threaded HTTP server that takes a client hanging up as ordinary, not as an error."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@pytest.fixture(scope="session")
def image_server() -> Iterator[ImageServer]:
    state = ImageServer(base_url="")
    server = _Server(("127.0.0.1", 0), _image_handler(state))
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


# --- the webhook receiver -------------------------------------------------------------------


@dataclass
class WebhookReceiver:
    url: str
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    def wait_for(self, count: int, timeout: float = 30.0) -> list[tuple[dict[str, str], bytes]]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.received)


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(url="")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = _Server(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/imgcrunch"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    server.shutdown()
    server.server_close()


# --- a scripted webhook receiver -----------------------------------------------------------


@dataclass
class Receiver:
    """A webhook endpoint that answers from a script and verifies every delivery it gets."""

    url: str = ""
    script: list[str] = field(default_factory=list)  # "500", "timeout", "429:1", "410", "204"
    secret: str = ""  # when set, every delivery is checked with it
    attempts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def accepted(self) -> list[dict[str, Any]]:
        return [a for a in self.attempts if a["answer"].startswith("2")]

    def wait_for(self, predicate: Any, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, self.attempts
            time.sleep(0.05)


def _receiver_handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            try:
                event = verify(body, dict(self.headers.items()), receiver.secret)
                verified = True
            except (WebhookVerificationError, ValueError):
                event, verified = None, False
            script = receiver.script
            answer = script.pop(0) if len(script) > 1 else script[0]
            receiver.attempts.append(
                {
                    "id": self.headers["webhook-id"],
                    "at": time.monotonic(),
                    "verified": verified,
                    "event": event,
                    "answer": answer,
                }
            )
            if answer == "timeout":
                time.sleep(2)  # longer than the service's webhook timeout in these tests
                answer = "204"
            code, _, retry_after = answer.partition(":")
            self.send_response(int(code))
            if retry_after:
                self.send_header("Retry-After", retry_after)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


def start_receiver(receiver: Receiver, port: int = 0) -> _Server:
    server = _Server(("127.0.0.1", port), _receiver_handler(receiver))
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/imgcrunch"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver(script=["204"])
    server = start_receiver(receiver)
    yield receiver
    server.shutdown()
    server.server_close()


# --- the service, as a real process ---------------------------------------------------------


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """A Prometheus endpoint's samples, by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(httpx.get(url).text)
        for sample in family.samples
    }


Service = ServiceProcess


ServiceFactory = Callable[..., Service]


def _new_service(data_dir: Path, settings: dict[str, str]) -> Service:
    # Short timeouts: the test origins answer at once, or are meant not to.
    quick = {"IMGCRUNCH_READ_TIMEOUT": "2", "IMGCRUNCH_FETCH_TIMEOUT": "5"}
    named = {f"IMGCRUNCH_{key.upper()}": value for key, value in settings.items()}
    return ServiceProcess.on_loopback(data_dir, quick | named)


@pytest.fixture
def make_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceFactory]:
    services: list[Service] = []

    def make(**settings: str) -> Service:
        service = _new_service(tmp_path_factory.mktemp("service"), settings)
        services.append(service)
        service.start()
        return service

    yield make
    for service in services:
        service.stop()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One shared service for tests that only add requests of their own."""
    shared = _new_service(tmp_path_factory.mktemp("shared-service"), {})
    shared.start()
    yield shared
    shared.stop()
