"""Response bodies, as the OpenAPI schema shows them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel


class ErrorDetail(BaseModel):
    row: int | None = None
    column: str | None = None
    field: str | None = None
    reason: str


class ErrorInfo(BaseModel):
    code: str
    message: str
    details: list[ErrorDetail] = []


class ErrorBody(BaseModel):
    error: ErrorInfo


class Accepted(BaseModel):
    request_id: uuid.UUID
    status: str
    status_url: str
    total_images: int


class Progress(BaseModel):
    total: int
    done: int
    failed: int
    kept_original: int  # of the done: the input kept as it was (without metadata), not larger
    # Of the done: unchanged since the owner's last request with the same options (the origin
    # said 304, or sent the same bytes), their outputs and URLs reused without encoding.
    reused: int
    percent: float
    # With a marketplace profile, of the done: made to every rule of it, or with findings
    # (rules it could not be made to meet; each image's are in its listing). None without one.
    compliant: int | None = None
    non_compliant: int | None = None


class VariantSummary(BaseModel):
    """One of the outputs the request makes of each image, and what it has made so far."""

    name: str
    spec: str  # its text form, as the upload's `variants` field takes it
    width: int | None  # the box: fit inside it, never enlarged; None: that side is free
    height: int | None
    fit: str  # inside | pad
    format: str  # jpeg | webp | avif
    quality: int  # the look of standard libjpeg at this quality, in whatever format
    effort: str  # balanced | max
    column: str  # its URLs' column in the output CSV
    max_bytes: int | None  # its byte cap: quality lowered (then size) to fit; None: none
    profile: str | None  # the marketplace whose rules make it (the first variant only)
    bytes_out: int  # over the images done
    kept_original: int  # images whose own bytes stood for it (re-encoding would not shrink)


class ImageError(BaseModel):
    row: str  # the product's S. No. as written in the input
    product_name: str
    url: str
    code: str
    message: str


class KeptOriginal(BaseModel):
    """An image whose output is its input's own bytes, without metadata: the input was a JPEG
    already upright and sRGB, and re-encoding it would not have made it smaller."""

    row: str  # the product's S. No. as written in the input
    product_name: str
    url: str


class WebhookAttemptInfo(BaseModel):
    attempt: int  # 1 for the first
    at: datetime
    response_status: int | None  # None: no answer (timeout, refused address, connection)
    error: str | None  # None: delivered


class WebhookState(BaseModel):
    url: str
    event_id: str | None  # the webhook-id header; None until the request has finished
    # waiting (the request is not finished) | pending (due, or a retry is scheduled) |
    # failing (pending after failed attempts) | delivered | gave_up
    state: str
    attempts: int
    response_status: int | None
    last_error: str | None
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    history: list[WebhookAttemptInfo] = []  # the latest attempts, oldest first


class Figures(BaseModel):
    """How fast and how well, so far."""

    bytes_in: int  # of the images done
    bytes_out: int
    savings_percent: float | None  # 100 * (1 - out / in); None before the first image
    images_per_second: float | None  # finished images over the time since work started
    eta_seconds: float | None  # at that pace, until the last image; None when unknown or done


class Status(Figures):
    request_id: uuid.UUID
    status: str
    error: str | None = None  # why a `failed` request could not be processed at all
    # Why its work is held up by a fault of ours, which it resumes from by itself once cleared
    # ("storage full: ...", "database unavailable: ..."); None while it goes on.
    waiting: str | None = None
    quality: int  # the look of standard libjpeg at this quality, whatever the format
    effort: str  # balanced | max
    profile: str | None  # the marketplace whose rules make the first variant; None: none
    variants: list[VariantSummary]  # in order; the first is the one in `bytes_out`
    progress: Progress
    output_csv_url: str | None
    errors: list[ImageError]
    errors_truncated: bool
    kept_originals: list[KeptOriginal]  # the first of them, in input order
    kept_originals_truncated: bool
    webhook: WebhookState | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    completed_at: datetime | None


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}


class RequestSummary(Figures):
    request_id: uuid.UUID
    status: str
    profile: str | None
    variants: list[VariantSummary]
    progress: Progress
    status_url: str
    output_csv_url: str | None
    created_at: datetime
    completed_at: datetime | None


class RequestList(BaseModel):
    requests: list[RequestSummary]  # newest first
    next_url: str | None  # the next page, if there may be one


class ImageVariant(BaseModel):
    name: str
    url: str
    width: int
    height: int
    bytes: int
    kept_original: bool  # the input's own bytes, without metadata: re-encoding would not shrink
    quality: int | None  # what it was encoded at (lower than asked to meet a byte cap); None: kept


class Finding(BaseModel):
    """A rule of the request's marketplace profile that the image could not be made to meet:
    a warning (the image is made all the same)."""

    # too_small | too_small_for_zoom | product_fill_low | background_not_white
    code: str
    message: str


# models.Reuse's values, spelled out for the OpenAPI document.
ReuseKind = Literal["reused", "changed", "not_cached", "refreshed"]


class ImageInfo(BaseModel):
    row: str  # the product's S. No. as written in the input
    product_name: str
    source_url: str
    status: str  # pending | done | failed | cancelled
    output_url: str | None
    bytes_in: int | None
    bytes_out: int | None
    width: int | None
    height: int | None
    kept_original: bool  # the output is the input's own bytes: re-encoding would not shrink it
    error_code: str | None
    error_message: str | None
    variants: list[ImageVariant]  # every variant made of it, the first included; [] until done
    # How the owner's source cache served it, once done: reused (unchanged at the origin: the
    # same outputs and URLs as before), or why it was made again: changed (other bytes at the
    # same URL), not_cached (never made for this owner with these options), refreshed (the
    # request asked to ignore the cache). None for failed images and older requests.
    reuse: ReuseKind | None
    # What the request's marketplace profile found it could not fix in it; [] for none.
    findings: list[Finding]


class ImageList(BaseModel):
    images: list[ImageInfo]  # in the order of the input file
    next_url: str | None
