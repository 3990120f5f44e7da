"""Prometheus metrics: what this process did (counters, histograms), and what the database
holds (gauges, read when scraped). `GET /metrics` serves them (api/routes/health.py).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

IMAGES = Counter(
    "imgcrunch_images",
    "Images processed by this process, by outcome (done, failed) and error code",
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
WEBHOOK_ATTEMPTS = Counter(
    "imgcrunch_webhook_attempts",
    "Webhook delivery attempts by this process, by outcome (delivered, retry, gave_up)",
    ["outcome"],
)
REQUESTS = Gauge("imgcrunch_requests", "Requests in the database, by status", ["status"])
QUEUED_IMAGES = Gauge(
    "imgcrunch_queued_images", "Images of queued or processing requests not yet finished"
)
