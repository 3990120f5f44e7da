"""What the benchmarks share: the photos, a fast local origin, the service run as its own
process with its settings, /proc sampling of CPU and memory, the codec's and the bare library's
limits on this machine, and uploading and following a request.

`throughput.py`, `scale_out.py`, `operate.py` and `claims.py` import it; it is not a benchmark.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import json
import math
import multiprocessing
import os
import resource
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

import httpx
import pyvips

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the runner is the tests'
from tests.service_process import ServiceError, ServiceProcess

from imgcrunch import codec

ROOT = Path(__file__).resolve().parent.parent
SHARED_PHOTOS = "../shared/corpus/photos"  # the fixed corpus: figures compare across time
REPO_PHOTOS = "tests/data/photos"
RESULTS = ROOT / "bench" / "results"

QUALITY = 50
URLS_PER_ROW = 3
POLL_SECONDS = 0.5
WARMUP_IMAGES = 32  # a first small request, untimed, like the codec limit's own warm-up
WARMUP_FIRST_URL = 10_000_000  # its URLs are numbered apart, so no timed image is cached
RSS_SAMPLE_SECONDS = 0.1
STALL_SECONDS = 60.0  # no image finished for this long: the service is stuck
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
LOG_TAIL_LINES = 40

# Settings the bench must own; any other IMGCRUNCH_* variable of the caller is passed through.
OWNED_SETTINGS = (
    "IMGCRUNCH_DATA_DIR",
    "IMGCRUNCH_PORT",
    "IMGCRUNCH_HOST",
    "IMGCRUNCH_PUBLIC_BASE_URL",
    "IMGCRUNCH_ALLOW_PRIVATE_NETWORKS",
)


class BenchError(Exception):
    """The bench itself could not measure (as opposed to a target not being met)."""


# --- photos -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhotoSet:
    label: str  # the folder, relative to the repository root
    names: list[str]
    data: list[bytes]

    def describe(self, sizes: set[tuple[int, int]]) -> str:
        if len(sizes) == 1:
            width, height = next(iter(sizes))
            return f"{len(self.names)} x {width}x{height} JPEG"
        return f"{len(self.names)} JPEGs of mixed sizes"


def load_photos() -> PhotoSet:
    for label in (SHARED_PHOTOS, REPO_PHOTOS):
        paths = sorted((ROOT / label).glob("*.jpg"))
        if paths:
            return PhotoSet(label, [p.name for p in paths], [p.read_bytes() for p in paths])
    raise BenchError(f"no photos in {SHARED_PHOTOS} nor {REPO_PHOTOS}")


# --- the codec limit ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CodecLimit:
    label: str  # "codec" (imgcrunch's, default effort) or "bare" (libvips, standard settings)
    images_per_s: float
    threads: int
    images: int
    single_thread_ms: float  # wall time per image, one image at a time
    cpu_ms_per_image: float  # process CPU per image in the threaded run
    other_cores: float  # CPU used by other processes on the machine meanwhile, in cores
    page_faults_per_image: float  # minor page faults of this process per image, threaded run


def _compress(data: bytes) -> codec.Compressed:
    return codec.compress(data, codec.CodecOptions(quality=QUALITY))


def _bare_libvips(data: bytes) -> bytes:
    """The bare library at its plainest: decode, encode at standard tables, quality 50, no
    Huffman optimisation; no policy, no metadata handling."""
    image = pyvips.Image.new_from_buffer(data, "", access="sequential")
    encoded: bytes = image.jpegsave_buffer(Q=QUALITY)
    return encoded


LIMITS: dict[str, Callable[[bytes], object]] = {"codec": _compress, "bare": _bare_libvips}


def photo_sizes(photos: Sequence[bytes]) -> set[tuple[int, int]]:
    """The photos' upright sizes, read by compressing each once (which also warms up)."""
    return {(c.width, c.height) for c in map(_compress, photos)}


def measure_single_thread(photos: Sequence[bytes], compress: Callable[[bytes], object]) -> float:
    """Milliseconds per image, one image at a time."""
    count = max(3 * len(photos), 20)
    started = time.perf_counter()
    for n in range(count):
        compress(photos[n % len(photos)])
    return (time.perf_counter() - started) * 1000 / count


def measure_codec_limit(
    photos: Sequence[bytes], images: int, threads: int, label: str = "codec"
) -> CodecLimit:
    compress = LIMITS[label]
    single_ms = measure_single_thread(photos, compress)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in pool.map(compress, list(photos) * threads):  # warm every thread
            pass
        cpu_started, busy_started = time.process_time(), machine_busy_seconds()
        faults_started = own_page_faults()
        started = time.perf_counter()
        for _ in pool.map(compress, (photos[n % len(photos)] for n in range(images))):
            pass
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        other = machine_busy_seconds() - busy_started - cpu
        faults = own_page_faults() - faults_started
    return CodecLimit(
        label=label,
        images_per_s=images / elapsed,
        threads=threads,
        images=images,
        single_thread_ms=single_ms,
        cpu_ms_per_image=cpu * 1000 / images,
        other_cores=max(other, 0.0) / elapsed,
        page_faults_per_image=faults / images,
    )


def own_page_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


# --- /proc ------------------------------------------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(path: str) -> list[str]:
    """The fields of a /proc stat file after the command name, numbered from `state` = 0."""
    return Path(path).read_text().rpartition(") ")[2].split()


def cpu_seconds(pid: int, *, main_thread_only: bool = False) -> float:
    """User + system CPU of a live process: all its threads, or only its first one."""
    path = f"/proc/{pid}/task/{pid}/stat" if main_thread_only else f"/proc/{pid}/stat"
    fields = _stat_fields(path)
    return (int(fields[11]) + int(fields[12])) / _TICKS


def page_faults(pid: int) -> int:
    """Minor page faults of a live process so far: memory the kernel had to map and zero."""
    return int(_stat_fields(f"/proc/{pid}/stat")[7])


def process_tree(pid: int) -> list[int]:
    """A live process and its descendants: the service and its codec worker processes, a
    Celery worker and its pool. (Children of any of its threads, each listed by its thread.)"""
    tree = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children = task.read_text().split()
        except OSError:  # the thread ended meanwhile
            continue
        for child in children:
            tree += process_tree(int(child))
    return tree


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and its live descendants."""
    return sum(_alive(cpu_seconds, member) for member in process_tree(pid))


def tree_page_faults(pid: int) -> int:
    return sum(int(_alive(page_faults, member)) for member in process_tree(pid))


def tree_status_kib(pid: int, key: str) -> int | None:
    """`status_kib` added up over a process and its descendants (for VmHWM, an upper bound of
    their peak together); None if the process itself is gone."""
    if status_kib(pid, key) is None:
        return None
    return sum(status_kib(member, key) or 0 for member in process_tree(pid))


def _alive(read: Callable[[int], float], pid: int) -> float:
    try:
        return read(pid)
    except OSError:  # it ended between listing and reading
        return 0.0


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent not idle since boot (first line of /proc/stat)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle, iowait = ticks[3], ticks[4]
    return (sum(ticks) - idle - iowait) / _TICKS


def status_kib(pid: int, key: str) -> int | None:
    """A `kB` line of /proc/<pid>/status (VmRSS, VmHWM), or None if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return None


class RssSampler(threading.Thread):
    """Reads a process's VmRSS (its descendants' with it) every 0.1 s and keeps the largest."""

    def __init__(self, pid: int) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid = pid
        self.peak_kib = 0
        self.samples = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(RSS_SAMPLE_SECONDS):
            rss = tree_status_kib(self.pid, "VmRSS")
            if rss is not None:
                self.peak_kib = max(self.peak_kib, rss)
                self.samples += 1

    def finish(self) -> None:
        self._done.set()
        self.join()


# --- the image origin -------------------------------------------------------------------------


class OriginProtocol(asyncio.Protocol):
    """Just enough HTTP/1.1 for a bench's origin: each request's head (bodies are never sent)
    goes to `answer`, whose bytes are the whole response; keep-alive."""

    def __init__(self, answer: Callable[[bytes], bytes]) -> None:
        self._answer = answer
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._buffer += data
        while (end := self._buffer.find(b"\r\n\r\n")) >= 0:
            head, self._buffer = self._buffer[:end], self._buffer[end + 4 :]
            self._transport.write(self._answer(head))
            if b"connection: close" in head.lower():
                self._transport.close()


def _from_memory(responses: dict[bytes, bytes], served: ctypes.c_uint64, head: bytes) -> bytes:
    """GET /p/<n>/<name>.jpg: the photo of that name, whatever n."""
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    path = parts[1] if len(parts) == 3 else b""
    response = responses.get(path.rpartition(b"/")[2]) if path[:3] == b"/p/" else None
    served.value += 1
    return response or _NOT_FOUND


_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


def _origin_responses(names: Sequence[str], photos: Sequence[bytes]) -> dict[bytes, bytes]:
    return {
        name.encode(): b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n"
        + f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
        for name, data in zip(names, photos, strict=True)
    }


async def _serve_origin(
    responses: dict[bytes, bytes], ready: Connection, served: ctypes.c_uint64
) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: OriginProtocol(functools.partial(_from_memory, responses, served)),
        "127.0.0.1",
        0,
        backlog=1024,
    )
    ready.send(server.sockets[0].getsockname()[1])
    ready.close()
    async with server:
        await server.serve_forever()


def _run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop  # the service's own dependency (uvicorn[standard]); cheaper per request
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def _origin_main(responses: dict[bytes, bytes], ready: Connection, served: ctypes.c_uint64) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops it
    _run_event_loop(_serve_origin(responses, ready, served))


class Origin:
    """The image origin, in a process of its own so that its CPU time is its own."""

    def __init__(self, photos: PhotoSet) -> None:
        context = multiprocessing.get_context("spawn")
        self._served = context.RawValue(ctypes.c_uint64, 0)
        receiver, sender = context.Pipe(duplex=False)
        responses = _origin_responses(photos.names, photos.data)
        self._process = context.Process(
            target=_origin_main, args=(responses, sender, self._served), daemon=True
        )
        self._process.start()
        sender.close()
        if not receiver.poll(START_TIMEOUT):
            self.stop()
            raise BenchError("the image origin did not start")
        port: int = receiver.recv()
        self.base_url = f"http://127.0.0.1:{port}"
        self.names = photos.names

    @property
    def served(self) -> int:
        return int(self._served.value)

    @property
    def pid(self) -> int:
        assert self._process.pid is not None
        return self._process.pid

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def url(self, n: int) -> str:
        return f"{self.base_url}/p/{n}/{self.names[n % len(self.names)]}"

    def stop(self) -> None:
        self._process.terminate()
        self._process.join(STOP_TIMEOUT)


# --- the service ------------------------------------------------------------------------------


def passed_through_settings() -> dict[str, str]:
    return {
        key: value
        for key, value in sorted(os.environ.items())
        if key.startswith("IMGCRUNCH_") and key not in OWNED_SETTINGS
    }


Service = ServiceProcess  # the runner the tests use too


def new_service(data_dir: Path, settings: dict[str, str] | None = None) -> Service:
    """A service on loopback with the caller's IMGCRUNCH_* settings and then `settings`."""
    return ServiceProcess.on_loopback(data_dir, passed_through_settings() | (settings or {}))


def start(service: Service) -> None:
    try:
        service.start(START_TIMEOUT)
    except ServiceError as error:
        raise BenchError(str(error)) from None


@contextmanager
def running_service(settings: dict[str, str] | None = None) -> Iterator[Service]:
    """A fresh service (new data folder, new process), stopped and removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="imgcrunch-bench-") as folder:
        service = new_service(Path(folder), settings)
        try:
            start(service)
            yield service
        except BaseException:
            print(f"--- service log ({service.log_path}), last lines:", file=sys.stderr)
            print(service.log_tail(), file=sys.stderr)
            raise
        finally:
            service.stop()


# --- one request ------------------------------------------------------------------------------


def build_csv(origin: Origin, images: int, *, first_url: int = 0) -> bytes:
    lines = ["S. No,Product Name,Input Image Urls"]
    for row in range(math.ceil(images / URLS_PER_ROW)):
        first = first_url + row * URLS_PER_ROW
        last = first_url + images
        urls = ",".join(origin.url(n) for n in range(first, min(first + URLS_PER_ROW, last)))
        lines.append(f'{row + 1},Product {row + 1},"{urls}"')
    return ("\r\n".join(lines) + "\r\n").encode()


@dataclass(frozen=True)
class Upload:
    request_id: str
    sent_at: float  # time.time() just before the POST
    answered_s: float  # how long POST /upload took to answer 202
    csv_bytes: int


def upload(client: httpx.Client, body: bytes) -> Upload:
    sent_at = time.time()
    started = time.perf_counter()
    response = client.post("/upload", files={"file": ("bench.csv", body, "text/csv")})
    answered = time.perf_counter() - started
    if response.status_code != 202:
        raise BenchError(f"POST /upload answered {response.status_code}: {response.text[:500]}")
    return Upload(str(response.json()["request_id"]), sent_at, answered, len(body))


def _failure(status: dict[str, Any]) -> BenchError:
    errors = "\n".join(
        f"  {e.get('url')}: {e.get('code')}: {e.get('message')}" for e in status["errors"][:5]
    )
    return BenchError(
        f"request ended {status['status']} ({status['progress']}); first errors:\n{errors}"
    )


def wait_until_completed(client: httpx.Client, request_id: str) -> dict[str, Any]:
    """Poll GET /status every POLL_SECONDS; raise unless the request completes without errors."""
    finished, changed_at = -1, time.monotonic()
    while True:
        response = client.get(f"/status/{request_id}")
        if response.status_code != 200:
            raise BenchError(f"GET /status answered {response.status_code}: {response.text}")
        status: dict[str, Any] = response.json()
        if status["status"] == "completed":
            return status
        if status["status"] not in ("queued", "processing"):
            raise _failure(status)
        progress = status["progress"]
        if progress["done"] + progress["failed"] != finished:
            finished, changed_at = progress["done"] + progress["failed"], time.monotonic()
        elif time.monotonic() - changed_at > STALL_SECONDS:
            raise BenchError(f"no progress for {STALL_SECONDS:g} s: {progress}")
        time.sleep(POLL_SECONDS)


def completion_seconds(sent: Upload, status: dict[str, Any], observed_at: float) -> float:
    """Upload to completion; the end is the server's completed_at (exact, same clock) when it is
    plausible, else when polling saw it (up to 0.25 s late)."""
    observed = observed_at - sent.sent_at
    completed_at = status.get("completed_at")
    if completed_at:
        exact = datetime.fromisoformat(completed_at).timestamp() - sent.sent_at
        if 0 < exact <= observed:
            return exact
    return observed


# --- runs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds so far of the service, the origin and the whole machine; origin requests."""

    service: float
    event_loop: float  # the service's main thread: asyncio, HTTP, database; no codec
    origin: float
    machine: float
    served: int
    page_faults: int  # the service's

    @classmethod
    def take(cls, service: Service, origin: Origin) -> CpuSnapshot:
        return cls(
            service=tree_cpu_seconds(service.pid),  # its codec worker processes too
            event_loop=cpu_seconds(service.pid, main_thread_only=True),
            origin=origin.cpu_seconds(),
            machine=machine_busy_seconds(),
            served=origin.served,
            page_faults=tree_page_faults(service.pid),
        )


@dataclass(frozen=True)
class RunResult:
    images: int
    seconds: float
    images_per_s: float
    limit_images_per_s: float  # mean of the codec limits measured just before and just after
    limit_drift: float  # how far those two limits are apart, relative to their mean
    share_of_limit: float
    # The same against the bare library's limit (libvips at standard settings), when measured.
    bare_limit_images_per_s: float | None
    share_of_bare_limit: float | None
    upload_answered_s: float
    peak_rss_mib: float  # VmHWM of the service and its workers, added up, at the end of the run
    sampled_rss_mib: float  # the largest VmRSS seen by sampling every 0.1 s
    service_cpu_ms_per_image: float
    event_loop_cpu_ms_per_image: float  # part of the above spent on the service's main thread
    origin_cpu_ms_per_request: float
    origin_requests: int
    cores_used: float  # (service + origin CPU) / seconds to completion
    other_cores: float  # CPU of every other process (the bench's own included) / wall time
    page_faults_per_image: float  # the service's minor page faults per image


@dataclass(frozen=True)
class Observed:
    """The raw facts of one end-to-end run."""

    images: int
    sent: Upload
    status: dict[str, Any]
    observed_at: float  # time.time() when polling saw the request completed
    before: CpuSnapshot
    after: CpuSnapshot
    peak_kib: int
    sampled_kib: int


def run_end_to_end(
    origin: Origin,
    images: int,
    settings: dict[str, str] | None = None,
    warmed: Callable[[Service], None] | None = None,
) -> Observed:
    """One timed request through a fresh service; `warmed` is called on the service once its
    warm-up request has completed, just before the timed one."""
    with (
        running_service(settings) as service,
        httpx.Client(base_url=service.base_url, timeout=60) as c,
    ):
        # A fresh process pays one-off costs on its first images (libvips and pyvips set-up,
        # first connections); a running service has paid them already.
        warmup = upload(c, build_csv(origin, WARMUP_IMAGES, first_url=WARMUP_FIRST_URL))
        wait_until_completed(c, warmup.request_id)
        if warmed is not None:
            warmed(service)
        body = build_csv(origin, images)
        sampler = RssSampler(service.pid)
        sampler.start()
        before = CpuSnapshot.take(service, origin)
        sent = upload(c, body)
        status = wait_until_completed(c, sent.request_id)
        observed_at = time.time()
        after = CpuSnapshot.take(service, origin)
        peak = tree_status_kib(service.pid, "VmHWM") or 0
        sampler.finish()
    return Observed(images, sent, status, observed_at, before, after, peak, sampler.peak_kib)


def summarise(
    run: Observed,
    before: CodecLimit,
    after: CodecLimit,
    bare: tuple[CodecLimit, CodecLimit] | None = None,
) -> RunResult:
    """The run's figures, against the codec limits measured just before and just after it (and
    the bare library's, measured with them)."""
    limit = (before.images_per_s + after.images_per_s) / 2
    bare_limit = (bare[0].images_per_s + bare[1].images_per_s) / 2 if bare else None
    seconds = completion_seconds(run.sent, run.status, run.observed_at)
    wall = run.observed_at - run.sent.sent_at
    service = run.after.service - run.before.service
    origin = run.after.origin - run.before.origin
    served = run.after.served - run.before.served
    other = run.after.machine - run.before.machine - service - origin
    return RunResult(
        images=run.images,
        seconds=seconds,
        images_per_s=run.images / seconds,
        limit_images_per_s=limit,
        limit_drift=abs(before.images_per_s - after.images_per_s) / limit,
        share_of_limit=run.images / seconds / limit,
        bare_limit_images_per_s=bare_limit,
        share_of_bare_limit=run.images / seconds / bare_limit if bare_limit else None,
        upload_answered_s=run.sent.answered_s,
        peak_rss_mib=run.peak_kib / 1024,
        sampled_rss_mib=run.sampled_kib / 1024,
        service_cpu_ms_per_image=service * 1000 / run.images,
        event_loop_cpu_ms_per_image=(run.after.event_loop - run.before.event_loop)
        * 1000
        / run.images,
        origin_cpu_ms_per_request=origin * 1000 / max(served, 1),
        origin_requests=served,
        # Over the time to completion: polling notices it up to POLL_SECONDS later, an idle
        # stretch that would make a short run look like it left cores unused.
        cores_used=(service + origin) / seconds,
        other_cores=max(other, 0.0) / wall,
        page_faults_per_image=(run.after.page_faults - run.before.page_faults) / run.images,
    )


def codec_line(limit: CodecLimit) -> str:
    name = "codec limit" if limit.label == "codec" else "bare libvips"
    return (
        f"{name:17}: {limit.images_per_s:5.1f} images/s  ({limit.threads} threads; "
        f"{limit.single_thread_ms:.1f} ms/image on one thread, "
        f"{limit.cpu_ms_per_image:.1f} ms CPU/image threaded, "
        f"{limit.page_faults_per_image:.0f} page faults/image)"
    )


def write_json(report: Any, path: Path) -> None:
    """A report (a dataclass instance) as JSON, in a folder git ignores."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ignore = path.parent / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*.json\n")
    path.write_text(json.dumps(asdict(report), indent=2) + "\n")
