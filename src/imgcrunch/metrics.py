"""Prometheus metrics: what this process did (counters, histograms), and what the database
holds (gauges, read when scraped). `GET /metrics` serves them (api/routes/health.py).

A scale-out worker counts in its pool processes: `imgcrunch worker` runs prometheus-client's
multiprocess mode, where each process writes its figures to files in a folder, and with a
metrics port `serve_worker_metrics` adds them up when scraped. The mode is chosen when
prometheus_client is first imported, so cli.py names the folder before anything imports this
module.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

IMAGES = Counter(
    "imgcrunch_images",
    "Images processed by this process, by outcome (done, failed) and code: the error's, or "
    "kept_original for a done image whose input was kept",
    ["outcome", "code"],
)
IMAGE_BYTES = Counter(
    "imgcrunch_image_bytes",
    "Bytes of the images compressed by this process, downloaded (in) and written (out)",
    ["direction"],
)
FETCH_SECONDS = Histogram(
    "imgcrunch_fetch_seconds", "Time to download an image, retries included", buckets=_SECONDS
)
CODEC_SECONDS = Histogram(
    "imgcrunch_codec_seconds", "Time to compress, hash and store an image", buckets=_SECONDS
)
STORAGE_FREE_BYTES = Gauge(
    "imgcrunch_storage_free_bytes",
    "Room left in the storage, as last seen by this process (the least of a worker's processes); "
    "below IMGCRUNCH_MIN_FREE_BYTES no work is claimed",
    multiprocess_mode="livemin",
)
WEBHOOK_ATTEMPTS = Counter(
    "imgcrunch_webhook_attempts",
    "Webhook delivery attempts by this process, by outcome (delivered, retry, gave_up)",
    ["outcome"],
)


def database_figures(requests_by_status: Mapping[str, int], queued_images: int) -> bytes:
    """The database's gauges, as exposition text to serve after this process's own figures.

    Made per scrape, not kept in the process: a worker has no business reporting them.
    """
    requests = GaugeMetricFamily(
        "imgcrunch_requests", "Requests in the database, by status", labels=["status"]
    )
    for status, count in requests_by_status.items():
        requests.add_metric([status], count)
    queued = GaugeMetricFamily(
        "imgcrunch_queued_images",
        "Images of queued or processing requests not yet finished",
        value=queued_images,
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([requests, queued]))
    return generate_latest(registry)


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def serve_worker_metrics(*, host: str, port: int) -> None:
    """Serve, from a thread of this process, the sum of every pool process's figures."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    start_http_server(port, addr=host, registry=registry)
