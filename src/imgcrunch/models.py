"""Tables. The database is the truth: every fact about a request lives here."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class RequestStatus(enum.StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    COMPLETED_WITH_ERRORS = "completed_with_errors"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_STATUSES = (RequestStatus.QUEUED, RequestStatus.PROCESSING)


class ImageStatus(enum.StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"  # its request was cancelled before it was processed


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"  # waiting for its first attempt, or for a retry
    DELIVERED = "delivered"
    GAVE_UP = "gave_up"  # every retry of the schedule failed, or the receiver answered 410


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in Python on every backend (SQLite keeps no zone of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and dialect.name == "sqlite":
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value  # type: ignore[no-any-return]


class Base(DeclarativeBase):
    pass


class Request(Base):
    __tablename__ = "requests"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    status: Mapped[str] = mapped_column(String(32), default=RequestStatus.QUEUED, index=True)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    quality: Mapped[int] = mapped_column(Integer)
    effort: Mapped[str] = mapped_column(String(16), server_default="balanced")  # codec.Effort
    # What is made of each image, as imaging.variants.to_json gives it; None: the default, one
    # JPEG at the original size.
    variants: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    # The marketplace whose rules make the first variant (imaging.profiles); None: no rules.
    profile: Mapped[str | None] = mapped_column(String(32))
    extra_columns: Mapped[list[str]] = mapped_column(JSON, default=list)
    total_images: Mapped[int] = mapped_column(Integer)
    done_images: Mapped[int] = mapped_column(Integer, default=0)
    failed_images: Mapped[int] = mapped_column(Integer, default=0)
    # Of the done images, those whose original was kept: re-encoding would not have shrunk it.
    kept_images: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    bytes_in: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_out: Mapped[int] = mapped_column(BigInteger, default=0)
    input_key: Mapped[str] = mapped_column(String(255))
    output_key: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(Text)
    # Why its work is held up by a fault of ours (storage full, database away); None once a
    # result of it is recorded again.
    waiting: Mapped[str | None] = mapped_column(Text)
    owner: Mapped[str | None] = mapped_column(String(64))
    # Where its images are stored, `images/<scope>/<sha256>.<ext>`: its owner's, shared by all
    # the owner's requests so that an unchanged image keeps its URL. None for requests from
    # before re-runs, whose images are under `images/<request id>/`.
    scope: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    # Made without the source cache (`refresh`): every image fetched and encoded again.
    refresh: Mapped[bool] = mapped_column(Boolean, server_default=false())
    # Of the done images, those whose outputs were reused from the owner's source cache.
    reused_images: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Of the done images, those with findings: rules of the profile they could not be made to meet.
    noncompliant_images: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # Its rows are stored from the kept CSV a chunk at a time, each chunk with this count in one
    # transaction, so that the first images are worked on while the rest is stored, and a crash
    # resumes after the last chunk stored. `ingested_at`: when the last one was.
    ingested_rows: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    ingested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When a worker last claimed a batch of it: scale-out workers serve the longest-waiting first.
    last_claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def progress(self) -> dict[str, int | float | None]:
        finished = self.done_images + self.failed_images
        percent = finished * 100 / self.total_images if self.total_images else 100.0
        return {
            "total": self.total_images,
            "done": self.done_images,
            "failed": self.failed_images,
            "kept_original": self.kept_images,
            "reused": self.reused_images,
            "percent": round(percent, 1),
        } | self._compliance()

    def _compliance(self) -> dict[str, int | None]:
        if self.profile is None:
            return {"compliant": None, "non_compliant": None}
        noncompliant = self.noncompliant_images or 0
        return {"compliant": self.done_images - noncompliant, "non_compliant": noncompliant}


class Product(Base):
    __tablename__ = "products"
    __table_args__ = (UniqueConstraint("request_id", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("requests.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)  # order in the input file, from 0
    row_number: Mapped[str] = mapped_column(Text)  # the input's own S. No., verbatim
    product_name: Mapped[str] = mapped_column(Text)
    extra: Mapped[list[str]] = mapped_column(JSON, default=list)


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (
        # With the id last, a request's next pending images are read in order, not sorted.
        Index("ix_images_request_status_id", "request_id", "status", "id"),
        Index("ix_images_product", "product_id", "position"),
        Index("ix_images_duplicate_of", "duplicate_of"),
        # Deleting a request asks which of its outputs another request still refers to.
        Index("ix_images_output_key", "output_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("requests.id", ondelete="CASCADE"))
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)  # order within its product's row, from 0
    source_url: Mapped[str] = mapped_column(Text)
    # The first image of the same request with the same URL: it is fetched once, for both.
    duplicate_of: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    # Server-side defaults: an upload inserts thousands of images, and every bound value costs.
    status: Mapped[str] = mapped_column(String(16), server_default=ImageStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error_code: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    bytes_in: Mapped[int | None] = mapped_column(BigInteger)
    bytes_out: Mapped[int | None] = mapped_column(BigInteger)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    output_key: Mapped[str | None] = mapped_column(String(255))
    # Done by keeping the input's own bytes, without metadata: the output would not be smaller.
    kept_original: Mapped[bool] = mapped_column(Boolean, server_default=false())
    # The outputs of the request's variants after the first (whose output is in the columns
    # above), in order: {"key", "bytes", "width", "height", "kept", "quality"}. None without
    # variants.
    variants: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    # How the owner's source cache served it (a `Reuse`); None before re-runs, and for
    # images that failed.
    reuse: Mapped[str | None] = mapped_column(String(16))
    # What the request's profile found it could not fix, imaging.findings.Finding.to_json's;
    # None where it found nothing, or the request has no profile.
    findings: Mapped[list[dict[str, str]] | None] = mapped_column(JSON)
    # The quality the first variant was encoded at (under the asked one to meet a byte cap);
    # None where the original was kept. The other variants' are in `variants`.
    quality: Mapped[int | None] = mapped_column(SmallInteger)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Reuse(enum.StrEnum):
    """Why an image was, or was not, made again."""

    REUSED = "reused"  # the origin said 304, or sent the same bytes: the cached outputs reused
    CHANGED = "changed"  # in the cache, but the origin sent other bytes: made again
    NOT_CACHED = "not_cached"  # never made for this owner and spec (or since evicted)
    REFRESHED = "refreshed"  # its request asked to ignore the cache


class OwnerScope(Base):
    """Each owner's random storage prefix: an image's key names its scope and its content, so
    that it is the same from one request of the owner to the next, and unguessable to others."""

    __tablename__ = "owner_scopes"

    owner: Mapped[str] = mapped_column(String(64), primary_key=True)  # "": no API keys
    scope: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)


class SourceCacheEntry(Base):
    """What an owner's source URL gave, made with one output spec: the origin's validators,
    the SHA-256 of its bytes, and the image's stored outputs, to reuse while it is unchanged.
    An entry's outputs are referenced by at least one image row: deleting the last request
    that refers to them deletes the entry too."""

    __tablename__ = "source_cache"
    __table_args__ = (
        UniqueConstraint("owner", "url_digest", "spec_digest"),
        Index("ix_source_cache_output_key", "output_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(64))  # "": no API keys
    url_digest: Mapped[str] = mapped_column(String(64))  # SHA-256 of the source URL
    spec_digest: Mapped[str] = mapped_column(String(64))  # codec.spec_digest of the options
    etag: Mapped[str | None] = mapped_column(Text)
    last_modified: Mapped[str | None] = mapped_column(Text)
    source_sha256: Mapped[str] = mapped_column(String(64))
    output_key: Mapped[str] = mapped_column(String(255))  # the first variant's
    # The image's result as recorded: bytes_in, bytes_out, width, height, kept_original and
    # variants (ImageResult's fields).
    result: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class VariantTotal(Base):
    """A variant's bytes and kept originals over a request's done images, the first variant's
    included (which are also the request's own bytes_out and kept_images)."""

    __tablename__ = "variant_totals"

    request_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("requests.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)  # in the request's variants
    bytes_out: Mapped[int] = mapped_column(BigInteger, server_default="0")
    kept_images: Mapped[int] = mapped_column(Integer, server_default="0")


class WebhookDelivery(Base):
    """The outbox: written with the request's final status, delivered afterwards."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("requests.id", ondelete="CASCADE"), index=True
    )
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    event_type: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[str] = mapped_column(Text)  # the exact body sent, so every attempt is the same
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Attempts made before the latest redelivery: the retry schedule counts from there.
    schedule_start: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    response_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebhookAttempt(Base):
    """One try at delivering an event: what came back, or why nothing did."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True
    )
    attempt: Mapped[int] = mapped_column(Integer)  # 1 for the first
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    response_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
