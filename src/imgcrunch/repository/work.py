"""The work loop's queries: claiming the next batch, recording results, releasing claims,
sweeps, and finishing a request once."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    Table,
    Update,
    bindparam,
    case,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from imgcrunch.models import (
    ACTIVE_STATUSES,
    Image,
    ImageStatus,
    Request,
    RequestStatus,
    Reuse,
    VariantTotal,
)
from imgcrunch.repository._common import rowcount
from imgcrunch.repository.outbox import NewEvent, finished_with_event

# --- working on images ----------------------------------------------------------------------

# The statements below run for every batch, so they are built once with bound parameters:
# SQLAlchemy then skips constructing them and computing their cache keys on every call. They use
# the tables (Core), not the ORM classes, for the same reason.
_images = cast(Table, Image.__table__)
_requests = cast(Table, Request.__table__)
_variant_totals = cast(Table, VariantTotal.__table__)


@dataclass(frozen=True, slots=True)
class Batch:
    """A unit of work: the images of one request with ids in [first_id, last_id]."""

    request_id: uuid.UUID
    first_id: int
    last_id: int
    # The request's quality, effort and variants, fixed at upload, carried so no batch asks
    # again; variants as imaging.variants.to_json stored them (None: the default).
    quality: int
    effort: str
    variants: list[dict[str, Any]] | None = None
    # Whose it is, and where its images are stored (None: under its own id, from before
    # re-runs); `refresh`: made without the owner's source cache.
    owner: str | None = None
    scope: uuid.UUID | None = None
    refresh: bool = False
    profile: str | None = None  # the marketplace whose rules make the first variant


@dataclass(frozen=True, slots=True)
class ClaimedImage:
    id: int
    source_url: str
    attempts: int  # claims of it so far, this one included


@dataclass(frozen=True, slots=True)
class Claim:
    batch: Batch
    images: list[ClaimedImage]


# Pending images no claim holds. (A dead worker's claims come back through the sweep, which
# releases them.) A duplicate is recorded with the image it duplicates.
_UNCLAIMED = (
    (_images.c.status == ImageStatus.PENDING)
    & _images.c.duplicate_of.is_(None)
    & _images.c.claimed_at.is_(None)
)


async def unclaimed_image_count(session: AsyncSession, request_id: uuid.UUID) -> int:
    result = await session.execute(
        select(func.count())
        .select_from(_images)
        .where(_images.c.request_id == request_id, _UNCLAIMED)
    )
    return int(result.scalar_one())


async def claimable_batch_count(session: AsyncSession, *, batch_size: int) -> int:
    """How many batches the unclaimed images of every active, ingested request make: the
    work that should be on its way to the workers."""
    result = await session.execute(
        select(func.count())
        .select_from(_images.join(_requests, _requests.c.id == _images.c.request_id))
        .where(_requests.c.status.in_(ACTIVE_STATUSES), _UNCLAIMED)
        .group_by(_images.c.request_id)
    )
    return sum(-(-count // batch_size) for count in result.scalars())


async def claim_next_batch(
    session: AsyncSession, *, size: int, worker: str, now: datetime, stale_before: datetime
) -> Claim | None:
    """Claim up to `size` images of the active request that has waited longest for a claim.

    This is scale-out's fair share: whichever worker is free asks for its next batch here, so a
    request submitted after a huge one is served at once, not after all of it. The request's
    row is locked until the transaction ends (PostgreSQL), so workers asking at the same moment
    for the same request take its batches one after the other, never the same images.
    """
    connection = await session.connection()
    for _ in range(8):  # the images found can be claimed by another in between: look again
        chosen = (await connection.execute(_LONGEST_WAITING)).first()
        if chosen is None:
            return None
        request_id, *settings = chosen
        ids = (
            (await connection.execute(_NEXT_UNCLAIMED, {"n_request": request_id, "n_size": size}))
            .scalars()
            .all()
        )
        if not ids:
            continue
        batch = Batch(request_id, ids[0], ids[-1], *settings)
        images = await _claim_range(connection, batch, worker, now, stale_before)
        await connection.execute(_CLAIMED_FROM, {"l_request": request_id, "l_now": now})
        if images:
            return Claim(batch, images)
    return None


_LONGEST_WAITING = (
    select(
        _requests.c.id,
        _requests.c.quality,
        _requests.c.effort,
        _requests.c.variants,
        _requests.c.owner,
        _requests.c.scope,
        _requests.c.refresh,
        _requests.c.profile,
    )
    .where(
        # A request's images are claimable as soon as their chunk is stored: the rest of its
        # rows may still be on their way.
        _requests.c.status.in_(ACTIVE_STATUSES),
        exists().where(_images.c.request_id == _requests.c.id, _UNCLAIMED),
    )
    .order_by(_requests.c.last_claimed_at.asc().nulls_first(), _requests.c.created_at)
    .limit(1)
    .with_for_update(of=_requests)
)
_NEXT_UNCLAIMED = (
    select(_images.c.id)
    .where(_images.c.request_id == bindparam("n_request"), _UNCLAIMED)
    .order_by(_images.c.id)
    .limit(bindparam("n_size"))
)
# Claimed from just now; and processing from now on, if it was only queued. The time is typed
# so that it is stored as the columns store it in every place it appears, CASE included.
_claimed_now = bindparam("l_now", type_=_requests.c.last_claimed_at.type)
_CLAIMED_FROM = (
    update(_requests)
    .where(_requests.c.id == bindparam("l_request"))
    .values(
        last_claimed_at=_claimed_now,
        started_at=case(
            (_requests.c.status == RequestStatus.QUEUED, _claimed_now),
            else_=_requests.c.started_at,
        ),
        status=case(
            (_requests.c.status == RequestStatus.QUEUED, RequestStatus.PROCESSING),
            else_=_requests.c.status,
        ),
        updated_at=_claimed_now,
    )
)


async def _claim_range(
    connection: AsyncConnection,
    batch: Batch,
    worker: str,
    now: datetime,
    stale_before: datetime,
) -> list[ClaimedImage]:
    result = await connection.execute(
        _CLAIM,
        {
            "c_request": batch.request_id,
            "c_first": batch.first_id,
            "c_last": batch.last_id,
            "c_stale_before": stale_before,
            "c_worker": worker,
            "c_now": now,
        },
    )
    return sorted((ClaimedImage(*row) for row in result), key=lambda image: image.id)


_CLAIM = (
    update(_images)
    .where(
        _images.c.request_id == bindparam("c_request"),
        _images.c.id.between(bindparam("c_first"), bindparam("c_last")),
        _images.c.duplicate_of.is_(None),
        _images.c.status == ImageStatus.PENDING,
        or_(_images.c.claimed_at.is_(None), _images.c.claimed_at < bindparam("c_stale_before")),
    )
    .values(
        claimed_by=bindparam("c_worker"),
        claimed_at=bindparam("c_now"),
        attempts=_images.c.attempts + 1,
    )
    .returning(_images.c.id, _images.c.source_url, _images.c.attempts)
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageResult:
    image_id: int
    output_key: str | None = None
    bytes_in: int | None = None
    bytes_out: int | None = None
    width: int | None = None
    height: int | None = None
    kept_original: bool = False
    # The outputs of the variants after the first: {"key", "bytes", "width", "height", "kept",
    # "quality"}.
    variants: list[dict[str, Any]] | None = None
    quality: int | None = None  # the first variant's, as encoded
    findings: list[dict[str, str]] | None = None  # what the profile could not fix; None: nothing
    reuse: str | None = None  # a models.Reuse, for a done image of a request with a scope
    error_code: str | None = None
    error_message: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_code is None

    def outputs(self) -> dict[str, Any]:
        """What a done image made, by field: all a source cache entry needs to record it again."""
        return {field: getattr(self, field) for field in _OUTPUT_FIELDS}


# A done image's outputs, as ImageResult's fields and the image row's columns name them.
_OUTPUT_FIELDS = (
    "output_key",
    "bytes_in",
    "bytes_out",
    "width",
    "height",
    "kept_original",
    "variants",
    "quality",
    "findings",
)
# What a result sets on its image row: the status, then ImageResult's fields of the same names.
_COPIED_COLUMNS = (*_OUTPUT_FIELDS, "reuse", "error_code", "error_message")
_RESULT_COLUMNS = ("status", *_COPIED_COLUMNS)
_RECORD_CHUNK = 64  # images per statement: 14 parameters each, well inside every database's cap


@functools.cache
def _record_statement(count: int) -> Update:
    """One UPDATE for `count` images and their duplicates, returning exactly the rows it changed.

    A statement per image cost the async driver some 30 times SQLite's own work, per image
    (bench/README.md); this is one round trip per batch. Built once per size, so SQLAlchemy
    compiles it once too.
    """
    ids = [bindparam(f"r{n}_id", type_=Integer) for n in range(count)]
    owner = func.coalesce(_images.c.duplicate_of, _images.c.id)  # a duplicate takes its first's

    def per_image(column: str) -> ColumnElement[Any]:
        kind = _images.c[column].type
        return case(
            *((owner == id_, bindparam(f"r{n}_{column}", type_=kind)) for n, id_ in enumerate(ids))
        )

    return (
        update(_images)
        .where(
            or_(_images.c.id.in_(ids), _images.c.duplicate_of.in_(ids)),
            _images.c.status == ImageStatus.PENDING,
            # Not once its request is cancelled (which leaves its pending images as they are).
            exists().where(
                _requests.c.id == _images.c.request_id, _requests.c.status.in_(ACTIVE_STATUSES)
            ),
        )
        .values(
            {column: per_image(column) for column in _RESULT_COLUMNS}
            | {"claimed_by": None, "completed_at": bindparam("completed_at")}
        )
        .returning(
            _images.c.status,
            _images.c.bytes_in,
            _images.c.bytes_out,
            _images.c.kept_original,
            _images.c.variants,
            _images.c.reuse,
            _images.c.findings,
        )
    )


def _record_parameters(results: Sequence[ImageResult], now: datetime) -> dict[str, Any]:
    # Named r<n>_<column>: SQLAlchemy's own anonymous parameters look like <column>_<n>.
    parameters: dict[str, Any] = {"completed_at": now}
    for n, result in enumerate(results):
        parameters[f"r{n}_id"] = result.image_id
        parameters[f"r{n}_status"] = ImageStatus.DONE if result.ok else ImageStatus.FAILED
        for column in _COPIED_COLUMNS:
            parameters[f"r{n}_{column}"] = getattr(result, column)
    return parameters


async def record_results(
    session: AsyncSession, request_id: uuid.UUID, results: Sequence[ImageResult], *, now: datetime
) -> None:
    """Record outcomes for images and their duplicates; recording twice changes nothing."""
    connection = await session.connection()
    done = failed = kept = reused = noncompliant = bytes_in = bytes_out = 0
    variant_totals: dict[int, list[int]] = {}  # position after the first: [bytes, kept]
    for start in range(0, len(results), _RECORD_CHUNK):
        chunk = results[start : start + _RECORD_CHUNK]
        changed = await connection.execute(
            _record_statement(len(chunk)), _record_parameters(chunk, now)
        )
        # Counted from the rows the statement changed, not from the results: a row recorded
        # already (a redelivery, a second finisher) is not pending, so it moves no counter.
        for status, row_bytes_in, row_bytes_out, kept_original, variants, reuse, found in changed:
            if status == ImageStatus.DONE:
                done += 1
                kept += bool(kept_original)
                reused += reuse == Reuse.REUSED
                noncompliant += bool(found)
                bytes_in += row_bytes_in or 0
                bytes_out += row_bytes_out or 0
                for position, output in enumerate(variants or (), start=1):
                    totals = variant_totals.setdefault(position, [0, 0])
                    totals[0] += output["bytes"]
                    totals[1] += bool(output["kept"])
            else:
                failed += 1
    if done or failed:
        await connection.execute(
            _ADD_COUNTS,
            {
                "a_request": request_id,
                "a_done": done,
                "a_failed": failed,
                "a_kept": kept,
                "a_reused": reused,
                "a_noncompliant": noncompliant,
                "a_bytes_in": bytes_in,
                "a_bytes_out": bytes_out,
                "a_now": now,
            },
        )
    if variant_totals:
        variant_totals[0] = [bytes_out, kept]
        await connection.execute(
            _ADD_VARIANT_TOTALS,
            [
                {"v_request": request_id, "v_position": position, "v_bytes": b, "v_kept": k}
                for position, (b, k) in sorted(variant_totals.items())
            ],
        )


async def record_repeats(
    session: AsyncSession, request_id: uuid.UUID, first_ids: Sequence[int], *, now: datetime
) -> None:
    """Record the pending duplicates of these images as they are, where they are finished.

    A chunk stored after an image's first was recorded leaves its duplicates pending: the
    record that finishes a first finds only the duplicates stored by then. Locks the firsts
    first, as a record does (then the request), so that a record in flight is waited for.
    """
    finished = await session.execute(
        select(_images.c.id, *(_images.c[column] for column in _COPIED_COLUMNS))
        .where(
            _images.c.id.in_(first_ids),
            _images.c.status.in_((ImageStatus.DONE, ImageStatus.FAILED)),
        )
        .with_for_update()
    )
    results = [
        ImageResult(image_id=image_id, **dict(zip(_COPIED_COLUMNS, columns, strict=True)))
        for image_id, *columns in finished
    ]
    if results:
        await record_results(session, request_id, results, now=now)


_ADD_VARIANT_TOTALS = (
    update(_variant_totals)
    .where(
        _variant_totals.c.request_id == bindparam("v_request"),
        _variant_totals.c.position == bindparam("v_position"),
    )
    .values(
        bytes_out=_variant_totals.c.bytes_out + bindparam("v_bytes", type_=BigInteger),
        kept_images=_variant_totals.c.kept_images + bindparam("v_kept", type_=Integer),
    )
)

_ADD_COUNTS = (
    update(_requests)
    .where(_requests.c.id == bindparam("a_request"))
    .values(
        done_images=_requests.c.done_images + bindparam("a_done", type_=Integer),
        failed_images=_requests.c.failed_images + bindparam("a_failed", type_=Integer),
        kept_images=_requests.c.kept_images + bindparam("a_kept", type_=Integer),
        reused_images=_requests.c.reused_images + bindparam("a_reused", type_=Integer),
        noncompliant_images=_requests.c.noncompliant_images
        + bindparam("a_noncompliant", type_=Integer),
        bytes_in=_requests.c.bytes_in + bindparam("a_bytes_in", type_=BigInteger),
        bytes_out=_requests.c.bytes_out + bindparam("a_bytes_out", type_=BigInteger),
        updated_at=bindparam("a_now"),
        waiting=None,  # its work goes on
    )
)


async def is_complete(session: AsyncSession, request_id: uuid.UUID) -> bool:
    result = await session.execute(
        select(Request.done_images + Request.failed_images >= Request.total_images).where(
            Request.id == request_id, Request.status.in_(ACTIVE_STATUSES)
        )
    )
    return bool(result.scalar())


async def release_claims(
    session: AsyncSession, *, worker: str | None = None, batch: Batch | None = None
) -> int:
    """Give back pending images claimed by `worker` (by anyone, when None) for another run.

    With `batch`, only that batch's images.
    """
    statement = update(Image).where(
        Image.status == ImageStatus.PENDING, Image.claimed_at.is_not(None)
    )
    if worker is not None:
        statement = statement.where(Image.claimed_by == worker)
    if batch is not None:
        statement = statement.where(
            Image.request_id == batch.request_id,
            Image.id.between(batch.first_id, batch.last_id),
        )
    result = await session.execute(
        statement.values(claimed_by=None, claimed_at=None).execution_options(
            synchronize_session=False
        )
    )
    return rowcount(result)


async def release_images(session: AsyncSession, *, worker: str, image_ids: Sequence[int]) -> int:
    """Give back these images, still pending and claimed by `worker`, for another run."""
    if not image_ids:
        return 0
    result = await session.execute(
        update(_images)
        .where(
            _images.c.id.in_(image_ids),
            _images.c.status == ImageStatus.PENDING,
            _images.c.claimed_by == worker,
        )
        .values(claimed_by=None, claimed_at=None)
    )
    return rowcount(result)


async def renew_claims(session: AsyncSession, *, worker: str, batch: Batch, now: datetime) -> int:
    """The lease's heartbeat: `worker` still holds the batch's images it claimed."""
    result = await session.execute(
        _RENEW,
        {
            "w_request": batch.request_id,
            "w_first": batch.first_id,
            "w_last": batch.last_id,
            "w_worker": worker,
            "w_now": now,
        },
    )
    return rowcount(result)


_RENEW = (
    update(_images)
    .where(
        _images.c.request_id == bindparam("w_request"),
        _images.c.id.between(bindparam("w_first"), bindparam("w_last")),
        _images.c.status == ImageStatus.PENDING,
        _images.c.claimed_by == bindparam("w_worker"),
    )
    .values(claimed_at=bindparam("w_now", type_=_images.c.claimed_at.type))
)


async def mark_waiting(session: AsyncSession, *, reason: str, now: datetime) -> int:
    """Say on every active request why its work is held up; a recorded result clears it."""
    result = await session.execute(
        update(_requests)
        .where(
            _requests.c.status.in_(ACTIVE_STATUSES),
            or_(_requests.c.waiting.is_(None), _requests.c.waiting != reason),
        )
        .values(waiting=reason, updated_at=now)
    )
    return rowcount(result)


async def clear_waiting(session: AsyncSession, *, now: datetime) -> int:
    """The fault has cleared: no active request is held up by it any more."""
    result = await session.execute(
        update(_requests)
        .where(_requests.c.status.in_(ACTIVE_STATUSES), _requests.c.waiting.is_not(None))
        .values(waiting=None, updated_at=now)
    )
    return rowcount(result)


async def release_stale_claims(
    session: AsyncSession, *, stale_before: datetime, batch_size: int
) -> list[Batch]:
    """Release claims older than `stale_before` (their worker died) as batches to run again.

    Released, not only reported: an image waits for its new batch unclaimed, so the next sweep
    does not send it a second time.
    """
    released = await session.execute(
        update(_images)
        .where(
            _images.c.status == ImageStatus.PENDING,
            _images.c.claimed_at < stale_before,
        )
        .values(claimed_by=None, claimed_at=None)
        .returning(_images.c.request_id, _images.c.id)
    )
    ids_by_request: dict[uuid.UUID, list[int]] = {}
    for request_id, image_id in released:
        ids_by_request.setdefault(request_id, []).append(image_id)
    if not ids_by_request:
        return []
    requests = await session.execute(
        select(Request.id, Request.quality, Request.effort, Request.variants).where(
            Request.id.in_(ids_by_request)
        )
    )
    options = {request_id: tuple(rest) for request_id, *rest in requests}
    batches = []
    for request_id, ids in ids_by_request.items():
        ids.sort()
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            batches.append(Batch(request_id, chunk[0], chunk[-1], *options[request_id]))
    return batches


async def uningested_request_ids(
    session: AsyncSession, *, stalled_before: datetime
) -> list[uuid.UUID]:
    """Active requests whose rows are not all stored, and whose ingest has stored nothing
    since `stalled_before`: its message was lost, or its worker died."""
    result = await session.execute(
        select(Request.id).where(
            Request.status.in_(ACTIVE_STATUSES),
            Request.ingested_at.is_(None),
            Request.updated_at < stalled_before,
        )
    )
    return list(result.scalars())


async def complete_unfinished_request_ids(session: AsyncSession) -> list[uuid.UUID]:
    """Active requests with every image recorded: whoever recorded the last one died first."""
    result = await session.execute(
        select(Request.id).where(
            Request.status.in_(ACTIVE_STATUSES),
            Request.ingested_at.is_not(None),
            Request.done_images + Request.failed_images >= Request.total_images,
        )
    )
    return list(result.scalars())


async def finish_request(
    session: AsyncSession,
    request_id: uuid.UUID,
    *,
    status: RequestStatus,
    output_key: str | None,
    now: datetime,
    event: NewEvent | None,
) -> bool:
    """Move an active, complete request to its final status, once: False if another did it."""
    result = await session.execute(
        update(Request)
        .where(
            Request.id == request_id,
            Request.status.in_(ACTIVE_STATUSES),
            Request.done_images + Request.failed_images >= Request.total_images,
        )
        .values(status=status, output_key=output_key, completed_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return finished_with_event(session, result, request_id, event, now)
