"""Every query the application makes. Nothing else writes SQL.

Functions take an open session and leave the transaction to the caller, so a caller can make
several of them one atomic step.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    CursorResult,
    Integer,
    Select,
    Table,
    Update,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from imgcrunch.csvio import InputRow
from imgcrunch.models import (
    ACTIVE_STATUSES,
    Base,
    DeliveryStatus,
    Image,
    ImageStatus,
    Product,
    Request,
    RequestStatus,
    WebhookAttempt,
    WebhookDelivery,
)

# --- creating a request ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class NewRequest:
    id: uuid.UUID
    total_images: int
    extra_columns: Sequence[str]
    quality: int
    effort: str
    input_key: str
    webhook_url: str | None = None
    owner: str | None = None  # the API key's owner that created it; None when keys are off


async def create_request(session: AsyncSession, new: NewRequest) -> None:
    """The request alone; its rows are stored by `ingest_rows` from the kept input CSV."""
    session.add(
        Request(
            id=new.id,
            status=RequestStatus.QUEUED,
            webhook_url=new.webhook_url,
            quality=new.quality,
            effort=new.effort,
            extra_columns=list(new.extra_columns),
            total_images=new.total_images,
            done_images=0,
            failed_images=0,
            bytes_in=0,
            bytes_out=0,
            input_key=new.input_key,
            owner=new.owner,
        )
    )
    await session.flush()


async def is_ingested(session: AsyncSession, request_id: uuid.UUID) -> bool:
    result = await session.execute(
        select(Request.ingested_at.is_not(None)).where(Request.id == request_id)
    )
    return bool(result.scalar())


_CHUNK = 2000  # rows per executemany: keeps each pause of the event loop short


async def ingest_rows(
    session: AsyncSession, request_id: uuid.UUID, rows: Sequence[InputRow], *, now: datetime
) -> bool:
    """Store a request's products and images, once: False if they were stored already.

    All in the caller's transaction, behind a conditional update, so a crash leaves either
    nothing or everything, and two workers racing here store the rows once.
    """
    claimed = await session.execute(
        update(Request)
        .where(Request.id == request_id, Request.ingested_at.is_(None))
        .values(ingested_at=now)
        .execution_options(synchronize_session=False)
    )
    if _rowcount(claimed) != 1:
        return False
    # Plain executemany, then one query for the ids: RETURNING row by row is ~30x slower on SQLite.
    await _insert_chunked(
        session,
        Product,
        [
            {
                "request_id": request_id,
                "position": position,
                "row_number": row.serial,
                "product_name": row.name,
                "extra": list(row.extra),
            }
            for position, row in enumerate(rows)
        ],
    )
    product_ids = await session.execute(
        select(Product.id).where(Product.request_id == request_id).order_by(Product.position)
    )
    firsts: list[dict[str, Any]] = []
    repeats: list[dict[str, Any]] = []
    seen: set[str] = set()
    for product_id, row in zip(product_ids.scalars(), rows, strict=True):
        for position, url in enumerate(row.urls):
            image = {
                "request_id": request_id,
                "product_id": product_id,
                "position": position,
                "source_url": url,
            }
            (repeats if url in seen else firsts).append(image)
            seen.add(url)
    await _insert_chunked(session, Image, firsts)
    if repeats:
        first_ids = await session.execute(
            select(Image.source_url, Image.id).where(Image.request_id == request_id)
        )
        id_of_url = {url: id_ for url, id_ in first_ids}
        await _insert_chunked(
            session,
            Image,
            [image | {"duplicate_of": id_of_url[image["source_url"]]} for image in repeats],
        )
    return True


async def _insert_chunked(
    session: AsyncSession, model: type[Product] | type[Image], rows: list[dict[str, Any]]
) -> None:
    table = Base.metadata.tables[model.__tablename__]  # Core insert: no ORM bookkeeping per row
    for start in range(0, len(rows), _CHUNK):
        await session.execute(insert(table), rows[start : start + _CHUNK])


async def fail_request(
    session: AsyncSession,
    request_id: uuid.UUID,
    *,
    error: str,
    now: datetime,
    event: NewEvent | None = None,
) -> bool:
    """A request that cannot be processed at all: `failed`, with the reason, and its webhook
    event queued in the same transaction."""
    result = await session.execute(
        update(Request)
        .where(Request.id == request_id, Request.status.in_(ACTIVE_STATUSES))
        .values(status=RequestStatus.FAILED, error=error, completed_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if _rowcount(result) != 1:
        return False
    if event is not None:
        _add_event(session, request_id, event, now)
    return True


# --- reading a request ----------------------------------------------------------------------


async def get_request(session: AsyncSession, request_id: uuid.UUID) -> Request | None:
    return await session.get(Request, request_id, populate_existing=True)


@dataclass(frozen=True, slots=True)
class FailedImage:
    row_number: str
    product_name: str
    url: str
    code: str
    message: str


async def failed_images(
    session: AsyncSession, request_id: uuid.UUID, *, limit: int
) -> list[FailedImage]:
    result = await session.execute(
        _images_in_file_order(
            request_id,
            Image.status == ImageStatus.FAILED,
            limit,
            Image.error_code,
            Image.error_message,
        )
    )
    return [
        FailedImage(row_number, name, url, code or "unknown", message or "")
        for row_number, name, url, code, message in result
    ]


@dataclass(frozen=True, slots=True)
class KeptImage:
    row_number: str
    product_name: str
    url: str


async def kept_images(
    session: AsyncSession, request_id: uuid.UUID, *, limit: int
) -> list[KeptImage]:
    """Images done by keeping the original: re-encoding would not have made them smaller."""
    result = await session.execute(
        _images_in_file_order(request_id, Image.kept_original.is_(True), limit)
    )
    return [KeptImage(row_number, name, url) for row_number, name, url in result]


def _images_in_file_order(
    request_id: uuid.UUID, condition: ColumnElement[bool], limit: int, *columns: Any
) -> Select[Any]:
    return (
        select(Product.row_number, Product.product_name, Image.source_url, *columns)
        .join(Product, Product.id == Image.product_id)
        .where(Image.request_id == request_id, condition)
        .order_by(Product.position, Image.position)
        .limit(limit)
    )


@dataclass(slots=True)
class ProductOutcome:
    row_number: str
    product_name: str
    extra: list[str]
    images: list[ImageOutcome] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ImageOutcome:
    source_url: str
    status: str
    output_key: str | None
    bytes_in: int | None
    bytes_out: int | None
    kept_original: bool
    error_code: str | None
    error_message: str | None


async def product_outcomes(
    session: AsyncSession, request_id: uuid.UUID
) -> AsyncIterator[ProductOutcome]:
    """Products in file order, each with its images in row order; streamed, not loaded whole."""
    result = await session.stream(
        select(
            Product.id,
            Product.row_number,
            Product.product_name,
            Product.extra,
            Image.source_url,
            Image.status,
            Image.output_key,
            Image.bytes_in,
            Image.bytes_out,
            Image.kept_original,
            Image.error_code,
            Image.error_message,
        )
        .join(Image, Image.product_id == Product.id)
        .where(Product.request_id == request_id)
        .order_by(Product.position, Image.position)
        .execution_options(yield_per=1000)
    )
    current: ProductOutcome | None = None
    current_id = None
    async for product_id, row_number, name, extra, *image in result:
        if product_id != current_id:
            if current is not None:
                yield current
            current, current_id = ProductOutcome(row_number, name, list(extra)), product_id
        assert current is not None
        current.images.append(ImageOutcome(*image))
    if current is not None:
        yield current


async def unfinished_request_ids(session: AsyncSession) -> list[uuid.UUID]:
    result = await session.execute(
        select(Request.id).where(Request.status.in_(ACTIVE_STATUSES)).order_by(Request.created_at)
    )
    return list(result.scalars())


async def count_active_requests(session: AsyncSession, *, owner: str | None = None) -> int:
    """Requests queued or processing: all of them, or `owner`'s."""
    statement = select(func.count()).where(Request.status.in_(ACTIVE_STATUSES))
    if owner is not None:
        statement = statement.where(Request.owner == owner)
    return int((await session.execute(statement)).scalar_one())


async def requests_by_status(session: AsyncSession) -> dict[str, int]:
    result = await session.execute(select(Request.status, func.count()).group_by(Request.status))
    return {status: count for status, count in result.tuples()}


async def unfinished_image_count(session: AsyncSession) -> int:
    """Images of active requests not yet done or failed: the work queue's depth."""
    result = await session.execute(
        select(
            func.coalesce(
                func.sum(Request.total_images - Request.done_images - Request.failed_images), 0
            )
        ).where(Request.status.in_(ACTIVE_STATUSES))
    )
    return int(result.scalar_one())


async def list_requests(
    session: AsyncSession,
    *,
    owner: str | None,
    status: str | None,
    limit: int,
    offset: int,
) -> list[Request]:
    """Newest first; only `owner`'s when keys are on (owner not None)."""
    query = select(Request).order_by(Request.created_at.desc(), Request.id.desc())
    if owner is not None:
        query = query.where(Request.owner == owner)
    if status is not None:
        query = query.where(Request.status == status)
    result = await session.execute(query.limit(limit).offset(offset))
    return list(result.scalars())


async def delete_request(session: AsyncSession, request_id: uuid.UUID) -> bool:
    """The request and, by cascade, its products, images and webhook outbox; False if it was
    gone already, or is still active (it is deleted only once it has finished)."""
    result = await session.execute(
        delete(Request)
        .where(Request.id == request_id, Request.status.not_in(ACTIVE_STATUSES))
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result) == 1


async def cancel_request(session: AsyncSession, request_id: uuid.UUID, *, now: datetime) -> bool:
    """Stop an active request: its images not yet recorded will never be. False if it was not
    active. A result that arrives afterwards changes nothing: only pending images are recorded.
    """
    result = await session.execute(
        update(Request)
        .where(Request.id == request_id, Request.status.in_(ACTIVE_STATUSES))
        .values(status=RequestStatus.CANCELLED, completed_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if _rowcount(result) != 1:
        return False
    await session.execute(
        update(Image)
        .where(Image.request_id == request_id, Image.status == ImageStatus.PENDING)
        .values(status=ImageStatus.CANCELLED, claimed_by=None, claimed_at=None)
        .execution_options(synchronize_session=False)
    )
    return True


async def retry_failed_images(
    session: AsyncSession, request_id: uuid.UUID, *, now: datetime
) -> int:
    """Make a finished request's failed images pending again, and the request `processing`;
    returns how many. Only from `completed_with_errors`: nothing else has images to retry."""
    reopened = await session.execute(
        update(Request)
        .where(
            Request.id == request_id,
            Request.status == RequestStatus.COMPLETED_WITH_ERRORS,
        )
        .values(status=RequestStatus.PROCESSING, completed_at=None, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if _rowcount(reopened) != 1:
        return 0
    result = await session.execute(
        update(Image)
        .where(Image.request_id == request_id, Image.status == ImageStatus.FAILED)
        .values(
            status=ImageStatus.PENDING,
            error_code=None,
            error_message=None,
            completed_at=None,
            claimed_by=None,
            claimed_at=None,
        )
        .execution_options(synchronize_session=False)
    )
    retried = _rowcount(result)
    await session.execute(
        update(Request)
        .where(Request.id == request_id)
        .values(failed_images=Request.failed_images - retried)
        .execution_options(synchronize_session=False)
    )
    return retried


@dataclass(frozen=True, slots=True)
class ImageRow:
    row_number: str
    product_name: str
    source_url: str
    status: str
    output_key: str | None
    bytes_in: int | None
    bytes_out: int | None
    width: int | None
    height: int | None
    kept_original: bool
    error_code: str | None
    error_message: str | None


async def request_images(
    session: AsyncSession, request_id: uuid.UUID, *, limit: int, offset: int
) -> list[ImageRow]:
    """The request's images in the order of the input file: rows, then URLs within a row."""
    result = await session.execute(
        select(
            Product.row_number,
            Product.product_name,
            Image.source_url,
            Image.status,
            Image.output_key,
            Image.bytes_in,
            Image.bytes_out,
            Image.width,
            Image.height,
            Image.kept_original,
            Image.error_code,
            Image.error_message,
        )
        .join(Product, Product.id == Image.product_id)
        .where(Image.request_id == request_id)
        .order_by(Product.position, Image.position)
        .limit(limit)
        .offset(offset)
    )
    return [ImageRow(*tuple(row)) for row in result]


# --- working on images ----------------------------------------------------------------------

# The statements below run for every batch, so they are built once with bound parameters:
# SQLAlchemy then skips constructing them and computing their cache keys on every call. They use
# the tables (Core), not the ORM classes, for the same reason.
_images = cast(Table, Image.__table__)
_requests = cast(Table, Request.__table__)


@dataclass(frozen=True, slots=True)
class Batch:
    """A unit of work: the images of one request with ids in [first_id, last_id]."""

    request_id: uuid.UUID
    first_id: int
    last_id: int
    # The request's JPEG quality and effort, fixed at upload, carried so no batch asks again.
    quality: int
    effort: str


@dataclass(frozen=True, slots=True)
class ClaimedImage:
    id: int
    source_url: str


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
        request_id, quality, effort = chosen
        ids = (
            (await connection.execute(_NEXT_UNCLAIMED, {"n_request": request_id, "n_size": size}))
            .scalars()
            .all()
        )
        if not ids:
            continue
        batch = Batch(request_id, ids[0], ids[-1], quality, effort)
        images = await _claim_range(connection, batch, worker, now, stale_before)
        await connection.execute(_CLAIMED_FROM, {"l_request": request_id, "l_now": now})
        if images:
            return Claim(batch, images)
    return None


_LONGEST_WAITING = (
    select(_requests.c.id, _requests.c.quality, _requests.c.effort)
    .where(
        _requests.c.status.in_(ACTIVE_STATUSES),
        _requests.c.ingested_at.is_not(None),
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
    return sorted((ClaimedImage(id_, url) for id_, url in result), key=lambda image: image.id)


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
    .returning(_images.c.id, _images.c.source_url)
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
    error_code: str | None = None
    error_message: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_code is None


# What a result sets on its image row: the status, then ImageResult's fields of the same names.
_COPIED_COLUMNS = (
    "output_key",
    "bytes_in",
    "bytes_out",
    "width",
    "height",
    "kept_original",
    "error_code",
    "error_message",
)
_RESULT_COLUMNS = ("status", *_COPIED_COLUMNS)
_RECORD_CHUNK = 64  # images per statement: 10 parameters each, well inside every database's cap


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
        )
        .values(
            {column: per_image(column) for column in _RESULT_COLUMNS}
            | {"claimed_by": None, "completed_at": bindparam("completed_at")}
        )
        .returning(
            _images.c.status, _images.c.bytes_in, _images.c.bytes_out, _images.c.kept_original
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
    done = failed = kept = bytes_in = bytes_out = 0
    for start in range(0, len(results), _RECORD_CHUNK):
        chunk = results[start : start + _RECORD_CHUNK]
        changed = await connection.execute(
            _record_statement(len(chunk)), _record_parameters(chunk, now)
        )
        # Counted from the rows the statement changed, not from the results: a row recorded
        # already (a redelivery, a second finisher) is not pending, so it moves no counter.
        for status, row_bytes_in, row_bytes_out, kept_original in changed:
            if status == ImageStatus.DONE:
                done += 1
                kept += bool(kept_original)
                bytes_in += row_bytes_in or 0
                bytes_out += row_bytes_out or 0
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
                "a_bytes_in": bytes_in,
                "a_bytes_out": bytes_out,
                "a_now": now,
            },
        )


_ADD_COUNTS = (
    update(_requests)
    .where(_requests.c.id == bindparam("a_request"))
    .values(
        done_images=_requests.c.done_images + bindparam("a_done", type_=Integer),
        failed_images=_requests.c.failed_images + bindparam("a_failed", type_=Integer),
        kept_images=_requests.c.kept_images + bindparam("a_kept", type_=Integer),
        bytes_in=_requests.c.bytes_in + bindparam("a_bytes_in", type_=BigInteger),
        bytes_out=_requests.c.bytes_out + bindparam("a_bytes_out", type_=BigInteger),
        updated_at=bindparam("a_now"),
    )
)


def _rowcount(result: Any) -> int:
    assert isinstance(result, CursorResult)
    return result.rowcount


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
    return _rowcount(result)


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
        select(Request.id, Request.quality, Request.effort).where(Request.id.in_(ids_by_request))
    )
    options = {request_id: (quality, effort) for request_id, quality, effort in requests}
    batches = []
    for request_id, ids in ids_by_request.items():
        ids.sort()
        for start in range(0, len(ids), batch_size):
            chunk = ids[start : start + batch_size]
            batches.append(Batch(request_id, chunk[0], chunk[-1], *options[request_id]))
    return batches


async def uningested_request_ids(
    session: AsyncSession, *, created_before: datetime
) -> list[uuid.UUID]:
    """Active requests whose rows were never stored: their ingest message was lost."""
    result = await session.execute(
        select(Request.id).where(
            Request.status.in_(ACTIVE_STATUSES),
            Request.ingested_at.is_(None),
            Request.created_at < created_before,
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


# --- finishing a request --------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class NewEvent:
    event_id: str
    event_type: str
    url: str
    payload: str


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
    if _rowcount(result) != 1:
        return False
    if event is not None:
        _add_event(session, request_id, event, now)
    return True


def _add_event(
    session: AsyncSession, request_id: uuid.UUID, event: NewEvent, now: datetime
) -> None:
    session.add(
        WebhookDelivery(
            request_id=request_id,
            event_id=event.event_id,
            event_type=event.event_type,
            url=event.url,
            payload=event.payload,
            status=DeliveryStatus.PENDING,
            attempts=0,
            next_attempt_at=now,
        )
    )


# --- the webhook outbox ---------------------------------------------------------------------


async def lease_due_deliveries(
    session: AsyncSession, *, now: datetime, lease_until: datetime, limit: int = 50
) -> list[WebhookDelivery]:
    """Take the events due now, each by one caller only: several workers may ask at once.

    A leased event is not due again until `lease_until`, so one whose sender died is retried.
    """
    due = (
        select(WebhookDelivery.id)
        .where(
            WebhookDelivery.status == DeliveryStatus.PENDING,
            WebhookDelivery.next_attempt_at <= now,
        )
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
    )
    # The due condition is checked again by the UPDATE itself: of two callers racing for a row,
    # the second finds it leased (next_attempt_at moved on) and leaves it.
    leased = await session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id.in_(due.scalar_subquery()),
            WebhookDelivery.status == DeliveryStatus.PENDING,
            WebhookDelivery.next_attempt_at <= now,
        )
        .values(next_attempt_at=lease_until)
        .returning(WebhookDelivery.id)
        .execution_options(synchronize_session=False)
    )
    ids = list(leased.scalars())
    if not ids:
        return []
    result = await session.execute(
        select(WebhookDelivery)
        .where(WebhookDelivery.id.in_(ids))
        .order_by(WebhookDelivery.id)
        .execution_options(populate_existing=True)
    )
    return list(result.scalars())


async def record_delivery_attempt(
    session: AsyncSession,
    delivery_id: int,
    *,
    status: DeliveryStatus,
    response_status: int | None,
    error: str | None,
    now: datetime,
    next_attempt_at: datetime | None = None,
) -> None:
    """The attempt, in the delivery's history, and where the delivery stands after it."""
    result = await session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id)
        .values(
            status=status,
            attempts=WebhookDelivery.attempts + 1,
            response_status=response_status,
            last_error=error,
            delivered_at=now if status == DeliveryStatus.DELIVERED else None,
            next_attempt_at=next_attempt_at or now,
        )
        .returning(WebhookDelivery.attempts)
    )
    attempt = result.scalar_one_or_none()
    if attempt is None:
        return  # its request was deleted meanwhile
    session.add(
        WebhookAttempt(
            delivery_id=delivery_id,
            attempt=attempt,
            attempted_at=now,
            response_status=response_status,
            error=error,
        )
    )


async def seconds_until_delivery_due(session: AsyncSession, *, now: datetime) -> float | None:
    """How long until the next pending delivery is due (0 if one is); None if none waits."""
    result = await session.execute(
        select(func.min(WebhookDelivery.next_attempt_at)).where(
            WebhookDelivery.status == DeliveryStatus.PENDING
        )
    )
    due = result.scalar()
    if due is None:
        return None
    return max(0.0, (due - now).total_seconds())


async def delivery_attempts(
    session: AsyncSession, delivery_id: int, *, limit: int
) -> list[WebhookAttempt]:
    """The latest `limit` attempts, oldest first."""
    result = await session.execute(
        select(WebhookAttempt)
        .where(WebhookAttempt.delivery_id == delivery_id)
        .order_by(WebhookAttempt.attempt.desc())
        .limit(limit)
    )
    return list(reversed(result.scalars().all()))


async def redeliver(session: AsyncSession, request_id: uuid.UUID, *, now: datetime) -> bool:
    """Make the request's latest event due now, whatever became of it; False if it has none.

    Its event id stays the same, so a receiver that has it already can tell.
    """
    latest = (
        select(WebhookDelivery.id)
        .where(WebhookDelivery.request_id == request_id)
        .order_by(WebhookDelivery.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    result = await session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == latest)
        .values(
            status=DeliveryStatus.PENDING,
            next_attempt_at=now,
            delivered_at=None,
            schedule_start=WebhookDelivery.attempts,
        )
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result) == 1


async def latest_delivery(session: AsyncSession, request_id: uuid.UUID) -> WebhookDelivery | None:
    result = await session.execute(
        select(WebhookDelivery)
        .where(WebhookDelivery.request_id == request_id)
        .order_by(WebhookDelivery.id.desc())
        .limit(1)
    )
    return result.scalar_one_or_none()


async def ping(session: AsyncSession) -> None:
    await session.execute(select(1))
