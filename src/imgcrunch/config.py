"""Settings: every knob comes from an `IMGCRUNCH_*` environment variable or a `.env` file."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


MIN_API_KEY_LENGTH = 16


class Settings(BaseSettings):
    """Defaults make `make run` work on a fresh machine; derived paths follow `data_dir`."""

    # Errors name the setting, never its value: keys and database passwords would end up in logs.
    model_config = SettingsConfigDict(
        env_prefix="IMGCRUNCH_", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    data_dir: Path = Path("var")
    database_url: str = ""  # default: sqlite file under data_dir
    storage_dir: Path | None = None  # default: data_dir (so images land in data_dir/images)
    # Where images and CSVs are kept: file:///path (default: file://<storage_dir>) or
    # s3://bucket/prefix (credentials and region from the standard AWS variables).
    storage_url: str = ""
    s3_endpoint_url: str | None = None  # any S3-compatible store; default: AWS
    # The start of the output CSV's image URLs (a CDN, the bucket's public address); default:
    # served by the API, at public_base_url/images/...
    public_images_url: str = ""
    # S3: the API answers GET /images/... with a redirect to a presigned URL of this lifetime
    # instead of streaming the object itself.
    s3_presign: bool = False
    s3_presign_seconds: int = Field(default=3600, ge=1, le=7 * 24 * 3600)
    public_base_url: str = ""  # default: http://localhost:{port}
    auto_migrate: bool = (
        True  # `serve` applies migrations first; turn off when several replicas share a database
    )

    # Scale-out: `celery` sends the work to `imgcrunch worker` processes over the broker.
    queue: Literal["inline", "celery"] = "inline"
    broker_url: str = "redis://127.0.0.1:6379/0"
    broker_key_prefix: str = ""  # prepended to every broker key: several deployments, one Redis
    # An unacknowledged message returns to the queue after this long; it must outlast any task.
    broker_visibility_timeout: float = Field(default=7200.0, gt=0)
    task_max_retries: int = Field(default=5, ge=0)  # transient failures: database or broker down
    sweep_interval: float = Field(default=30.0, gt=0)  # re-running stale claims, and the like
    # `imgcrunch worker` serves GET /metrics on this port (at `host`), its pool processes' sum.
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)

    jpeg_quality: int = Field(default=50, ge=1, le=100)
    # codec.Effort: balanced (fewer bytes than standard libjpeg for less CPU) or max (the fewest
    # bytes, for about four times balanced's CPU).
    jpeg_effort: Literal["balanced", "max"] = "balanced"
    # What is made of each image unless a request says otherwise, in the syntax of the upload's
    # `variants` field (`zoom=2000:jpeg, thumb=200x200:pad:webp`); empty: one JPEG at the
    # original size.
    variants: str = ""
    background: tuple[int, int, int] = (255, 255, 255)
    max_pixels: int = Field(default=50_000_000, ge=1)

    fetch_concurrency: int = Field(default=16, ge=1)
    fetch_concurrency_per_host: int = Field(default=8, ge=1)  # so a slow origin holds no more
    cpu_workers: int = Field(default_factory=_cores, ge=1)
    batch_size: int = Field(default=32, ge=1)  # per claim, record and scale-out message
    max_download_bytes: int = Field(default=25 * 1024 * 1024, ge=1)
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=15.0, gt=0)
    fetch_timeout: float = Field(default=60.0, gt=0)  # whole download, however slowly it drips
    max_redirects: int = Field(default=5, ge=0)
    fetch_retries: int = Field(default=2, ge=0)  # after a timeout, connect error, 429 or 5xx
    fetch_retry_backoff: float = Field(default=0.5, ge=0)  # doubled each time, with jitter
    allow_private_networks: bool = False
    # Hosts admitted even on private addresses: `host` or `host:port`, comma-separated.
    allowed_hosts: Annotated[tuple[str, ...], NoDecode] = ()

    # `key` or `owner:key`, comma-separated; when set, the API answers only with a key, and each
    # key's owner sees only its own requests (see api/auth.py).
    api_keys: Annotated[tuple[str, ...], NoDecode] = ()

    # A catalog of a million images in one request, by default: a row of one image URL of up
    # to ~250 characters, or five of ~50. The file is checked and stored a piece at a time.
    max_csv_bytes: int = Field(default=256 * 1024 * 1024, ge=1)
    max_csv_rows: int = Field(default=1_000_000, ge=1)
    max_urls_per_row: int = Field(default=100, ge=1)
    max_url_length: int = Field(default=2048, ge=12)  # characters, image and webhook URLs
    # Requests queued or processing at once; past it, uploads answer 429 with Retry-After.
    max_queued_requests: int = Field(default=100, ge=1)
    # The same, for the requests of one API key's owner, so that one client cannot fill it all.
    max_queued_requests_per_key: int | None = Field(default=None, ge=1)

    webhook_timeout: float = Field(default=10.0, gt=0)
    # `whsec_<base64>`, comma-separated; each signs every delivery (rotation). None: one is made
    # and kept in <data dir>/webhook-secret. Checked where they sign (webhooks.signing_secrets).
    webhook_secret: Annotated[tuple[str, ...], NoDecode] = ()
    # Seconds to wait before each retry of a failed delivery (with jitter); then it gives up.
    webhook_retry_schedule: Annotated[tuple[float, ...], NoDecode] = (
        5,
        300,
        1800,
        7200,
        18000,
        36000,
        86400,
    )
    # A claim's lease: renewed while its batch is worked on, presumed dead once not renewed for
    # this long, and then handed to another worker by the sweep.
    claim_timeout: float = Field(default=30.0, gt=0)
    # Workers claim no work while the storage has less room than this, and /readyz says so.
    min_free_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    shutdown_grace: float = Field(default=20.0, ge=0)  # SIGTERM: time given to in-flight images
    # Failed images listed by GET /status, and as many of those whose original was kept.
    errors_in_status: int = Field(default=100, ge=0)
    log_format: Literal["text", "json"] = "text"  # json: one object per line, for collectors

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip().lower() for part in value.split(",") if part.strip())
        return value

    @field_validator("api_keys", "webhook_secret", "webhook_retry_schedule", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _positive_delays(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(delay <= 0 for delay in value):
            raise ValueError("every retry delay is a positive number of seconds")
        return value

    @field_validator("api_keys")
    @classmethod
    def _strong_keys(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            owner, _, key = entry.rpartition(":")
            if len(key) < MIN_API_KEY_LENGTH:
                # Never echo the key itself: this message ends up in logs.
                named = f" (owner {owner!r})" if owner else ""
                raise ValueError(
                    f"an API key{named} is shorter than {MIN_API_KEY_LENGTH} characters; "
                    "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
                )
        return value

    @model_validator(mode="after")
    def _derive_defaults(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///{self.data_dir / 'imgcrunch.db'}"
        if self.storage_dir is None:
            self.storage_dir = self.data_dir
        if not self.storage_url:
            self.storage_url = f"file://{self.storage_dir}"
        if not self.storage_url.startswith(("file://", "s3://")):
            raise ValueError("IMGCRUNCH_STORAGE_URL is file:///path or s3://bucket/prefix")
        self.public_images_url = self.public_images_url.rstrip("/")
        if not self.public_base_url:
            self.public_base_url = f"http://localhost:{self.port}"
        self.public_base_url = self.public_base_url.rstrip("/")
        if self.broker_visibility_timeout <= self.claim_timeout:
            raise ValueError(
                "IMGCRUNCH_BROKER_VISIBILITY_TIMEOUT must be longer than IMGCRUNCH_CLAIM_TIMEOUT "
                "(the longest a batch may take), or the broker hands out batches still in work"
            )
        return self

    @property
    def storage_root(self) -> Path:
        assert self.storage_dir is not None  # set by _derive_defaults
        return self.storage_dir


def unknown_variables(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The IMGCRUNCH_ variables that no setting reads: misspelt, or from another version. They
    are named in a warning at start, rather than ignored in silence."""
    known = {f"IMGCRUNCH_{name.upper()}" for name in Settings.model_fields}
    return sorted(name for name in environ if name.startswith("IMGCRUNCH_") and name not in known)
