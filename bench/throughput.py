"""Throughput benchmark: imgcrunch end to end, against the limits of this machine.

Held, in the same run, against its own codec's limit, the bare library's (libvips decode and
encode at standard settings, one thread per core), and the usual approach (one sequential loop
that downloads, decodes with Pillow and saves at quality 50); and the same for small images.

Run `make bench` (or `.venv/bin/python bench/throughput.py --help`). bench/README.md explains
how to read the output.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import io
import json
import math
import multiprocessing
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

import httpx
import pyvips
import requests
from PIL import Image

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
SEED_FIRST_URL = 20_000_000
RSS_SAMPLE_SECONDS = 0.1
STALL_SECONDS = 60.0  # no image finished for this long: the service is stuck
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
TARGET_SHARE = 0.85  # end-to-end images/s as a share of the codec limit, and of the bare one
SEED_RATIO_TARGET = 2.5  # end-to-end images/s over the usual approach's sequential loop
SEED_LOOP_IMAGES = 200
SMALL_SIZE = (160, 120)  # a thumbnail-sized product photo: the service's overhead, not the codec
SMALL_TARGET = 3 * 136  # images/s: three times what the service did before issue 14
# Codec limits before and after a run this far apart: the machine's speed moved meanwhile.
DRIFT_WARNING = 0.15
RSS_GROWTH_LIMIT = 0.10  # peak RSS of the largest run over that of the smallest
LOG_TAIL_LINES = 40
OTHER_LOAD_WARNING = 0.25  # cores used by other processes that make a figure suspect

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


def small_photos(photos: PhotoSet) -> PhotoSet:
    """The same photos at 160x120, JPEG quality 92 like the originals (some 8 KB each)."""
    width, height = SMALL_SIZE
    data = []
    for original in photos.data:
        image = pyvips.Image.thumbnail_buffer(original, width, height=height, crop="centre")
        data.append(bytes(image.jpegsave_buffer(Q=92, keep="none")))
    return PhotoSet(f"{photos.label} at {width}x{height}", photos.names, data)


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


# --- the usual approach ---------------------------------------------------------------------


@dataclass(frozen=True)
class SeedLoop:
    images: int
    images_per_s: float


def measure_seed_loop(origin: Origin, images: int) -> SeedLoop:
    """What the seeds' implementations do: one loop that downloads each image with requests,
    decodes it with Pillow and saves it at quality 50, one after the other."""
    with tempfile.TemporaryDirectory(prefix="imgcrunch-seed-") as folder:
        started = time.perf_counter()
        for n in range(images):
            response = requests.get(origin.url(SEED_FIRST_URL + n), timeout=30)
            response.raise_for_status()
            picture = Image.open(io.BytesIO(response.content)).convert("RGB")
            picture.save(Path(folder) / f"{n}.jpg", "JPEG", quality=QUALITY)
        elapsed = time.perf_counter() - started
    return SeedLoop(images, images / elapsed)


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


class _OriginProtocol(asyncio.Protocol):
    """Just enough HTTP/1.1: GET /p/<n>/<name>.jpg from memory, keep-alive, nothing else."""

    def __init__(self, responses: dict[bytes, bytes], served: ctypes.c_uint64) -> None:
        self._responses = responses
        self._served = served
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while (end := self._buffer.find(b"\r\n\r\n")) >= 0:
            head, self._buffer = self._buffer[:end], self._buffer[end + 4 :]
            self._answer(head)

    def _answer(self, head: bytes) -> None:
        assert self._transport is not None
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        path = parts[1] if len(parts) == 3 else b""
        response = self._responses.get(path.rpartition(b"/")[2]) if path[:3] == b"/p/" else None
        self._transport.write(response or _NOT_FOUND)
        self._served.value += 1
        if b"connection: close" in head.lower():
            self._transport.close()


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
        lambda: _OriginProtocol(responses, served), "127.0.0.1", 0, backlog=1024
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

    def cpu_seconds(self) -> float:
        assert self._process.pid is not None
        return cpu_seconds(self._process.pid)

    def url(self, n: int) -> str:
        return f"{self.base_url}/p/{n}/{self.names[n % len(self.names)]}"

    def stop(self) -> None:
        self._process.terminate()
        self._process.join(STOP_TIMEOUT)


# --- the service ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def passed_through_settings() -> dict[str, str]:
    return {
        key: value
        for key, value in sorted(os.environ.items())
        if key.startswith("IMGCRUNCH_") and key not in OWNED_SETTINGS
    }


def service_env(data_dir: Path, port: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("IMGCRUNCH_")}
    return (
        env
        | passed_through_settings()
        | {
            "IMGCRUNCH_DATA_DIR": str(data_dir),
            "IMGCRUNCH_PORT": str(port),
            "IMGCRUNCH_HOST": "127.0.0.1",
            "IMGCRUNCH_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
            "IMGCRUNCH_ALLOW_PRIVATE_NETWORKS": "true",  # the origin is on loopback
        }
        | (extra or {})
    )


@dataclass
class Service:
    """`python -m imgcrunch serve` in a subprocess, with its own data folder and port."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    settings: dict[str, str] = field(default_factory=dict)  # IMGCRUNCH_* the bench sets itself
    process: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        return service_env(self.data_dir, self.port, self.settings)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "service.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            # cwd is the data folder, so a developer's .env in the repository does not apply.
            self.process = subprocess.Popen(
                [sys.executable, "-m", "imgcrunch", "serve"],
                env=self.env,
                cwd=self.data_dir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"the service exited at start (code {self.process.returncode})")
            if self._healthy():
                return
            time.sleep(0.1)
        raise BenchError(f"the service did not answer /healthz within {START_TIMEOUT:g} s")

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-LOG_TAIL_LINES:])


@contextmanager
def running_service() -> Iterator[Service]:
    """A fresh service (new data folder, new process), stopped and removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="imgcrunch-bench-") as folder:
        service = Service(Path(folder))
        try:
            service.start()
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


def run_end_to_end(origin: Origin, images: int) -> Observed:
    with running_service() as service, httpx.Client(base_url=service.base_url, timeout=60) as c:
        # A fresh process pays one-off costs on its first images (libvips and pyvips set-up,
        # first connections); a running service has paid them already.
        warmup = upload(c, build_csv(origin, WARMUP_IMAGES, first_url=WARMUP_FIRST_URL))
        wait_until_completed(c, warmup.request_id)
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


@dataclass(frozen=True)
class UploadResult:
    rows: int
    images: int
    csv_bytes: int
    answered_s: float


def run_upload_only(origin: Origin, rows: int) -> UploadResult:
    """How long POST /upload takes to answer; the images are left unprocessed."""
    with running_service() as service, httpx.Client(base_url=service.base_url, timeout=300) as c:
        sent = upload(c, build_csv(origin, rows * URLS_PER_ROW))
    return UploadResult(rows, rows * URLS_PER_ROW, sent.csv_bytes, sent.answered_s)


# --- report -------------------------------------------------------------------------------------


@dataclass
class Report:
    cores: int
    photos: str
    photo_set: str
    settings: dict[str, str]
    # One codec limit before the first run, then one after each run; the bare library's beside.
    codec: list[CodecLimit] = field(default_factory=list)
    bare: list[CodecLimit] = field(default_factory=list)
    runs: list[RunResult] = field(default_factory=list)
    seed_loops: list[SeedLoop] = field(default_factory=list)  # before the runs and after them
    small_runs: list[RunResult] = field(default_factory=list)  # against the small photos' limits
    upload: UploadResult | None = None
    targets: dict[str, bool] = field(default_factory=dict)
    timestamp: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


def header_lines(report: Report) -> list[str]:
    lines = [
        f"imgcrunch bench  ({report.cores} cores, photos: {report.photos}, {report.photo_set})"
    ]
    if report.settings:
        lines.append(
            "service settings : " + " ".join(f"{k}={v}" for k, v in report.settings.items())
        )
    return lines


def codec_line(limit: CodecLimit) -> str:
    name = "codec limit" if limit.label == "codec" else "bare libvips"
    return (
        f"{name:17}: {limit.images_per_s:5.1f} images/s  ({limit.threads} threads; "
        f"{limit.single_thread_ms:.1f} ms/image on one thread, "
        f"{limit.cpu_ms_per_image:.1f} ms CPU/image threaded, "
        f"{limit.page_faults_per_image:.0f} page faults/image)"
    )


def run_lines(run: RunResult) -> list[str]:
    bare = []
    if run.share_of_bare_limit is not None:
        bare.append(
            f"{'':19}= {run.share_of_bare_limit:5.1%} of the bare libvips limit "
            f"({run.bare_limit_images_per_s:.1f})"
        )
    return [
        f"end-to-end {run.images:>5} : {run.images_per_s:5.1f} images/s  "
        f"= {run.share_of_limit:5.1%} of limit ({run.limit_images_per_s:.1f}, the mean of the "
        f"limits either side)",
        *bare,
        f"{'':19}peak RSS {run.peak_rss_mib:.0f} MiB; upload answered in "
        f"{run.upload_answered_s:.2f} s",
        f"{'':19}{run.seconds:.1f} s; CPU per image: service {run.service_cpu_ms_per_image:.1f} ms "
        f"(event loop {run.event_loop_cpu_ms_per_image:.1f}), "
        f"origin {run.origin_cpu_ms_per_request:.2f} ms",
        f"{'':19}cores busy: service + origin {run.cores_used:.2f}, others {run.other_cores:.2f}; "
        f"page faults per image {run.page_faults_per_image:.0f}",
    ]


def upload_line(result: UploadResult) -> str:
    return (
        f"upload {result.rows:>6} rows: answered in {result.answered_s:.2f} s  "
        f"({result.images} images, CSV {result.csv_bytes / 1e6:.1f} MB)"
    )


def seed_line(loop: SeedLoop) -> str:
    return (
        f"usual approach   : {loop.images_per_s:5.1f} images/s  (one loop: requests, Pillow "
        f"decode, save at quality {QUALITY}; {loop.images} images)"
    )


def target_lines(report: Report) -> list[str]:
    lines: list[str] = []
    by_size: dict[int, list[RunResult]] = {}
    for run in report.runs:
        by_size.setdefault(run.images, []).append(run)
    if by_size:
        lines.append(_share_target(report, by_size, "throughput", "codec limit"))
        if all(run.share_of_bare_limit is not None for run in report.runs):
            lines.append(_share_target(report, by_size, "bare_throughput", "bare libvips limit"))
    if by_size and report.seed_loops:
        seed = statistics.fmean(loop.images_per_s for loop in report.seed_loops)
        ratios = {
            size: statistics.median(run.images_per_s for run in runs) / seed
            for size, runs in by_size.items()
        }
        met = all(ratio >= SEED_RATIO_TARGET for ratio in ratios.values())
        report.targets["over_usual_approach"] = met
        shown = ", ".join(f"{size}: {ratio:.2f}x" for size, ratio in ratios.items())
        # The physical limit of that ratio here: the bare library on every core, no I/O at all.
        ceiling = statistics.median(limit.images_per_s for limit in report.bare) / seed
        lines.append(
            f"target: end-to-end >= {SEED_RATIO_TARGET}x the usual approach ({seed:.1f} images/s), "
            f"median of runs : {_met(met)} ({shown}; the bare libvips limit is {ceiling:.2f}x it)"
        )
    if report.small_runs:
        rate = statistics.median(run.images_per_s for run in report.small_runs)
        met = rate >= SMALL_TARGET
        report.targets["small_images"] = met
        spread = " ".join(f"{run.images_per_s:.0f}" for run in report.small_runs)
        lines.append(
            f"target: small images ({SMALL_SIZE[0]}x{SMALL_SIZE[1]}) >= {SMALL_TARGET} images/s "
            f"(3x before), median of runs [all runs] : {_met(met)} ({rate:.0f} [{spread}])"
        )
    if len(by_size) > 1:
        small, large = min(by_size), max(by_size)
        small_peak = max(run.peak_rss_mib for run in by_size[small])
        large_peak = max(run.peak_rss_mib for run in by_size[large])
        growth = large_peak / small_peak - 1
        met = growth <= RSS_GROWTH_LIMIT
        report.targets["flat_memory"] = met
        lines.append(
            f"target: peak RSS flat across sizes (<= +{RSS_GROWTH_LIMIT:.0%}) : {_met(met)} "
            f"({small_peak:.0f} -> {large_peak:.0f} MiB, {growth:+.1%})"
        )
    return lines


def _share_target(
    report: Report, by_size: dict[int, list[RunResult]], name: str, limit: str
) -> str:
    def share(run: RunResult) -> float:
        value = run.share_of_limit if name == "throughput" else run.share_of_bare_limit
        assert value is not None
        return value

    medians = {size: statistics.median(map(share, runs)) for size, runs in by_size.items()}
    met = all(value >= TARGET_SHARE for value in medians.values())
    report.targets[name] = met
    shares = ", ".join(
        f"{size}: {medians[size]:.1%} [{' '.join(f'{share(run):.1%}' for run in runs)}]"
        for size, runs in by_size.items()
    )
    return (
        f"target: end-to-end >= {TARGET_SHARE:.0%} of the {limit}, median of runs [all runs] : "
        f"{_met(met)} ({shares})"
    )


def load_warnings(report: Report) -> list[str]:
    phases = [(f"codec limit {n + 1}", limit.other_cores) for n, limit in enumerate(report.codec)]
    phases += [(f"end-to-end {run.images}", run.other_cores) for run in report.runs]
    busy = [f"{name}: {cores:.2f}" for name, cores in phases if cores > OTHER_LOAD_WARNING]
    drifted = [
        f"{run.images}: {run.limit_drift:.0%}"
        for run in report.runs
        if run.limit_drift > DRIFT_WARNING
    ]
    warnings = []
    if busy:
        warnings.append(
            "warning: other processes used CPU meanwhile (cores; " + ", ".join(busy) + "): "
            "these figures are not comparable, run again on a quiet machine"
        )
    if drifted:
        warnings.append(
            "warning: the codec limit moved during a run (" + ", ".join(drifted) + "): the "
            "machine's speed is not steady, so that share is rough; run again"
        )
    return warnings


def _met(met: bool) -> str:
    return "met" if met else "NOT met"


def write_json(report: Any, path: Path) -> None:
    """A report (a dataclass instance) as JSON, in a folder git ignores."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ignore = path.parent / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*.json\n")
    path.write_text(json.dumps(asdict(report), indent=2) + "\n")


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=[300, 3000],
        help="images per end-to-end run, comma-separated (default 300,3000)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="end-to-end runs per size, interleaved; targets use the median (default 3)",
    )
    parser.add_argument(
        "--codec-images", type=int, default=300, help="images for the codec limit (default 300)"
    )
    parser.add_argument(
        "--upload-rows",
        type=int,
        help="only time POST /upload of a CSV of this many rows (3 URLs each), then stop",
    )
    parser.add_argument(
        "--final-upload-rows",
        type=int,
        default=10_000,
        help="rows of the upload timed at the end of the default run; 0 skips it",
    )
    parser.add_argument(
        "--small-images",
        type=int,
        default=3000,
        help=f"images per end-to-end run of {SMALL_SIZE[0]}x{SMALL_SIZE[1]} photos, --repeats "
        "times; 0 skips them (default 3000)",
    )
    parser.add_argument(
        "--seed-images",
        type=int,
        default=SEED_LOOP_IMAGES,
        help=f"images for the usual approach's loop, before and after (default {SEED_LOOP_IMAGES};"
        " 0 skips it)",
    )
    parser.add_argument("--json", type=Path, help="where to write the figures as JSON")
    return parser.parse_args(argv)


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("sizes must be positive")
    return sizes


def _say(line: str) -> None:
    print(line, flush=True)


def bench(args: argparse.Namespace, report: Report, photos: PhotoSet, origin: Origin) -> Path:
    if args.upload_rows is not None:
        report.upload = run_upload_only(origin, args.upload_rows)
        _say(upload_line(report.upload))
        return args.json or RESULTS / "upload-latest.json"
    measure_seed_loop_into(report, origin, args.seed_images)
    before = measure_limits_into(report, photos, args.codec_images)
    # Sizes interleaved, each run several times: the machine's speed drifts, and a short run
    # catches more of it; the target is judged on the median.
    for size in [size for _ in range(args.repeats) for size in args.sizes]:
        observed = run_end_to_end(origin, size)
        after = measure_limits_into(report, photos, args.codec_images, show=False)
        run = summarise(observed, before[0], after[0], (before[1], after[1]))
        report.runs.append(run)
        for line in run_lines(run):
            _say(line)
        for limit in after:
            _say(codec_line(limit))
        before = after
    measure_seed_loop_into(report, origin, args.seed_images)
    if args.small_images > 0:
        run_small_images(args, report, photos)
    if args.final_upload_rows > 0:
        report.upload = run_upload_only(origin, args.final_upload_rows)
        _say(upload_line(report.upload))
    for line in target_lines(report) + load_warnings(report):
        _say(line)
    return args.json or RESULTS / "latest.json"


def measure_limits_into(
    report: Report, photos: PhotoSet, images: int, *, show: bool = True
) -> tuple[CodecLimit, CodecLimit]:
    """The codec's limit and the bare library's, one after the other."""
    limits = (
        measure_codec_limit(photos.data, images, report.cores, "codec"),
        measure_codec_limit(photos.data, images, report.cores, "bare"),
    )
    report.codec.append(limits[0])
    report.bare.append(limits[1])
    if show:
        for limit in limits:
            _say(codec_line(limit))
    return limits


def measure_seed_loop_into(report: Report, origin: Origin, images: int) -> None:
    if images > 0:
        report.seed_loops.append(measure_seed_loop(origin, images))
        _say(seed_line(report.seed_loops[-1]))


def run_small_images(args: argparse.Namespace, report: Report, photos: PhotoSet) -> None:
    """Where the codec costs little, what the service's own work per image allows."""
    small = small_photos(photos)
    _say(f"small photos     : {small.label}, {statistics.fmean(map(len, small.data)):.0f} bytes")
    origin = Origin(small)
    try:
        before = measure_codec_limit(small.data, args.small_images, report.cores)
        _say(codec_line(before))
        for _ in range(args.repeats):
            observed = run_end_to_end(origin, args.small_images)
            after = measure_codec_limit(small.data, args.small_images, report.cores)
            run = summarise(observed, before, after)
            report.small_runs.append(run)
            for line in run_lines(run):
                _say(f"small {line}" if line.startswith("end") else line)
            _say(codec_line(after))
            before = after
    finally:
        origin.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        photos = load_photos()
        codec.configure(concurrency=1)
        report = Report(
            cores=len(os.sched_getaffinity(0)),
            photos=photos.label,
            photo_set=photos.describe(photo_sizes(photos.data)),
            settings=passed_through_settings(),
        )
        for line in header_lines(report):
            _say(line)
        origin = Origin(photos)
        try:
            path = bench(args, report, photos, origin)
        finally:
            origin.stop()
    except BenchError as error:
        print(f"bench failed: {error}", file=sys.stderr)
        return 2
    write_json(report, path)
    _say(f"figures written to {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
